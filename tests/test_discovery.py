"""Cues discovered from a model's mistakes (``curate propose errors``: B2T, Ladder, Domino).

The data: 24 dog images, the first 8 on snow (bright pixels), every other one with a red ball (wider
images), 12 cat images. The model under test errs exactly on the dogs on snow; the red ball is a
control that does not change the error rate (4 of its 12 images are wrong, as are 4 of the other 12).
Captions come from a table or from the stand-in VLM, which reads them off the pixels.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from llm_standin import StandIn, standin
from PIL import Image
from typer.testing import CliRunner

from curate.cli import app
from curate.ingest import FolderSource, ingest
from curate.propose import ProposeError, Proposer, make_proposer, propose
from curate.propose.errors import METHODS, ClassErrors, Tools, caption_words, mentions
from curate.records import Cue, Item, RunStatus
from curate.workspace import Workspace

POSES = ("sitting", "lying", "running", "jumping", "sleeping", "standing", "playing", "resting")
DOGS, CATS, ON_SNOW = 24, 12, 8


def caption(pose: int, snow: bool, ball: bool) -> str:
    place = "in the snow" if snow else "on the green grass"
    return f"an animal {POSES[pose]} {place}" + (" with a red ball" if ball else "")


def scene(index: int) -> tuple[int, bool, bool]:
    """(pose, snow, ball) of the index-th dog; cats are never on snow."""
    return index % len(POSES), index < ON_SNOW, index % 2 == 0


@dataclass
class Planted:
    workspace: Workspace
    predictions: Path
    captions: Path
    wrong: set[str]
    dogs: set[str]


@pytest.fixture
def planted(workspace: Workspace, tmp_path: Path) -> Planted:
    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    scenes = {}
    for label, count in (("dog", DOGS), ("cat", CATS)):
        (root / label).mkdir(parents=True)
        for index in range(count):
            pose, snow, ball = scene(index) if label == "dog" else (index % len(POSES), False, index % 3 == 0)
            low, high = (200, 256) if snow else (0, 80)
            pixels = rng.integers(low, high, (12 + pose, 20 if ball else 16, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / label / f"{index}.png")
            scenes[f"{label}/{index}.png"] = (label, pose, snow, ball)
    ingest(workspace, FolderSource(root), progress=False)
    rows, captions, wrong, dogs = [], [], set(), set()
    for ref in workspace.catalog.references():
        label, pose, snow, ball = scenes[ref.locator]
        rows.append({"item_id": ref.item_id, "pred": "cat" if snow else label, "score": 0.9})
        captions.append({"item_id": ref.item_id, "text": caption(pose, snow, ball)})
        wrong |= {ref.item_id} if snow else set()
        dogs |= {ref.item_id} if label == "dog" else set()
    pl.DataFrame(rows).write_csv(tmp_path / "preds.csv")
    pl.DataFrame(captions).write_parquet(tmp_path / "captions.parquet")
    return Planted(workspace, tmp_path / "preds.csv", tmp_path / "captions.parquet", wrong, dogs)


def vlm_brain(body: dict[str, Any]) -> dict[str, Any]:
    """A VLM that captions the test's images from their pixels, and answers Ladder and typing prompts."""
    content = body["messages"][1]["content"]
    if isinstance(content, list):
        url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        return {"caption": caption(image.height - 12, float(np.asarray(image).mean()) > 128, image.width == 20)}
    if "hypotheses" in content:
        return {"hypotheses": [{"attribute": "Red balls", "type": "co-occurring objects"},
                               {"attribute": "snow", "type": "background"},
                               {"attribute": "sofa", "type": "Background"}]}
    cue = re.search(r'the cue "([^"]+)"', content).group(1)  # type: ignore[union-attr]
    return {"type": "Background" if cue == "snow" else "Co-occurring Objects"}


@pytest.fixture
def server() -> Iterator[StandIn]:
    with standin(vlm_brain) as running:
        yield running


def _cues(workspace: Workspace, run_id: str, label: str = "dog") -> list[Cue]:
    return sorted(workspace.catalog.cues(class_label=label, source="errors", run_id=run_id),
                  key=lambda cue: cue.extra["rank"])


