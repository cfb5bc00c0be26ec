"""The Label Studio bridge against a real server on 127.0.0.1 (started once per test session)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import distinct_image
from label_studio_sdk import LabelStudio

from annotation import rounds, transport
from annotation import tasks as round_tasks
from annotation.configs import (
    ATTRIBUTE_SLOTS,
    ATTRIBUTE_VERIFICATION,
    CONFIGS,
    ConfigError,
    checked,
    read_attribute_result,
)
from annotation.files import document_root
from annotation.rounds import RoundSpec, pull, push
from annotation.server import Connection
from annotation.simulate import simulate
from annotation.transport import PREFILL_VERSION, BridgeError
from curate.ingest import FolderSource, ingest
from curate.records import Evidence, EvidenceRole
from curate.verdicts import resolved_verdicts
from curate.workspace import Workspace

BOB_TOKEN = "bob" + "0" * 37
SCORES = {"grass": 0.06, "leash": 0.9, "sofa": 0.0}


@pytest.fixture
def proposed(workspace: Workspace, tmp_path: Path) -> Workspace:
    for label, seeds in (("dog", [1, 2, 3]), ("cat", [4, 5])):
        for seed in seeds:
            (tmp_path / "img" / label).mkdir(parents=True, exist_ok=True)
            distinct_image(seed, (40, 30)).save(tmp_path / "img" / label / f"{seed}.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    rows = [Evidence(item.item_id, cue, "detector", "propose-run-1", EvidenceRole.CANDIDATE, "Background", score)
            for item in workspace.catalog.items() for cue, score in SCORES.items()]
    workspace.catalog.add_evidence(rows)
    return workspace


def _spec(name: str, **options: Any) -> RoundSpec:
    return RoundSpec(name=name, **options)


def _tasks(server: Connection, project_id: int) -> list[Any]:
    return list(LabelStudio(base_url=server.url, api_key=server.token).tasks.list(project=project_id, fields="all"))


def test_the_config_is_checked_by_label_interface() -> None:
    checked(ATTRIBUTE_VERIFICATION, CONFIGS["attributes"][1])
    with pytest.raises(ConfigError, match="lacks the controls"):
        checked(ATTRIBUTE_VERIFICATION, ("verdict_0", "boxes"))


def _slots(task: Any) -> list[str]:
    return [task.data[f"attr_{i}_name"] for i in range(ATTRIBUTE_SLOTS) if task.data[f"attr_{i}_name"]]


def test_push_sends_tasks_with_item_ids_and_prefills_once(proposed: Workspace, label_studio: Connection) -> None:
    spec = _spec("push-once", budget=4)
    report = push(proposed, label_studio, spec)
    assert report.counts == {"tasks_pushed": 4, "already_there": 0, "gold_tasks": 0, "shared_tasks": 0}
    tasks = _tasks(label_studio, report.project_id)
    assert len(tasks) == 4
    labels = [proposed.catalog.item(t.data["item_id"]).label for t in tasks]
    assert sorted(labels) == ["cat", "cat", "dog", "dog"]  # classes take turns within the budget
    task = tasks[0]
    assert task.data["image"].startswith("/data/local-files/?d=")
    assert (document_root(proposed.root) / task.data["image"].split("?d=")[1]).is_file()
    assert _slots(task) == ["leash", "grass", "sofa"]  # named rows, highest score first
    assert task.data["attr_0_title"] == "leash  (Background)" and task.data["attr_3_options"] == []
    assert task.meta["evidence_runs"] == ["propose-run-1"]
    again = push(proposed, label_studio, _spec("push-once", budget=5))
    assert again.counts == {"tasks_pushed": 1, "already_there": 4, "gold_tasks": 0, "shared_tasks": 0}
    assert len(_tasks(label_studio, report.project_id)) == 5
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    [prediction] = list(ls.predictions.list(task=tasks[0].id))
    # one model version for the project and every prediction: what makes the annotator stream pre-fill
    assert prediction.model_version == ls.projects.get(id=report.project_id).model_version == PREFILL_VERSION
    assert {r["from_name"]: r["value"]["choices"] for r in prediction.result} == {
        "verdict_0": ["spurious"], "type_0": ["Background"], "verdict_1": ["spurious"], "verdict_2": ["not present"],
        "type_1": ["Background"]}


def _answer(server: Connection, token: str, task: Any, verdicts: dict[str, str], types: dict[str, str] | None = None,
            missed: str | None = None, comment: str | None = None) -> None:
    """Submit an answer through the API as the user of ``token``, filling the task's named rows."""
    slot = {name: i for i, name in enumerate(_slots(task))}
    result = [{"from_name": f"verdict_{slot[name]}", "to_name": "image", "type": "choices",
               "value": {"choices": [value]}} for name, value in verdicts.items()]
    result += [{"from_name": f"type_{slot[name]}", "to_name": "image", "type": "choices",
                "value": {"choices": [value]}} for name, value in (types or {}).items()]
    result += [{"from_name": name, "to_name": "image", "type": "textarea", "value": {"text": [text]}}
               for name, text in (("missed", missed), ("comment", comment)) if text]
    transport.annotate(Connection(server.url, token), task.id, result)


