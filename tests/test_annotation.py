"""The Label Studio bridge against a real server on 127.0.0.1 (started once per test session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import distinct_image
from label_studio_sdk import LabelStudio

from annotation import rounds
from annotation.configs import ATTRIBUTE_VERIFICATION, CONFIGS, ConfigError, checked, read_attribute_result
from annotation.files import document_root
from annotation.rounds import BridgeError, RoundSpec, pull, push
from annotation.server import Connection
from curate.ingest import FolderSource, ingest
from curate.records import Evidence, EvidenceRole
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
    checked(ATTRIBUTE_VERIFICATION, ("verdicts", "types", "missed"))
    with pytest.raises(ConfigError, match="lacks the controls"):
        checked(ATTRIBUTE_VERIFICATION, ("verdicts", "boxes"))


def test_push_sends_tasks_with_item_ids_and_predictions_once(proposed: Workspace,
                                                             label_studio: Connection) -> None:
    spec = _spec("push-once", budget=4)
    report = push(proposed, label_studio, spec)
    assert report.counts == {"tasks_pushed": 4, "already_there": 0, "gold_tasks": 0}
    tasks = _tasks(label_studio, report.project_id)
    assert len(tasks) == 4
    labels = [proposed.catalog.item(t.data["item_id"]).label for t in tasks]
    assert sorted(labels) == ["cat", "cat", "dog", "dog"]  # classes take turns within the budget
    task = tasks[0]
    assert task.data["image"].startswith("/data/local-files/?d=")
    assert (document_root(proposed.root) / task.data["image"].split("?d=")[1]).is_file()
    assert [node["value"] for node in task.data["verdict_tree"]] == ["leash", "grass", "sofa"]
    again = push(proposed, label_studio, _spec("push-once", budget=5))
    assert again.counts == {"tasks_pushed": 1, "already_there": 4, "gold_tasks": 0}
    assert len(_tasks(label_studio, report.project_id)) == 5
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    predictions = list(ls.predictions.list(task=tasks[0].id))
    assert predictions[0].model_version == "propose-run-1" and predictions[0].score == pytest.approx(0.9)


def _annotate(server: Connection, token: str, task_id: int, verdicts: list[list[str]],
              types: list[list[str]] | None = None, missed: str | None = None) -> None:
    ls = LabelStudio(base_url=server.url, api_key=token)
    result = [{"from_name": "verdicts", "to_name": "image", "type": "taxonomy", "value": {"taxonomy": verdicts}}]
    if types:
        result.append({"from_name": "types", "to_name": "image", "type": "taxonomy", "value": {"taxonomy": types}})
    if missed:
        result.append({"from_name": "missed", "to_name": "image", "type": "textarea", "value": {"text": [missed]}})
    ls.annotations.create(id=task_id, result=result, completed_by=ls.users.whoami().id)


def test_pull_maps_annotations_by_item_id_into_verdicts(proposed: Workspace, label_studio: Connection) -> None:
    spec = _spec("pull-round", budget=3)
    report = push(proposed, label_studio, spec)
    first, second, untouched = _tasks(label_studio, report.project_id)
    _annotate(label_studio, label_studio.token, first.id, [["leash", "spurious"], ["grass", "not present"]],
              types=[["leash", "Co-occurring Objects"]], missed="red collar")
    _annotate(label_studio, BOB_TOKEN, first.id, [["leash", "spurious"], ["grass", "spurious"]])
    _annotate(label_studio, BOB_TOKEN, second.id, [["sofa", "core"]])
    pulled = pull(proposed, label_studio, spec)
    assert pulled.counts == {"annotated_tasks": 2, "verdicts": 6, "rejected_annotations": 0}
    verdicts = {(v.item_id, v.attribute, v.annotator): v for v in proposed.catalog.verdicts("pull-round")}
    leash = verdicts[(first.data["item_id"], "leash", "curate@localhost")]
    assert leash.value == "spurious" and leash.taxonomy_type == "Co-occurring Objects"
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


def test_annotations_outside_the_config_are_rejected_not_stored(proposed: Workspace,
                                                               label_studio: Connection) -> None:
    spec = _spec("bad-values", budget=1)
    report = push(proposed, label_studio, spec)
    [task] = _tasks(label_studio, report.project_id)
    _annotate(label_studio, label_studio.token, task.id, [["leash", "probably"]])  # the server stores it silently
    pulled = pull(proposed, label_studio, spec)
    assert pulled.counts["rejected_annotations"] == 1 and proposed.catalog.verdicts("bad-values") == []
    with pytest.raises(ConfigError, match="not an attribute of this task"):
        read_attribute_result([{"from_name": "verdicts", "value": {"taxonomy": [["moon", "core"]]}}], task.data)


def test_a_wrong_token_is_a_clear_error(proposed: Workspace, label_studio: Connection) -> None:
    wrong = Connection(label_studio.url, "not-the-token")
    with pytest.raises(BridgeError, match="refused the token"):
        push(proposed, wrong, _spec("wrong-token"))


def test_a_push_cut_off_half_way_resumes_without_duplicates(proposed: Workspace, label_studio: Connection,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec("cut-off", budget=5)
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
    assert report.counts == {"tasks_pushed": 3, "already_there": 2, "gold_tasks": 0}
    item_ids = [t.data["item_id"] for t in _tasks(label_studio, report.project_id)]
    assert len(item_ids) == len(set(item_ids)) == 5


def test_rounds_through_the_cli(proposed: Workspace, label_studio: Connection,
                                monkeypatch: pytest.MonkeyPatch) -> None:
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
    assert "round cli-round: 2 tasks pushed (0 gold), 0 already there" in pushed.output
    project_id = int(pushed.output.split("(project ")[1].split(")")[0])
    task = _tasks(label_studio, project_id)[0]
    _annotate(label_studio, label_studio.token, task.id, [["leash", "core"]])
    pulled = runner.invoke(app, ["annotate", "pull", "cli-round", *ws])
    assert "1 verdicts from 1 tasks, 0 annotations rejected; Krippendorff's alpha n/a" in pulled.output
    shown = runner.invoke(app, ["annotate", "status", "cli-round", *ws])
    assert shown.output.strip().endswith("round cli-round: 1 of 2 tasks annotated")
    gone = runner.invoke(app, ["annotate", "push", "cli-round", "-w", str(proposed.root), "--url",
                               "http://127.0.0.1:9"])
    assert gone.exit_code == 2 and "cannot reach Label Studio" in gone.output
    never = runner.invoke(app, ["annotate", "pull", "never-pushed", *ws])
    assert never.exit_code == 2 and "no round 'never-pushed'" in never.output


def test_gold_tasks_catch_rubber_stamping_and_ties_go_to_adjudication(proposed: Workspace,
                                                                      label_studio: Connection) -> None:
    from annotation.rounds import adjudication_items

    first = push(proposed, label_studio, _spec("gold-source", budget=2))
    one, two = _tasks(label_studio, first.project_id)
    _annotate(label_studio, label_studio.token, one.id, [["leash", "spurious"], ["grass", "not present"]])
    _annotate(label_studio, BOB_TOKEN, one.id, [["leash", "spurious"], ["grass", "not present"]])
    _annotate(label_studio, label_studio.token, two.id, [["sofa", "core"]])
    _annotate(label_studio, BOB_TOKEN, two.id, [["sofa", "not present"]])
    source = pull(proposed, label_studio, _spec("gold-source", budget=2))
    assert source.agreement["decided"] == 2 and source.agreement["to_adjudicate"] == 1
    assert adjudication_items(proposed, "gold-source") == (two.data["item_id"],)

    spec = _spec("with-gold", budget=3, gold_round="gold-source", gold_count=1, overlap=0.5)
    report = push(proposed, label_studio, spec)
    assert report.counts["gold_tasks"] == 1 and report.counts["tasks_pushed"] == 4
    tasks = _tasks(label_studio, report.project_id)
    gold = next(t for t in tasks if t.meta.get("gold"))
    assert gold.data["item_id"] == one.data["item_id"]
    assert sum(1 for t in tasks if t.meta.get("overlap") == 2) == 2  # half of the 3 routed, rounded up
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    [trap] = list(ls.predictions.list(task=gold.id))
    assert sorted(trap.result[0]["value"]["taxonomy"]) == [["grass", "spurious"], ["leash", "not present"]]
    # the curate user accepts the wrong pre-fill; bob looks at the image
    _annotate(label_studio, label_studio.token, gold.id, trap.result[0]["value"]["taxonomy"])
    _annotate(label_studio, BOB_TOKEN, gold.id, [["leash", "spurious"], ["grass", "not present"]])
    figures = pull(proposed, label_studio, spec).agreement
    assert figures["gold_accuracy:curate@localhost"] == 0.0 and figures["gold_accuracy:bob@localhost"] == 1.0
    # one leash unit, two raters who disagree: D_o = D_e = 1, so alpha is 0
    assert figures["alpha_attribute:leash"] == pytest.approx(0.0)
    assert "cohen_kappa:bob@localhost|curate@localhost" in figures
    stored = proposed.tables.read(rounds.FIGURES_TABLE)
    assert "with-gold" in stored["round"].to_list()

    adjudication = push(proposed, label_studio, _spec("adjudicate-1", only_items=adjudication_items(
        proposed, "gold-source")))
    assert adjudication.counts["tasks_pushed"] == 1
    assert [t.data["item_id"] for t in _tasks(label_studio, adjudication.project_id)] == [two.data["item_id"]]


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
    real = rounds.attribute_task_data

    def without_image(*args: Any) -> dict[str, Any]:
        data = real(*args)
        del data["image"]  # the config's $image is missing: Label Studio answers 400
        return data

    monkeypatch.setattr(rounds, "attribute_task_data", without_image)
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
    routed = rounds.route(workspace, _spec("groups", budget=4))
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
    assert pulled.counts == {"annotated_tasks": 1, "verdicts": 1, "rejected_annotations": 0}
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
            found = [p for p in ls.projects.list() if p.title.endswith(" killed")]
            project_id = found[0].id if found else None
        if project_id is not None and len(_tasks(label_studio, project_id)) >= 20:
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