def _assert_snow_first(cues: list[Cue], planted: Planted) -> None:
    assert cues[0].attribute == "snow"
    evidence = cues[0].extra
    assert (evidence["n_with"], evidence["errors_with"], evidence["n_without"], evidence["errors_without"]) == (
        ON_SNOW, ON_SNOW, DOGS - ON_SNOW, 0)
    assert evidence["error_rate_with"] == 1.0 and evidence["error_rate_without"] == 0.0
    assert 0.6 < evidence["error_rate_with_low"] < 1.0 == evidence["error_rate_with_high"]
    assert set(evidence["examples"]) <= planted.wrong and len(evidence["examples"]) == ON_SNOW
    assert evidence["n_images"] == DOGS and evidence["method"] in ("b2t", "ladder")
    control = [cue for cue in cues if cue.attribute == "red ball"]
    assert not control or control[0].extra["rank"] > 1


def test_b2t_ranks_the_planted_attribute_first_with_captions_from_a_table_and_no_llm_call(
        planted: Planted, tiny_clip: str, network_attempts: list[object]) -> None:
    proposer = make_proposer("errors", predictions=str(planted.predictions), captions=str(planted.captions),
                             caption_column="text", clip_model=tiny_clip, rank_by="error_gap", min_images=3)
    result = propose(planted.workspace, proposer, progress=False)
    cues = _cues(planted.workspace, result.run.run_id)
    _assert_snow_first(cues, planted)
    assert all(cue.extra["error_gap"] > 0 for cue in cues)
    assert cues[0].taxonomy_type is None and "settle its type" in cues[0].extra["type_error"]
    assert cues[0].extra["options"]["method"] == "b2t" and len(cues[0].extra["options"]["predictions_sha256"]) == 64
    assert network_attempts == [] and set(result.run.models) == {tiny_clip}
    assert result.run.counts["classes_without_contrast"] == 1  # the cats: never wrong
    assert not planted.workspace.catalog.cues(class_label="cat", source="errors")
    evidence = planted.workspace.catalog.evidence(source="errors", run_id=result.run.run_id)
    snow = {e.item_id: e for e in evidence if e.attribute == "snow"}
    assert set(snow) == planted.dogs and {i for i, e in snow.items() if e.score == 1.0} == planted.wrong
    assert all(e.extra["error"] == (i in planted.wrong) and e.extra["pred_score"] == 0.9 for i, e in snow.items())
    assert all(("caption" in e.extra) == (e.score == 1.0) for e in snow.values())


def test_captions_from_the_vlm_find_the_same_cue_and_a_rerun_asks_nothing(planted: Planted, tiny_clip: str,
                                                                          server: StandIn) -> None:
    options = {"predictions": str(planted.predictions), "base_url": server.base_url, "clip_model": tiny_clip,
               "rank_by": "error_gap", "min_images": 3}
    first = propose(planted.workspace, make_proposer("errors", **options), progress=False)
    _assert_snow_first(_cues(planted.workspace, first.run.run_id), planted)
    assert len(server.requests) == DOGS and first.counts["llm_calls"] == DOGS  # the cats are never wrong
    again = propose(planted.workspace, make_proposer("errors", **options), progress=False)
    assert again.run.run_id == first.run.run_id and again.counts == {}
    dogs_only = propose(planted.workspace, make_proposer("errors", **options), classes=["dog"], progress=False)
    assert dogs_only.counts["llm_cache_hits"] == DOGS and len(server.requests) == DOGS


def test_a_class_whose_captions_failed_is_left_for_the_rerun(planted: Planted, tiny_clip: str,
                                                             server: StandIn) -> None:
    server.faults_when.append((lambda body: isinstance(body["messages"][1]["content"], list), ("500",)))
    options = {"predictions": str(planted.predictions), "base_url": server.base_url, "clip_model": tiny_clip,
               "rank_by": "error_gap", "min_images": 3, "max_retries": 0}
    failed = propose(planted.workspace, make_proposer("errors", **options), ["dog"], progress=False)
    assert failed.run.status == RunStatus.COMPLETED_WITH_FAILURES and failed.counts.get("cues", 0) == 0
    server.faults_when.clear()
    repaired = propose(planted.workspace, make_proposer("errors", **options), ["dog"], progress=False)
    assert repaired.run.run_id == failed.run.run_id and repaired.run.status == RunStatus.COMPLETED
    _assert_snow_first(_cues(planted.workspace, repaired.run.run_id), planted)


