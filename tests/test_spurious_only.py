"""Spurious-only sets (Spurious ImageNet): verified pairs, ranked candidates, the two-question round,
the kept images as a release that `datasets` loads, and the evaluator against sklearn."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
from conftest import distinct_image
from sklearn.metrics import average_precision_score, roc_auc_score

from annotation.configs import CONFIGS, ConfigError, checked
from annotation.rounds import RoundSpec
from annotation.server import Connection
from annotation.tasks import ROUND_KINDS
from curate.builders import BuildError, build, make_builder
from curate.evaluate import EvaluateError, evaluate
from curate.ingest import FolderSource, ingest
from curate.publish import publish
from curate.records import NEGATIVE_OF, Evidence, Verdict
from curate.verdicts import question_attribute
from curate.workspace import Workspace


@pytest.fixture
def pool(workspace: Workspace, tmp_path: Path) -> tuple[Workspace, dict[str, str]]:
    """Dogs whose water people called spurious, cats and unlabelled images scored for water."""
    folder = tmp_path / "pool"
    for name, seed in [("dog/0.png", 0), ("dog/1.png", 1), ("dog/2.png", 2), *((f"cat/{i}.png", 10 + i)
                                                                               for i in range(4)),
                       ("u0.png", 20), ("u1.png", 21)]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        distinct_image(seed, (24, 16)).save(folder / name)
    ingest(workspace, FolderSource(folder), progress=False)
    ids = {ref.locator: ref.item_id for ref in workspace.catalog.references()}
    workspace.catalog.add_verdicts([
        Verdict(ids["dog/0.png"], "water", "ann", "attrs", "spurious", "Background"),
        Verdict(ids["dog/0.png"], "water", "bob", "attrs", "spurious", "Background"),
        Verdict(ids["dog/1.png"], "water", "ann", "attrs", "spurious", "Background"),
        Verdict(ids["dog/2.png"], "leash", "ann", "attrs", "core"),  # core: no pair
        Verdict(ids["cat/0.png"], "sofa", "ann", "attrs", "spurious"),  # a tie: undecided, no pair
        Verdict(ids["cat/0.png"], "sofa", "bob", "attrs", "not present")])
    scores = [("cat/0.png", 0.9), ("u0.png", 0.8), ("cat/1.png", 0.7), ("cat/2.png", 0.6), ("u1.png", 0.5),
              ("cat/3.png", 0.1), ("dog/2.png", 0.99)]  # dog/2 is of the pair's class: never a candidate
    workspace.catalog.add_evidence([Evidence(ids[name], "water", "clip", "p1", score=s) for name, s in scores])
    workspace.catalog.add_evidence([  # a lower score from a second run, and a row scored for another class's cue
        Evidence(ids["cat/0.png"], "water", "clip", "p0", score=0.2),
        Evidence(ids["cat/3.png"], "water", "clip", "p2", score=0.95, extra={NEGATIVE_OF: "cat"})])
    return workspace, ids


def test_candidates_are_other_images_ranked_by_the_cues_evidence(pool: tuple[Workspace, dict[str, str]],
                                                                  tmp_path: Path) -> None:
    workspace, ids = pool
    result = build(workspace, make_builder("spurious-only", pairs_round="attrs", candidates_per_pair=5),
                   tmp_path / "candidates")
    frame = result.release.tables["candidates"]
    assert frame["item_id"].to_list() == [ids[n] for n in ("cat/0.png", "u0.png", "cat/1.png", "cat/2.png", "u1.png")]
    assert frame["cue_score"].to_list() == [0.9, 0.8, 0.7, 0.6, 0.5] and set(frame["pair"]) == {"dog|water"}
    [pair] = result.release.metadata["pairs"]
    assert pair["cue_type"] == "Background" and pair["verified_by"]["images_judged_spurious"] == 2
    assert pair["verified_by"]["rounds"] == ["attrs"]
    units = pl.read_csv(tmp_path / "candidates" / "units.csv")
    assert units.columns == ["item_id", "class_label", "cue"] and units.height == 5
    with pytest.raises(BuildError, match="at least 3 images each"):
        make_builder("spurious-only", pairs_round="attrs", min_pair_images=3).build(workspace)


def _answer(cue: str, thing: str) -> list[dict[str, object]]:
    return [{"from_name": "cue_present", "to_name": "image", "type": "choices", "value": {"choices": [cue]}},
            {"from_name": "object_present", "to_name": "image", "type": "choices", "value": {"choices": [thing]}}]


def test_the_round_asks_both_questions_about_the_pairs_class(pool: tuple[Workspace, dict[str, str]],
                                                             tmp_path: Path) -> None:
    workspace, ids = pool
    build(workspace, make_builder("spurious-only", pairs_round="attrs", candidates_per_pair=2), tmp_path / "c")
    checked(*CONFIGS["spurious-only"])  # Label Studio's own parser accepts the form
    kind = ROUND_KINDS["spurious-only"]
    spec = RoundSpec("so-1", kind="spurious-only", units=str(tmp_path / "c" / "units.csv"))
    tasks = kind.plan(workspace, spec, set()).tasks
    assert [t["data"]["item_id"] for t in tasks] == [ids["cat/0.png"], ids["u0.png"]]
    data = tasks[0]["data"]
    assert data["class_label"] == "dog" and data["cue"] == "water"  # the pair's class, not the image's own
    assert data["unit"] == f"{ids['cat/0.png']}|dog|water" and tasks[0]["predictions"] == []  # nothing pre-filled
    assert kind.plan(workspace, spec, {data["unit"]}).tasks == tasks[1:]  # a resumed push skips what is there
    readings = kind.read(_answer("yes", "no"), data)
    assert [(name, value) for name, value, _, _ in readings] == [("cue|dog|water", "yes"), ("object|dog|water", "no")]
    with pytest.raises(ConfigError, match="answer both questions"):
        kind.read(_answer("yes", "no")[:1], data)
    with pytest.raises(ConfigError, match="not among"):
        kind.read(_answer("maybe", "no"), data)


def _judge(workspace: Workspace, ids: dict[str, str], answers: dict[str, tuple[str, str]]) -> None:
    """Two people give the same answers (cue, object) about the dog|water pair."""
    workspace.catalog.add_verdicts([
        Verdict(ids[name], question_attribute(question, "dog", "water"), person, "so-1", value)
        for name, pair in answers.items() for person in ("ann", "bob")
        for question, value in zip(("cue", "object"), pair, strict=True)])


def test_only_cue_yes_object_no_is_kept_best_first_up_to_n(pool: tuple[Workspace, dict[str, str]],
                                                           tmp_path: Path) -> None:
    workspace, ids = pool
    with pytest.raises(BuildError, match="no candidate has decided answers"):
        make_builder("spurious-only", stage="release", pairs_round="attrs").build(workspace)
    _judge(workspace, ids, {"cat/0.png": ("yes", "yes"),  # the object is there too: out
                            "u0.png": ("no", "no"),  # no cue: out
                            "cat/1.png": ("yes", "no"), "u1.png": ("yes", "no"), "cat/2.png": ("yes", "no")})
    builder = make_builder("spurious-only", stage="release", pairs_round="attrs", verdict_round="so-1", per_pair=2)
    result = build(workspace, builder, tmp_path / "release")
    table = result.release.tables["test"]
    assert table["item_id"].to_list() == [ids["cat/1.png"], ids["cat/2.png"]]  # by cue score, 2 of 3 kept
    assert table["kind"].to_list() == ["spurious"] * 2 and table["cue_type"].to_list() == ["Background"] * 2
    assert json.loads(table["cue_votes"][0]) == {"yes": 2} and table["source_label"].to_list() == ["cat", "cat"]
    manifest = json.loads((tmp_path / "release" / "release.json").read_text())
    assert manifest["fed_by"]["classes"] == ["dog"]  # the pair's class, not the images' own (cat)
    [pair] = manifest["pairs"]
    assert (pair["kept"], pair["short"]) == (2, 0)
    assert pair["answers"] == {"cue no, object no": 1, "cue yes, object no": 3, "cue yes, object yes": 1,
                               "undecided": 1}  # cat/3 was scored, never answered
    assert all((tmp_path / "release" / name).is_file() for name in table["file_name"])
    wider = make_builder("spurious-only", stage="release", pairs_round="attrs", verdict_round="so-1", per_pair=75)
    assert [p["short"] for p in wider.build(workspace).metadata["pairs"]] == [72]


def test_the_release_loads_with_datasets_and_its_card_names_the_pairs(pool: tuple[Workspace, dict[str, str]],
                                                                      tmp_path: Path) -> None:
    workspace, ids = pool
    _judge(workspace, ids, {"cat/1.png": ("yes", "no"), "u1.png": ("yes", "no")})
    build(workspace, make_builder("spurious-only", stage="release", pairs_round="attrs", verdict_round="so-1"),
          tmp_path / "release")
    publish(workspace, tmp_path / "release", f"folder:{tmp_path / 'hub'}", license="CC0-1.0")
    loaded = datasets.load_dataset(str(tmp_path / "hub"), split="test")
    assert loaded.num_rows == 2 and loaded.features["y"].names == ["dog"]
    row = loaded[0]
    assert row["image"].size == (24, 16) and row["pair"] == "dog|water" and row["kind"] == "spurious"
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "| dog | water | - | Background | 2 | 75 | 73 |" in card
    assert "curate evaluate spurious-imagenet" in card and "average precision" in card


def test_ap_and_roc_auc_match_sklearn_and_the_fooled_share_is_counted(tmp_path: Path, workspace: Workspace) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for label, n_real, n_spurious in (("dog", 7, 5), ("cat", 4, 9)):
        rows += [{"class_label": label, "kind": "real", "score": float(s), "pred": label}
                 for s in rng.uniform(0.3, 1.0, n_real)]
        rows += [{"class_label": label, "kind": "spurious", "score": float(s), "pred": label if i % 3 == 0 else "x"}
                 for i, s in enumerate(rng.uniform(0.0, 0.7, n_spurious))]
    frame = pl.DataFrame(rows)
    path = tmp_path / "scores.parquet"
    frame.write_parquet(path)
    metrics = evaluate(workspace, "spurious-imagenet", path, pred="pred").metrics
    for label in ("dog", "cat"):
        mine = frame.filter(pl.col("class_label") == label)
        truth, scores = (mine["kind"] == "real").cast(int).to_numpy(), mine["score"].to_numpy()
        assert metrics[f"ap_class:{label}"] == pytest.approx(average_precision_score(truth, scores))
        assert metrics[f"roc_auc_class:{label}"] == pytest.approx(roc_auc_score(truth, scores))
    assert metrics["ap_mean"] == pytest.approx((metrics["ap_class:dog"] + metrics["ap_class:cat"]) / 2)
    assert metrics["roc_auc_mean"] == pytest.approx((metrics["roc_auc_class:dog"] + metrics["roc_auc_class:cat"]) / 2)
    assert metrics["predicted_as_class:dog"] == pytest.approx(2 / 5)  # spurious rows 0 and 3 of 5
    assert metrics["predicted_as_class:cat"] == pytest.approx(3 / 9)
    assert metrics["predicted_as_class_mean"] == pytest.approx((2 / 5 + 3 / 9) / 2)
    assert metrics["count_spurious_class:cat"] == 9 and metrics["missing_predictions"] == 0
    with pytest.raises(EvaluateError, match="'cat' has 0 real"):
        evaluate(workspace, "spurious-imagenet", frame.filter((pl.col("class_label") == "dog")
                                                               | (pl.col("kind") == "spurious")))
    with pytest.raises(EvaluateError, match="'real'"):
        evaluate(workspace, "spurious-imagenet", frame.with_columns(pl.lit("fake").alias("kind")))
    unpredicted = frame.with_columns(pl.when(pl.col("kind") == "spurious").then(None).otherwise(pl.col("pred"))
                                     .alias("pred"))
    with pytest.raises(EvaluateError, match="have no pred"):
        evaluate(workspace, "spurious-imagenet", unpredicted, pred="pred")
    fooled = evaluate(workspace, "spurious-imagenet", unpredicted, pred="pred", missing="wrong").metrics
    assert fooled["predicted_as_class:cat"] == 1.0 and fooled["missing_predictions"] == 14  # counted as fooled


def test_a_spurious_only_round_goes_through_label_studio(pool: tuple[Workspace, dict[str, str]],
                                                         label_studio: Connection, tmp_path: Path) -> None:
    from label_studio_sdk import LabelStudio

    from annotation.rounds import pull, push

    workspace, ids = pool
    build(workspace, make_builder("spurious-only", pairs_round="attrs", candidates_per_pair=3), tmp_path / "c")
    spec = RoundSpec("so-1", kind="spurious-only", units=str(tmp_path / "c" / "units.csv"))
    report = push(workspace, label_studio, spec)
    assert report.counts["tasks_pushed"] == 3 and push(workspace, label_studio, spec).counts["already_there"] == 3
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    tasks = {t.data["item_id"]: t for t in ls.tasks.list(project=report.project_id, fields="all")}
    me = ls.users.whoami().id
    for name, answer in (("cat/0.png", _answer("yes", "yes")), ("u0.png", _answer("yes", "no")),
                         ("cat/1.png", _answer("yes", "no")[:1])):  # one question left open: rejected
        ls.annotations.create(id=tasks[ids[name]].id, result=answer, completed_by=me)
    pulled = pull(workspace, label_studio, spec)
    assert pulled.counts["verdicts"] == 4 and pulled.counts["rejected_annotations"] == 1
    release = make_builder("spurious-only", stage="release", pairs_round="attrs", verdict_round="so-1").build(workspace)
    assert release.tables["test"]["item_id"].to_list() == [ids["u0.png"]]


def test_a_component_round_goes_through_label_studio(pool: tuple[Workspace, dict[str, str]],
                                                     label_studio: Connection) -> None:
    from label_studio_sdk import LabelStudio

    from annotation.rounds import pull, push

    workspace, ids = pool
    workspace.catalog.add_evidence([Evidence(ids[name], "neural-pca:dog:1", "neural-pca", "npca", score=score,
                                             extra={"class": "dog", "component": 1, "rank": rank})
                                    for rank, (name, score) in enumerate((("dog/1.png", 3.0), ("dog/0.png", 2.0),
                                                                          ("dog/2.png", 1.0)), 1)])
    spec = RoundSpec("components-1", source="neural-pca", kind="component", max_attributes=2)
    report = push(workspace, label_studio, spec)
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    [task] = list(ls.tasks.list(project=report.project_id, fields="all"))
    assert task.data["shown"] == [ids["dog/1.png"], ids["dog/0.png"]] and len(task.data["images"]) == 2
    ls.annotations.create(id=task.id, completed_by=ls.users.whoami().id, result=[
        {"from_name": "component_verdict", "to_name": "image", "type": "choices", "value": {"choices": ["spurious"]}},
        {"from_name": "type", "to_name": "image", "type": "choices", "value": {"choices": ["Background"]}},
        {"from_name": "name", "to_name": "image", "type": "textarea", "value": {"text": ["pond"]}}])
    pull(workspace, label_studio, spec)
    [verdict] = workspace.catalog.verdicts("components-1")
    assert (verdict.item_id, verdict.attribute, verdict.value, verdict.taxonomy_type, verdict.extra["name"]) == (
        ids["dog/1.png"], "neural-pca:dog:1", "spurious", "Background", "pond")