def test_pull_maps_annotations_by_item_id_into_verdicts(proposed: Workspace, label_studio: Connection) -> None:
    spec = _spec("pull-round", budget=3)
    report = push(proposed, label_studio, spec)
    first, second, untouched = _tasks(label_studio, report.project_id)
    _answer(label_studio, label_studio.token, first, {"leash": "spurious", "grass": "not present"},
            types={"leash": "Co-occurring Objects"}, missed="red collar", comment="collar half hidden")
    _answer(label_studio, BOB_TOKEN, first, {"leash": "spurious", "grass": "spurious"})
    _answer(label_studio, BOB_TOKEN, second, {"sofa": "core"})
    pulled = pull(proposed, label_studio, spec)
    assert pulled.counts == {"annotated_tasks": 2, "verdicts": 6, "removed_verdicts": 0, "rejected_annotations": 0}
    verdicts = {(v.item_id, v.attribute, v.annotator): v for v in proposed.catalog.verdicts("pull-round")}
    leash = verdicts[(first.data["item_id"], "leash", "curate@localhost")]
    assert leash.value == "spurious" and leash.taxonomy_type == "Co-occurring Objects"
    assert leash.extra["comment"] == "collar half hidden"
    assert verdicts[(first.data["item_id"], "leash", "bob@localhost")].taxonomy_type == "Background"
    assert verdicts[(first.data["item_id"], "red collar", "curate@localhost")].value == "added"
    assert not [v for v in verdicts.values() if v.item_id == untouched.data["item_id"]]
    # units: leash agreed, grass split, sofa rated once (not pairable). By hand: coincidences
    # (sp, sp) = 2, (np, sp) = (sp, np) = 1; n = 4, D_o = 2/4, D_e = (3*1 + 1*3) / (4*3) -> alpha = 0
    assert pulled.agreement["units"] == 3 and pulled.agreement["decided"] == 2
    assert pulled.agreement["to_adjudicate"] == 1
    assert pulled.agreement["krippendorff_alpha"] == pytest.approx(0.0)
    assert pull(proposed, label_studio, spec).counts["verdicts"] == 6  # pulling again stores the same rows
    assert len(proposed.catalog.verdicts("pull-round")) == 6


def test_annotations_that_do_not_fit_are_rejected_with_their_reason(proposed: Workspace,
                                                                    label_studio: Connection) -> None:
    spec = _spec("bad-values", budget=3)
    report = push(proposed, label_studio, spec)
    one, two, three = _tasks(label_studio, report.project_id)
    _answer(label_studio, label_studio.token, one, {"leash": "probably"})  # the server stores it silently
    contradictory = [{"from_name": "verdict_0", "to_name": "image", "type": "choices",
                      "value": {"choices": ["core", "not present"]}}]
    transport.annotate(label_studio, two.id, contradictory)
    empty_row = [{"from_name": "verdict_7", "to_name": "image", "type": "choices", "value": {"choices": ["core"]}}]
    transport.annotate(label_studio, three.id, empty_row)
    pulled = pull(proposed, label_studio, spec)
    assert pulled.counts["rejected_annotations"] == 3 and proposed.catalog.verdicts("bad-values") == []
    reasons = sorted(rounds.rejections(proposed, "bad-values")["reason"].to_list())
    assert reasons == ["'leash' has 2 answers (core, not present); one is expected",
                       "verdict 'probably' for 'leash' is not one of: core, spurious, not present, unsure",
                       "verdict_7: an answer for an empty row"]
    assert rounds.status(proposed, label_studio, spec)["rejected_annotations"] == 3
    repeated = [*contradictory[:0], {"from_name": "verdict_0", "value": {"choices": ["core"]}},
                {"from_name": "verdict_0", "value": {"choices": ["spurious"]}}]
    with pytest.raises(ConfigError, match="2 answers"):  # two regions for one row: never "the last one wins"
        read_attribute_result(repeated, one.data)