def test_ladder_hypotheses_are_scored_like_cues_and_keep_their_type(planted: Planted, tiny_clip: str,
                                                                    server: StandIn) -> None:
    result = propose(planted.workspace, make_proposer(
        "errors", predictions=str(planted.predictions), captions=str(planted.captions), caption_column="text",
        method="ladder", base_url=server.base_url, clip_model=tiny_clip, rank_by="error_gap"), ["dog"],
        progress=False)
    cues = _cues(planted.workspace, result.run.run_id)
    _assert_snow_first(cues, planted)
    assert cues[0].taxonomy_type == "Background" and "type_error" not in cues[0].extra
    assert "sofa" not in {cue.attribute for cue in cues}  # no caption mentions it
    [asked] = server.requests
    prompt = asked["messages"][1]["content"]
    assert prompt.count("in the snow") == ON_SNOW and "on the green grass" in prompt


def test_type_with_llm_types_discovered_cues_and_a_class_left_untyped_waits_for_the_rerun(
        planted: Planted, tiny_clip: str, server: StandIn) -> None:
    def proposer() -> Proposer:
        return make_proposer("errors", predictions=str(planted.predictions), captions=str(planted.captions),
                             caption_column="text", base_url=server.base_url, clip_model=tiny_clip,
                             rank_by="error_gap", type_with_llm=True, max_retries=0)

    server.faults_when.append((lambda body: "snow" in body["messages"][1]["content"], ("500",)))
    failed = propose(planted.workspace, proposer(), ["dog"], progress=False)
    assert failed.run.status == RunStatus.COMPLETED_WITH_FAILURES and failed.counts.get("cues", 0) == 0
    server.faults_when.clear()
    result = propose(planted.workspace, proposer(), ["dog"], progress=False)
    assert result.run.run_id == failed.run.run_id and result.run.status == RunStatus.COMPLETED
    cues = _cues(planted.workspace, result.run.run_id)
    assert cues[0].attribute == "snow" and cues[0].taxonomy_type == "Background"
    assert all(cue.taxonomy_type for cue in cues) and all("type_error" not in cue.extra for cue in cues)


class AgreeingClip(Tools):
    """CLIP towers built to agree: wrong images lie along one axis, right ones along another, and the
    text "snow" along the wrong images' axis; "red ball" sits halfway, every other phrase apart."""

    def text_vectors(self, phrases: Sequence[str], template: str = "") -> np.ndarray:
        axes = {"snow": [1.0, 0.0, 0.0], "red ball": [0.7071, 0.7071, 0.0]}
        return np.array([axes.get(p, [0.0, 0.0, 1.0]) for p in phrases])


def test_b2t_ranks_by_clip_score_when_the_towers_agree(planted: Planted) -> None:
    wrong = np.array([scene(i)[1] for i in range(DOGS)])
    data = ClassErrors("dog", [Item(f"i{i}", "", "dog", 1, 1, "RGB", "PNG", 0) for i in range(DOGS)],
                       ["cat" if w else "dog" for w in wrong], wrong, [caption(*scene(i)) for i in range(DOGS)],
                       np.array([[1.0, 0.0, 0.0] if w else [0.0, 1.0, 0.0] for w in wrong]))
    proposer = make_proposer("errors", predictions=str(planted.predictions))  # rank_by="clip", B2T's own
    findings = sorted(METHODS["b2t"](AgreeingClip(proposer, None, None, None), data),  # type: ignore[arg-type]
                      key=lambda finding: -finding.rank_value)
    assert findings[0].attribute == "snow" and findings[0].rank_value == 1.0
    ball = next(f for f in findings if f.attribute == "red ball")
    assert abs(ball.rank_value) < 1e-3 and ball.extra["clip_score"] == ball.rank_value


def test_domino_finds_the_error_slice_and_names_it_from_the_captions(planted: Planted, tiny_clip: str) -> None:
    result = propose(planted.workspace, make_proposer(
        "errors", predictions=str(planted.predictions), captions=str(planted.captions), caption_column="text",
        method="domino", clip_model=tiny_clip, slices=4), ["dog"], progress=False)
    [top, *_] = cues = _cues(planted.workspace, result.run.run_id)
    assert top.extra["error_rate_with"] == 1.0 and top.extra["error_rate_without"] == 0.0
    assert set(top.extra["examples"]) == planted.wrong and top.extra["ranked_by"] == "error_rate"
    vocabulary = caption_words(" ".join(caption(*scene(i)) for i in range(DOGS)))
    assert all(mentions(name, vocabulary) for cue in cues for name in cue.extra["names"])
    scores = {e.item_id: e.score for e in planted.workspace.catalog.evidence(source="errors", run_id=result.run.run_id)
              if e.attribute == top.attribute}
    assert {i for i, s in scores.items() if s >= 0.5} == planted.wrong


def test_a_discovered_cue_reaches_a_rounds_tasks_the_analysis_and_clip_on_every_class(
        planted: Planted, tiny_clip: str) -> None:
    from annotation import tasks
    from annotation.rounds import RoundSpec
    from curate.analyze import analyze_cues

    propose(planted.workspace, make_proposer(
        "errors", predictions=str(planted.predictions), captions=str(planted.captions), caption_column="text",
        clip_model=tiny_clip, rank_by="error_gap"), ["dog"], progress=False)
    routed = tasks.route(planted.workspace, RoundSpec("round-1", source="errors", threshold=0.5, budget=100))
    shown = {item.item_id: {row.attribute for row in rows} for item, rows in routed}
    assert set(shown) == planted.dogs and all("snow" in attributes for attributes in shown.values())
    stats = analyze_cues(planted.workspace, source="errors").stats
    snow = stats.filter(pl.col("attribute") == "snow").row(0, named=True)
    assert (snow["n_class"], snow["n_both"]) == (DOGS, ON_SNOW)
    propose(planted.workspace, make_proposer("clip", model=tiny_clip, cue_source="errors"), progress=False)
    scored = {(e.item_id, e.attribute) for e in planted.workspace.catalog.evidence(source="clip")}
    assert {item.item_id for item in planted.workspace.catalog.items()} == {i for i, a in scored if a == "snow"}


def test_the_report_shows_each_classs_discovered_cues_with_an_image_strip(planted: Planted, tiny_clip: str) -> None:
    from curate.analyze.report import build_report

    result = propose(planted.workspace, make_proposer(
        "errors", predictions=str(planted.predictions), captions=str(planted.captions), caption_column="text",
        clip_model=tiny_clip, rank_by="error_gap"), ["dog"], progress=False)
    text = build_report(planted.workspace).read_text()
    section = text.split(f"## Discovered cues: b2t (run `{result.run.run_id}`)")[1]
    assert re.search(r"\| dog \| 1 \| snow \| - \| 100% \[\d+%, 100%\] \| 0% \[0%, \d+%\] \| 8 \|", section)
    strip = planted.workspace.root / "reports" / result.run.run_id / "discovered-dog-snow.png"
    assert strip.is_file() and "discovered-dog-snow.png" in section