def test_a_wrong_token_is_a_clear_error(proposed: Workspace, label_studio: Connection) -> None:
    with pytest.raises(BridgeError, match="refused the token"):
        push(proposed, Connection(label_studio.url, "not-the-token"), _spec("wrong-token"))


def test_a_push_cut_off_half_way_resumes_without_duplicates(proposed: Workspace, label_studio: Connection,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec("cut-off", budget=5, overlap=0.4)
    monkeypatch.setattr(rounds, "PUSH_CHUNK", 2)
    real_import = LabelStudio(base_url=label_studio.url, api_key=label_studio.token).projects.import_tasks
    calls = {"n": 0}

    def dies_after_one_chunk(self: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            raise httpx.ConnectError("the server went away")
        return real_import(**kwargs)

    from label_studio_sdk.projects.client import ProjectsClient

    monkeypatch.setattr(ProjectsClient, "import_tasks", dies_after_one_chunk)
    with pytest.raises(BridgeError, match="nothing was lost"):
        push(proposed, label_studio, spec)
    monkeypatch.undo()
    report = push(proposed, label_studio, spec)
    assert report.counts == {"tasks_pushed": 3, "already_there": 2, "gold_tasks": 0, "shared_tasks": 2}
    tasks = _tasks(label_studio, report.project_id)
    item_ids = [t.data["item_id"] for t in tasks]
    assert len(item_ids) == len(set(item_ids)) == 5
    assert sorted(t.overlap for t in tasks) == [1, 1, 1, 2, 2]  # the tasks of the killed push got theirs too


def test_rounds_through_the_cli(proposed: Workspace, label_studio: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    runner = CliRunner()
    ws = ["-w", str(proposed.root), "--url", label_studio.url]
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    no_token = runner.invoke(app, ["annotate", "push", "cli-round", "--budget", "2", *ws])
    assert no_token.exit_code == 2 and "LABEL_STUDIO_API_KEY" in no_token.output
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    pushed = runner.invoke(app, ["annotate", "push", "cli-round", "--budget", "2", *ws])
    assert pushed.exit_code == 0, pushed.output
    assert "round cli-round: 2 tasks pushed (0 gold, 0 for several people), 0 already there" in pushed.output
    project_id = int(pushed.output.split("(project ")[1].split(")")[0])
    task = _tasks(label_studio, project_id)[0]
    _answer(label_studio, label_studio.token, task, {"leash": "core"})
    pulled = runner.invoke(app, ["annotate", "pull", "cli-round", *ws])
    assert "1 verdicts from 1 tasks, 0 annotations rejected; Krippendorff's alpha n/a" in pulled.output
    shown = runner.invoke(app, ["annotate", "status", "cli-round", *ws])
    assert shown.output.strip().endswith("round cli-round: 1 of 2 tasks finished, 0 to adjudicate")
    listed = runner.invoke(app, ["verdicts", "-w", str(proposed.root), "--round", "cli-round"])
    assert listed.exit_code == 0 and "leash" in listed.output and "core" in listed.output
    gone = runner.invoke(app, ["annotate", "push", "cli-round", "-w", str(proposed.root), "--url",
                               "http://127.0.0.1:9"])
    assert gone.exit_code == 2 and "cannot reach Label Studio" in gone.output
    never = runner.invoke(app, ["annotate", "pull", "never-pushed", *ws])
    assert never.exit_code == 2 and "no round 'never-pushed'" in never.output


def test_overlap_gives_exactly_the_asked_share_of_tasks_to_several_people(proposed: Workspace,
                                                                          label_studio: Connection) -> None:
    spec = _spec("overlap", budget=4, overlap=0.25, overlap_k=2)
    report = push(proposed, label_studio, spec)
    tasks = {t.id: t for t in _tasks(label_studio, report.project_id)}
    assert report.counts["shared_tasks"] == 1 and sorted(t.overlap for t in tasks.values()) == [1, 1, 1, 2]
    bob = Connection(label_studio.url, BOB_TOKEN)
    seen: dict[str, list[int]] = {"curate": [], "bob": []}
    for who, connection in itertools.islice(itertools.cycle((("curate", label_studio), ("bob", bob))), 40):
        task = transport.next_task(connection, report.project_id)
        if task is None:
            if transport.next_task(label_studio, report.project_id) is None and \
                    transport.next_task(bob, report.project_id) is None:
                break
            continue
        _answer(label_studio, connection.token, tasks[task["id"]], {"leash": "spurious"})
        seen[who].append(task["id"])
    answered = seen["curate"] + seen["bob"]
    assert len(answered) == 5  # 3 tasks once, the shared one twice: not 4 x 2
    [shared] = [t.id for t in tasks.values() if t.overlap == 2]
    assert answered.count(shared) == 2 and shared in seen["curate"] and shared in seen["bob"]
    with pytest.raises(BridgeError, match="between 0 and 1"):
        _spec("bad", overlap=25)


def test_gold_accuracy_counts_gold_tasks_only_and_gold_answers_decide_nothing(proposed: Workspace,
                                                                              label_studio: Connection) -> None:
    first = push(proposed, label_studio, _spec("gold-source", budget=2))
    one, two = _tasks(label_studio, first.project_id)
    answers = {one.data["item_id"]: {"leash": "spurious", "grass": "not present", "sofa": "not present"},
               two.data["item_id"]: {"leash": "spurious", "grass": "spurious", "sofa": "core"}}
    for token in (label_studio.token, BOB_TOKEN):
        _answer(label_studio, token, one, answers[one.data["item_id"]])
    _answer(label_studio, label_studio.token, two, answers[two.data["item_id"]])
    pull(proposed, label_studio, _spec("gold-source", budget=2))

    spec = _spec("with-gold", budget=3, gold_round="gold-source", gold_count=1)
    report = push(proposed, label_studio, spec)
    assert report.counts["gold_tasks"] == 1 and report.counts["tasks_pushed"] == 4
    tasks = _tasks(label_studio, report.project_id)
    gold = next(t for t in tasks if t.meta.get("gold"))
    truth = answers[gold.data["item_id"]]  # the first decided item by id
    assert gold.overlap == 2  # everybody meets gold tasks
    ordinary = [t.data["item_id"] for t in tasks if not t.meta.get("gold")]
    assert not set(ordinary) & set(answers)  # decided there, not routed again
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    [trap] = list(ls.predictions.list(task=gold.id))
    assert trap.model_version == PREFILL_VERSION
    shown = {gold.data[f"attr_{r['from_name'].split('_')[1]}_name"]: r["value"]["choices"][0]
             for r in trap.result if r["from_name"].startswith("verdict_")}
    assert shown == {name: "not present" if value in ("core", "spurious") else "spurious"
                     for name, value in truth.items()}  # every pre-filled answer of a gold task is wrong
    # the curate user accepts every pre-fill (also on ordinary tasks); bob looks at the images
    for task in tasks:
        [prefill] = list(ls.predictions.list(task=task.id))
        transport.annotate(label_studio, task.id, prefill.result)
    _answer(label_studio, BOB_TOKEN, gold, truth)
    figures = pull(proposed, label_studio, spec).agreement
    assert figures["gold_accuracy:curate@localhost"] == 0.0 and figures["gold_accuracy:bob@localhost"] == 1.0
    assert figures["gold_units:curate@localhost"] == 3.0
    assert figures["units"] == 3 * 3  # the three ordinary tasks' units; gold answers are not among them
    assert {(v.item_id, v.annotator) for v in resolved_verdicts(proposed, "with-gold")} == {
        (t.data["item_id"], "consensus") for t in tasks if not t.meta.get("gold")}
    status = rounds.status(proposed, label_studio, spec)
    assert status["gold_accuracy:curate@localhost"] == 0.0 and status["gold_tasks"] == 1


def test_adjudication_shows_the_disputed_attributes_with_votes_and_resolves_the_round(
        proposed: Workspace, label_studio: Connection) -> None:
    round_1 = push(proposed, label_studio, _spec("split", budget=1))
    [task] = _tasks(label_studio, round_1.project_id)
    _answer(label_studio, label_studio.token, task, {"leash": "spurious", "grass": "not present", "sofa": "core"})
    _answer(label_studio, BOB_TOKEN, task, {"leash": "spurious", "grass": "spurious", "sofa": "core"})
    assert pull(proposed, label_studio, _spec("split", budget=1)).agreement["to_adjudicate"] == 1

    adjudication = push(proposed, label_studio, _spec("split-adj", adjudicates="split"))
    [disputed] = _tasks(label_studio, adjudication.project_id)
    assert _slots(disputed) == ["grass"]  # only the disputed attribute, with how people voted
    assert disputed.data["attr_0_title"] == "grass  (Background)  -  votes so far: not present 1, spurious 1 (tie)"
    assert list(LabelStudio(base_url=label_studio.url, api_key=label_studio.token).predictions.list(
        task=disputed.id)) == []  # nothing pre-filled for the adjudicator
    _answer(label_studio, label_studio.token, disputed, {"grass": "not present"})
    pull(proposed, label_studio, _spec("split-adj", adjudicates="split"))
    figures = rounds.round_figures(proposed, rounds.stored_spec(proposed, "split"))
    assert figures["to_adjudicate"] == 0 and figures["adjudicated"] == 1
    decided = {v.attribute: (v.value, v.annotator) for v in resolved_verdicts(proposed, "split")}
    assert decided == {"leash": ("spurious", "consensus"), "grass": ("not present", "adjudicated"),
                       "sofa": ("core", "consensus")}
    assert resolved_verdicts(proposed, "split,split-adj") == resolved_verdicts(proposed, "split")
    with pytest.raises(ValueError, match="no verdicts of round nope"):
        resolved_verdicts(proposed, "split,nope")


def test_a_deleted_annotation_is_deleted_from_the_verdicts(proposed: Workspace, label_studio: Connection) -> None:
    spec = _spec("deleted", budget=2)
    report = push(proposed, label_studio, spec)
    one, two = _tasks(label_studio, report.project_id)
    _answer(label_studio, label_studio.token, one, {"leash": "spurious"})
    _answer(label_studio, BOB_TOKEN, two, {"leash": "core"})
    assert pull(proposed, label_studio, spec).counts["verdicts"] == 2
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    [annotation] = list(ls.annotations.list(id=two.id))
    ls.annotations.delete(id=annotation.id)
    pulled = pull(proposed, label_studio, spec)
    assert pulled.counts["verdicts"] == 1 and pulled.counts["removed_verdicts"] == 1
    assert [(v.item_id, v.annotator) for v in proposed.catalog.verdicts("deleted")] == [
        (one.data["item_id"], "curate@localhost")]


def test_projects_are_keyed_by_the_workspace_not_its_folder_name(proposed: Workspace, tmp_path: Path,
                                                                 label_studio: Connection) -> None:
    other = Workspace.init(tmp_path / "elsewhere" / proposed.root.name)  # same folder name, another workspace
    (tmp_path / "imgs" / "dog").mkdir(parents=True)
    distinct_image(77, (20, 20)).save(tmp_path / "imgs" / "dog" / "one.png")
    ingest(other, FolderSource(tmp_path / "imgs"), progress=False)
    other.catalog.add_evidence([Evidence(i.item_id, "grass", "detector", "r", EvidenceRole.CANDIDATE, None, 0.5)
                                for i in other.catalog.items()])
    mine = push(proposed, label_studio, _spec("same-name", budget=2))
    theirs = push(other, label_studio, _spec("same-name", budget=2))
    assert mine.project_id != theirs.project_id
    assert len(_tasks(label_studio, mine.project_id)) == 2 and len(_tasks(label_studio, theirs.project_id)) == 1


def test_simulated_annotators_answer_through_the_stream(proposed: Workspace, label_studio: Connection) -> None:
    spec = _spec("simulated", budget=4, overlap=0.5)
    push(proposed, label_studio, spec)
    people = [label_studio, Connection(label_studio.url, BOB_TOKEN)]
    report = simulate(proposed, label_studio, spec, people, error_rate=0.0)
    assert sum(report.annotations.values()) == 4 + 2 and report.wrong_answers == 0
    pulled = pull(proposed, label_studio, spec)
    assert pulled.counts["annotated_tasks"] == 4
    # with no errors every simulated answer is the pre-fill: spurious above the threshold
    assert {(v.attribute, v.value) for v in proposed.catalog.verdicts("simulated")} == {
        ("leash", "spurious"), ("grass", "spurious"), ("sofa", "not present")}
    assert not any(v.extra.get("simulated") for v in proposed.catalog.verdicts("simulated"))  # real logins


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_review_config_is_accepted_by_label_interface_and_the_server(kind: str,
                                                                           label_studio: Connection) -> None:
    config, controls = CONFIGS[kind]
    interface = checked(config, controls)
    assert {c.name for c in interface.controls} >= set(controls)
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    created = ls.projects.create(title=f"config check {kind}", label_config=config)
    assert created.id


def test_a_task_the_server_rejects_is_a_clear_error(proposed: Workspace, label_studio: Connection,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = round_tasks.attribute_task_data

    def without_image(*args: Any) -> dict[str, Any]:
        data = real(*args)
        del data["image"]  # the config's $image is missing: Label Studio answers 400
        return data

    monkeypatch.setattr(round_tasks, "attribute_task_data", without_image)
    with pytest.raises(BridgeError, match="answered 400"):
        push(proposed, label_studio, _spec("rejected-task", budget=1))
    monkeypatch.undo()
    report = push(proposed, label_studio, _spec("rejected-task", budget=1))
    assert report.counts["tasks_pushed"] == 1  # nothing half-stored: the good push goes through


def test_routing_serves_minority_groups_in_full(workspace: Workspace, tmp_path: Path) -> None:
    import polars as pl

    from curate.ingest import GroupTableSource

    rows = []
    for index in range(12):  # waterbirds-like: 10 land-on-land, 2 land-on-water
        distinct_image(100 + index, (20, 20)).save(tmp_path / f"{index}.png")
        rows.append({"id": index, "filename": f"{index}.png", "split": 0, "y": 0, "a": int(index >= 10)})
    pl.DataFrame(rows).write_csv(tmp_path / "metadata.csv")
    ingest(workspace, GroupTableSource(tmp_path / "metadata.csv", y_names=("landbird",), a_names=("land", "water")),
           progress=False)
    workspace.catalog.add_evidence(Evidence(item.item_id, "water", "detector", "p", EvidenceRole.CANDIDATE,
                                            "Background", 0.05) for item in workspace.catalog.items())
    routed = round_tasks.route(workspace, _spec("groups", budget=4))
    groups = {ref.item_id: ref.metadata["a_name"] for ref in workspace.catalog.references()}
    assert sorted(groups[item.item_id] for item, _ in routed) == ["land", "land", "water", "water"]


def test_box_review_round_prefills_rectangles_and_reads_corrections(proposed: Workspace,
                                                                    label_studio: Connection) -> None:
    item = next(proposed.catalog.items(label="dog"))  # 40 x 30 pixels
    proposed.catalog.add_evidence([Evidence(item.item_id, "leash", "detector", "propose-run-1",
                                            EvidenceRole.CANDIDATE, "Co-occurring Objects", 0.9,
                                            [[4.0, 3.0, 24.0, 18.0, 0.9]])])
    spec = _spec("boxes-1", kind="boxes")
    report = push(proposed, label_studio, spec)
    assert report.counts["tasks_pushed"] == 1
    [task] = _tasks(label_studio, report.project_id)
    assert task.data["unit"] == f"{item.item_id}|leash" and (task.data["width"], task.data["height"]) == (40, 30)
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    [prediction] = list(ls.predictions.list(task=task.id))
    box = prediction.result[0]["value"]
    assert (box["x"], box["y"], box["width"], box["height"]) == pytest.approx((10.0, 10.0, 50.0, 50.0))
    fixed = [{"from_name": "boxes", "to_name": "image", "type": "rectanglelabels", "original_width": 40,
              "original_height": 30, "value": {"x": 25.0, "y": 20.0, "width": 50.0, "height": 40.0, "rotation": 0,
                                               "rectanglelabels": ["cue"]}},
             {"from_name": "box_verdict", "to_name": "image", "type": "choices",
              "value": {"choices": ["boxes fixed"]}}]
    ls.annotations.create(id=task.id, result=fixed, completed_by=ls.users.whoami().id)
    pulled = pull(proposed, label_studio, spec)
    assert pulled.counts == {"annotated_tasks": 1, "verdicts": 1, "removed_verdicts": 0, "rejected_annotations": 0}
    [verdict] = proposed.catalog.verdicts("boxes-1")
    assert (verdict.attribute, verdict.value) == ("leash", "boxes fixed")
    assert verdict.extra["boxes"] == [[10.0, 6.0, 30.0, 18.0]]
    assert push(proposed, label_studio, spec).counts["tasks_pushed"] == 0


def test_a_sigkilled_push_resumes_without_duplicates(workspace: Workspace, tmp_path: Path,
                                                     label_studio: Connection) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    total = 400
    for index in range(total):
        (tmp_path / "many" / "dog").mkdir(parents=True, exist_ok=True)
        distinct_image(1000 + index, (8, 8)).save(tmp_path / "many" / "dog" / f"{index}.png")
    ingest(workspace, FolderSource(tmp_path / "many"), progress=False)
    workspace.catalog.add_evidence(Evidence(item.item_id, "grass", "detector", "p", EvidenceRole.CANDIDATE,
                                            "Background", 0.1) for item in workspace.catalog.items())
    command = [sys.executable, "-m", "curate", "annotate", "push", "killed", "--budget", str(total),
               "--chunk-size", "10", "--url", label_studio.url, "-w", str(workspace.root)]
    process = subprocess.Popen(command, env={**os.environ, "LABEL_STUDIO_API_KEY": label_studio.token},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    deadline = time.monotonic() + 120
    project_id = None
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else "push ended early"
        assert time.monotonic() < deadline, "the push made no progress"
        if project_id is None:
            title = _spec("killed").project_title(workspace)
            found = [p for p in ls.projects.list(title=title) if p.title == title]
            project_id = found[0].id if found else None
        if project_id is not None and (ls.projects.get(id=project_id).task_number or 0) >= 20:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    landed = len(_tasks(label_studio, project_id))
    assert 20 <= landed < total, "the kill came too late to test resuming"
    report = push(workspace, label_studio, _spec("killed", budget=total))
    assert report.counts["already_there"] == landed and report.counts["tasks_pushed"] == total - landed
    assert workspace.runs.get(report.run_id).attempts == 2  # the killed round's run, resumed
    item_ids = [t.data["item_id"] for t in _tasks(label_studio, project_id)]
    assert len(item_ids) == len(set(item_ids)) == total


def _choose(server: Connection, token: str, task_id: int, choices: dict[str, list[str]],
            texts: dict[str, str] | None = None) -> None:
    ls = LabelStudio(base_url=server.url, api_key=token)
    result = [{"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": values}}
              for name, values in choices.items()]
    result += [{"from_name": name, "to_name": "image", "type": "textarea", "value": {"text": [text]}}
               for name, text in (texts or {}).items()]
    ls.annotations.create(id=task_id, result=result, completed_by=ls.users.whoami().id)


def test_mcq_setting_and_logo_reviews_from_units_tables(proposed: Workspace, label_studio: Connection,
                                                        tmp_path: Path) -> None:
    import polars as pl

    dog, cat = next(proposed.catalog.items(label="dog")), next(proposed.catalog.items(label="cat"))
    mcq = tmp_path / "mcq.parquet"
    pl.DataFrame({"item_id": [dog.item_id], "question": ["Which feature best indicates the identity of the animal?"],
                  "choices": [["A. floppy ears", "B. green grass", "C. a red ball", "D. a leash"]],
                  "answer": ["A"]}).write_parquet(mcq)
    report = push(proposed, label_studio, _spec("mcq-1", kind="mcq", units=str(mcq)))
    [task] = _tasks(label_studio, report.project_id)
    assert task.data["choices_text"].splitlines()[1] == "B. green grass" and task.data["answer"] == "A"
    _choose(label_studio, label_studio.token, task.id, {"answer_right": ["answer right"], "ambiguous": ["ambiguous"]},
            {"comment": "B is also visible"})
    assert pull(proposed, label_studio, _spec("mcq-1", kind="mcq", units=str(mcq))).counts["verdicts"] == 2
    verdicts = {v.attribute: v for v in proposed.catalog.verdicts("mcq-1")}
    assert verdicts["answer_right"].value == "answer right" and verdicts["ambiguous"].value == "ambiguous"
    assert verdicts["ambiguous"].extra["comment"] == "B is also visible"

    settings = tmp_path / "settings.csv"
    pl.DataFrame({"item_id": [dog.item_id, cat.item_id], "time": ["day", "night"], "weather": ["sunny", "none"],
                  "locations": ["grass, street", "indoors"]}).write_csv(settings)
    spec = _spec("setting-1", kind="setting", units=str(settings))
    report = push(proposed, label_studio, spec)
    first, second = sorted(_tasks(label_studio, report.project_id), key=lambda t: t.data["item_id"] != dog.item_id)
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    [prefilled] = list(ls.predictions.list(task=first.id))
    assert {r["from_name"]: r["value"]["choices"] for r in prefilled.result}["locations"] == ["grass", "street"]
    _choose(label_studio, label_studio.token, first.id, {"time": ["day"], "weather": ["cloudy"],
                                                         "locations": ["street", "grass"]})
    _choose(label_studio, label_studio.token, second.id, {"time": ["night"], "weather": ["tornado"]})
    pulled = pull(proposed, label_studio, spec)
    assert pulled.counts["rejected_annotations"] == 1  # "tornado" is not in the config
    assert {v.attribute: v.value for v in proposed.catalog.verdicts("setting-1")} == {
        "time": "day", "weather": "cloudy", "locations": "grass, street"}

    logos = tmp_path / "logos.jsonl"
    pl.DataFrame({"item_id": [cat.item_id]}).write_ndjson(logos)
    report = push(proposed, label_studio, _spec("logo-1", kind="logo", units=str(logos)))
    [task] = _tasks(label_studio, report.project_id)
    _choose(label_studio, BOB_TOKEN, task.id, {"is_logo": ["logo"]}, {"brand": "Acme"})
    pull(proposed, label_studio, _spec("logo-1", kind="logo", units=str(logos)))
    [logo] = proposed.catalog.verdicts("logo-1")
    assert (logo.value, logo.extra["brand"], logo.annotator) == ("logo", "Acme", "bob@localhost")
    with pytest.raises(BridgeError, match="needs a units table"):
        push(proposed, label_studio, _spec("logo-2", kind="logo"))


def test_core_attributes_from_priors_come_first_and_are_prefilled_core(proposed: Workspace, tmp_path: Path) -> None:
    import json

    from curate.propose import make_proposer, propose

    (tmp_path / "core.json").write_text(json.dumps({"dog": ["Floppy ears", "snout"]}))
    propose(proposed, make_proposer("priors", types=("Background",), core=str(tmp_path / "core.json")),
            progress=False)
    core_cues = {(c.class_label, c.attribute, c.role) for c in proposed.catalog.cues() if c.role == "core"}
    assert core_cues == {("dog", "floppy ears", "core"), ("dog", "snout", "core")}
    dog = next(proposed.catalog.items(label="dog"))
    proposed.catalog.add_evidence([Evidence(dog.item_id, "snout", "detector", "propose-run-1", EvidenceRole.CORE,
                                            None, 0.2)])
    spec = _spec("core-first", budget=5, max_attributes=2)
    [rows] = [rows for item, rows in round_tasks.route(proposed, spec) if item.item_id == dog.item_id]
    assert [r.attribute for r in rows] == ["snout", "leash"]  # the core attribute is never cut off by scores
    [task] = [t for t in round_tasks.ROUND_KINDS["attributes"].plan(proposed, spec, set()).tasks
              if t["data"]["item_id"] == dog.item_id]
    assert [r["value"]["choices"] for r in task["predictions"][0]["result"] if r["from_name"].startswith("verdict")] \
        == [["core"], ["spurious"]]