def test_the_cli_proposes_from_errors_and_bad_predictions_are_one_line_errors(planted: Planted, tiny_clip: str,
                                                                              tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["propose", "errors", "--workspace", str(planted.workspace.root), "--quiet", "--set",
            f"clip_model={tiny_clip}", "--set", f"captions={planted.captions}", "--set", "caption_column=text"]
    done = runner.invoke(app, [*base, "--predictions", str(planted.predictions), "--method", "b2t"])
    assert done.exit_code == 0, done.output
    assert "propose errors:" in done.output and "cues" in done.output
    bad = {"nopred.csv": "item_id,label\nab,dog\n", "twice.csv": "item_id,pred\nab,dog\nab,cat\n",
           "strangers.csv": "item_id,pred\nab,dog\n"}
    expected = {"nopred.csv": "have no column pred", "twice.csv": "predicted twice",
                "strangers.csv": "none of the 1 predicted items"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        failed = runner.invoke(app, [*base, "--predictions", str(tmp_path / name)])
        assert failed.exit_code != 0 and expected[name] in failed.output and "Traceback" not in failed.output
        assert len(failed.output.strip().splitlines()) == 1, failed.output
    unknown = runner.invoke(app, [*base, "--predictions", str(planted.predictions), "--method", "magic"])
    assert unknown.exit_code != 0 and "unknown discovery method 'magic'" in unknown.output


def test_other_predictions_are_another_run(planted: Planted, tiny_clip: str, tmp_path: Path) -> None:
    options = {"captions": str(planted.captions), "caption_column": "text", "clip_model": tiny_clip}
    first = propose(planted.workspace, make_proposer("errors", predictions=str(planted.predictions), **options),
                    ["dog"], progress=False)
    changed = pl.read_csv(planted.predictions).with_columns(pl.lit("dog").alias("pred"))
    changed.write_csv(planted.predictions)
    second = propose(planted.workspace, make_proposer("errors", predictions=str(planted.predictions), **options),
                     ["dog"], progress=False)
    assert second.run.run_id != first.run.run_id and second.run.counts["classes_without_contrast"] == 1
    assert second.counts == {}  # nobody is wrong now: nothing to discover
    with pytest.raises(ProposeError, match="no predictions table"):
        make_proposer("errors", predictions=str(tmp_path / "missing.csv"))
    with pytest.raises(ProposeError, match="rank_by is clip or error_gap"):
        make_proposer("errors", predictions=str(planted.predictions), rank_by="lift")


def test_a_discovered_cue_verified_by_people_is_built_into_groups_and_published_with_its_provenance(
        planted: Planted, tiny_clip: str, tmp_path: Path) -> None:
    import datasets

    from curate.builders import build, make_builder
    from curate.publish import publish
    from curate.records import Verdict
    from curate.verdicts import VerdictValue

    proposer = make_proposer("errors", predictions=str(planted.predictions), captions=str(planted.captions),
                             caption_column="text", clip_model=tiny_clip, rank_by="error_gap", min_images=3)
    discovered = propose(planted.workspace, proposer, progress=False)
    [top, *_] = _cues(planted.workspace, discovered.run.run_id)
    assert top.attribute == "snow"
    cats = sorted({i.item_id for i in planted.workspace.catalog.items(label="cat")})[:6]  # people saw snow there
    on_snow = planted.wrong | set(cats)
    planted.workspace.catalog.add_verdicts(
        Verdict(item.item_id, top.attribute, person, "round-1",
                VerdictValue.SPURIOUS if item.item_id in on_snow else VerdictValue.NOT_PRESENT, "Background")
        for item in planted.workspace.catalog.items() for person in ("ann", "bob"))
    builder = make_builder("groups", attribute=top.attribute, classes=("dog", "cat"), verdict_round="round-1",
                           train_correlation=0.5, val_per_group=1, test_per_group=1, near_duplicates="ignore")
    build(planted.workspace, builder, tmp_path / "release")
    fed_by = json.loads((tmp_path / "release" / "release.json").read_text())["fed_by"]
    assert fed_by["attributes"] == ["snow"] and fed_by["rounds"] == ["round-1"]
    assert discovered.run.run_id in fed_by["proposal_runs"]  # the discovery run is named as what fed it
    publish(planted.workspace, tmp_path / "release", f"folder:{tmp_path / 'hub'}", license="CC0-1.0")
    loaded = datasets.load_dataset(str(tmp_path / "hub"))
    rows = [row for split in loaded.values() for row in split]
    assert {(row["y"], row["a"]) for row in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert rows[0]["image"].size[0] in (16, 20)
    assert discovered.run.run_id in (tmp_path / "hub" / "README.md").read_text()
