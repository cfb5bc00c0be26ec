"""The spurious gap by hand with a prediction table, and through CLIP and a VLM stand-in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from conftest import distinct_image
from llm_standin import standin
from PIL import Image

from curate.analyze import GAPS_TABLE, measure_gaps
from curate.analyze.gap import ClipZeroShot, PredictionTable, VLMYesNo, masked_image, spurious_gaps
from curate.images import open_image
from curate.ingest import FolderSource, ingest
from curate.records import Evidence, EvidenceRole
from curate.workspace import Workspace

GRASS = {"0.png": 0.9, "1.png": 0.8, "2.png": 0.1, "3.png": 0.0}
BOX = [[4.0, 4.0, 20.0, 16.0, 0.7]]


@pytest.fixture
def dogs(workspace: Workspace, tmp_path: Path) -> tuple[Workspace, dict[str, str]]:
    for name in GRASS:
        (tmp_path / "img" / "dog").mkdir(parents=True, exist_ok=True)
        distinct_image(len(name) * 100 + int(name[0]), (32, 24)).save(tmp_path / "img" / "dog" / name)
    (tmp_path / "img" / "cat").mkdir()
    distinct_image(999, (32, 24)).save(tmp_path / "img" / "cat" / "c.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    ids = {ref.locator.split("/")[1]: ref.item_id for ref in workspace.catalog.references()}
    workspace.catalog.add_evidence(
        [Evidence(ids[n], "grass", "detector", "p1", EvidenceRole.CANDIDATE, "Background", s) for n, s in GRASS.items()]
        + [Evidence(ids[n], "dog", "detector", "p1", EvidenceRole.CORE, None, 0.7, BOX) for n in GRASS])
    return workspace, ids


def test_gap_by_hand_with_a_prediction_table(dogs: tuple[Workspace, dict[str, str]], tmp_path: Path) -> None:
    workspace, ids = dogs
    answers = {  # natural: top (0, 1) both say dog, bottom (2, 3) half; masked: top still says dog
        ("0.png", "natural"): 1, ("1.png", "natural"): 1, ("2.png", "natural"): 1, ("3.png", "natural"): 0,
        ("0.png", "masked"): 1, ("1.png", "masked"): 1, ("2.png", "masked"): 0, ("3.png", "masked"): 0,
    }
    path = tmp_path / "answers.csv"
    pl.DataFrame([{"item_id": ids[n], "variant": v, "present": p} for (n, v), p in answers.items()]).write_csv(path)
    result = spurious_gaps(workspace, PredictionTable(path), k=2)
    row = result.table.row(0, named=True)
    assert (row["class_label"], row["attribute"], row["k"]) == ("dog", "grass", 2)
    assert row["natural_top_acc"] == 1.0 and row["natural_bottom_acc"] == 0.5 and row["natural_gap"] == 0.5
    assert row["masked_top_acc"] == 0.0 and row["masked_bottom_acc"] == 1.0 and row["masked_gap"] == 1.0
    assert row["score"] == 0.75 and result.skipped_without_boxes == 0
    assert row["top_items"] == [ids["0.png"], ids["1.png"]] and row["bottom_items"] == [ids["2.png"], ids["3.png"]]
    # bootstrap: top always right (natural) and wrong (masked), bottom masked always right, so only the
    # bottom natural mean varies: 0, 0.5 or 1, each score in {1, 0.75, 0.5} drawn often enough to set the ends
    assert (row["score_low"], row["score_high"]) == (0.5, 1.0)
    # random ordering: the six ways to split the four images into two pairs score +-0.75, +-0.25, +-0.25
    assert (row["random_low"], row["random_high"]) == (-0.75, 0.75) and abs(row["random_score"]) < 0.05
    assert row["failed_answers"] == 0

    measured = measure_gaps(workspace, "table", {"path": str(path)}, k=2)
    run = measured.run
    assert measured.table.equals(result.table)  # the same draws on a re-run
    assert run.stage == "gap" and run.counts == {"rows": 1, "images_without_object_boxes": 0, "failed_answers": 0}
    assert workspace.runs.list("analyze") == []  # a gap run is not a cue analysis
    again = measure_gaps(workspace, "table", {"path": str(path)}, k=2).run
    assert again.run_id == run.run_id and again.counts == run.counts  # a re-run replaces its table and counts
    assert workspace.tables.read(GAPS_TABLE)["score"].to_list() == [0.75]


def test_a_perfect_separation_has_a_tight_interval_and_a_wide_random_baseline(
        dogs: tuple[Workspace, dict[str, str]], tmp_path: Path) -> None:
    workspace, ids = dogs
    path = tmp_path / "answers.csv"
    pl.DataFrame([{"item_id": i, "variant": v, "present": int(n in ("0.png", "1.png"))}
                  for n, i in ids.items() for v in ("natural", "masked")]).write_csv(path)
    row = spurious_gaps(workspace, PredictionTable(path), k=2).table.row(0, named=True)
    # the top images say dog (natural right, masked wrong), the bottom ones never do: every resample
    # scores 1; a random split of the four into pairs scores 1, 0 or -1
    assert row["score"] == 1.0 and (row["score_low"], row["score_high"]) == (1.0, 1.0)
    assert (row["random_low"], row["random_high"]) == (-1.0, 1.0)
    with pytest.raises(ValueError, match="bootstrap is a number of draws"):
        spurious_gaps(workspace, PredictionTable(path), bootstrap=0)


def test_masked_images_black_out_the_object_once(dogs: tuple[Workspace, dict[str, str]]) -> None:
    workspace, ids = dogs
    item = workspace.catalog.item(ids["0.png"])
    image = masked_image(workspace, item, BOX)
    pixels = np.asarray(image)
    assert (pixels[4:17, 4:21] == 0).all() and pixels[0:4].any()
    files = list((workspace.root / "derived" / "masked").glob("*.png"))
    assert len(files) == 1
    assert np.array_equal(np.asarray(masked_image(workspace, item, BOX)), pixels)
    assert len(list((workspace.root / "derived" / "masked").glob("*.png"))) == 1


def test_clip_zero_shot_gap_equals_the_gap_of_its_own_predictions(workspace: Workspace, tmp_path: Path,
                                                                   tiny_clip: str) -> None:
    colours = {"0.png": (255, 0, 0), "1.png": (250, 0, 0), "2.png": (0, 255, 0), "3.png": (0, 250, 0)}
    for name, colour in colours.items():  # plain colours the random tiny CLIP does not all call the same
        (tmp_path / "img" / "dog").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24), colour).save(tmp_path / "img" / "dog" / name)
    (tmp_path / "img" / "cat").mkdir()
    Image.new("RGB", (32, 24), (0, 0, 255)).save(tmp_path / "img" / "cat" / "c.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    items = {ref.locator.split("/")[1]: workspace.catalog.item(ref.item_id) for ref in workspace.catalog.references()}
    workspace.catalog.add_evidence(
        [Evidence(items[n].item_id, "grass", "detector", "p1", EvidenceRole.CANDIDATE, "Background", s)
         for n, s in GRASS.items()]
        + [Evidence(items[n].item_id, "dog", "detector", "p1", EvidenceRole.CORE, None, 0.7, BOX) for n in GRASS])
    model = ClipZeroShot(tiny_clip, template="{label}")
    natural = dict(zip(GRASS, model.predict([open_image(Path(items[n].uri)) for n in GRASS], ["cat", "dog"]),
                       strict=True))
    masked = dict(zip(GRASS, model.predict([masked_image(workspace, items[n], BOX) for n in GRASS], ["cat", "dog"]),
                      strict=True))
    top, bottom = ("0.png", "1.png"), ("2.png", "3.png")  # grass scores 0.9, 0.8 | 0.1, 0.0

    def accuracy(names: tuple[str, ...], said: dict[str, str], dog_is_right: bool) -> float:
        return sum((said[n] == "dog") == dog_is_right for n in names) / len(names)

    natural_gap = accuracy(top, natural, True) - accuracy(bottom, natural, True)
    masked_gap = accuracy(bottom, masked, False) - accuracy(top, masked, False)
    assert natural_gap != 0  # the case is not degenerate: the model tells these images apart
    measured = measure_gaps(workspace, "clip", {"model": tiny_clip, "template": "{label}"}, k=2)
    run, table = measured.run, measured.table
    row = table.row(0, named=True)
    assert row["natural_gap"] == pytest.approx(natural_gap) and row["masked_gap"] == pytest.approx(masked_gap)
    assert row["score"] == pytest.approx((natural_gap + masked_gap) / 2)
    assert row["score_low"] <= row["score"] <= row["score_high"]
    assert run.models == {tiny_clip: "curate-tiny-clip@random"}


def test_a_clip_that_cannot_tell_classes_apart_has_no_gap(dogs: tuple[Workspace, dict[str, str]],
                                                          tiny_clip: str) -> None:
    workspace, _ = dogs
    # one text for every class: the first class (cat) always wins, so no image is ever called a dog
    table = measure_gaps(workspace, "clip", {"model": tiny_clip, "template": "a photo."}, k=2).table
    row = table.row(0, named=True)
    assert (row["natural_top_acc"], row["natural_bottom_acc"]) == (0.0, 0.0)
    assert (row["masked_top_acc"], row["masked_bottom_acc"]) == (1.0, 1.0)
    assert row["score"] == 0.0 and (row["score_low"], row["score_high"]) == (0.0, 0.0)


def test_a_vlm_answers_three_questions_per_image(dogs: tuple[Workspace, dict[str, str]]) -> None:
    workspace, _ = dogs

    def always_yes(body: dict[str, Any]) -> dict[str, str]:
        return {"answer": "yes"}

    with standin(always_yes) as server:
        table = measure_gaps(workspace, "vlm", {"base_url": server.base_url}, k=2).table
        assert len(server.requests) == 3 * 8  # 2 top + 2 bottom, natural and masked
    row = table.row(0, named=True)
    assert row["natural_gap"] == 0.0 and row["masked_top_acc"] == 0.0 and row["score"] == 0.0


def test_curate_gap_records_a_gap_run(dogs: tuple[Workspace, dict[str, str]], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    workspace, ids = dogs
    path = tmp_path / "answers.csv"
    pl.DataFrame([{"item_id": i, "variant": v, "present": 1} for i in ids.values() for v in ("natural", "masked")]
                 ).write_csv(path)
    result = CliRunner().invoke(app, ["gap", "table", "--set", f"path={path}", "--k", "2", "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    run = workspace.runs.list("gap")[0]
    assert "gap table: 1 (class, cue) rows, 0 failed answers" in result.output
    assert f"[run {run.run_id}]" in result.output
    assert run.run_id.startswith("gap-") and workspace.runs.list("analyze") == []


def test_the_gap_vlm_takes_every_llm_setting(dogs: tuple[Workspace, dict[str, str]]) -> None:
    from dataclasses import fields

    from curate.llm_settings import LLMSettings
    from curate.options import declared_options
    from curate.propose import PROPOSERS

    workspace, _ = dogs
    with standin(lambda body: {"answer": "yes"}) as server:
        measure_gaps(workspace, "vlm", {"base_url": server.base_url, "temperature": "0.7", "max_tokens": "20"}, k=2)
    assert {(r["temperature"], r["max_tokens"]) for r in server.requests} == {(0.7, 20)}
    settings = {f.name for f in fields(LLMSettings)}  # declared once: the gap's VLM and the LLM proposers take them all
    for target in (VLMYesNo, PROPOSERS["llm-cues"], PROPOSERS["vlm-attributes"]):
        assert settings <= set(declared_options(target)), target


def test_a_failed_vlm_answer_is_wrong_on_natural_and_masked_images(dogs: tuple[Workspace, dict[str, str]]) -> None:
    workspace, _ = dogs

    def one_of_each(body: dict[str, Any]) -> dict[str, str]:
        question = body["messages"][0]["content"][0]["text"]
        return {"answer": "yes" if question.startswith("Is there") else
                "no" if question.startswith("Does this") else "perhaps"}  # the third never parses

    with standin(one_of_each) as server:
        measured = measure_gaps(workspace, "vlm", {"base_url": server.base_url}, k=2)
    run, table = measured.run, measured.table
    row = table.row(0, named=True)
    # per image: one yes (right on natural images), one no (right once the dog is masked), one failure
    assert row["natural_top_acc"] == row["natural_bottom_acc"] == pytest.approx(1 / 3)
    assert row["masked_top_acc"] == row["masked_bottom_acc"] == pytest.approx(1 / 3)
    assert row["failed_answers"] == 8 and run.counts["failed_answers"] == 8  # 4 images, natural and masked


def test_a_null_in_a_prediction_table_is_a_failed_answer(dogs: tuple[Workspace, dict[str, str]],
                                                         tmp_path: Path) -> None:
    workspace, ids = dogs
    path = tmp_path / "answers.csv"
    pl.DataFrame([{"item_id": i, "variant": v, "prediction": None if n == "0.png" else "cat"}
                  for n, i in ids.items() for v in ("natural", "masked")]).write_csv(path)
    result = spurious_gaps(workspace, PredictionTable(path), k=2)
    row = result.table.row(0, named=True)
    # "cat" is right on masked images only; 0.png (top) has no answer: wrong on both
    assert (row["natural_top_acc"], row["masked_top_acc"], row["masked_bottom_acc"]) == (0.0, 0.5, 1.0)
    assert result.failed_answers == 2 and row["failed_answers"] == 2


def test_cues_that_tie_everywhere_get_their_own_extremes(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "img" / "dog").mkdir(parents=True)
    for n in range(12):
        distinct_image(500 + n, (16, 12)).save(tmp_path / "img" / "dog" / f"{n}.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    dogs = [i.item_id for i in workspace.catalog.items()]
    workspace.catalog.add_evidence([Evidence(i, cue, "detector", "p1", EvidenceRole.CANDIDATE, "Background", 0.0)
                                    for i in dogs for cue in ("grass", "leash")]
                                   + [Evidence(i, "dog", "detector", "p1", EvidenceRole.CORE, None, 0.7, BOX)
                                      for i in dogs])
    path = tmp_path / "a.csv"
    pl.DataFrame([{"item_id": i, "variant": v, "present": 1} for i in dogs for v in ("natural", "masked")]
                 ).write_csv(path)
    first = spurious_gaps(workspace, PredictionTable(path), k=3).table
    bottoms = {row["attribute"]: set(row["bottom_items"]) for row in first.iter_rows(named=True)}
    assert bottoms["grass"] != bottoms["leash"]  # every score is 0: only the per-cue shuffle orders them
    assert spurious_gaps(workspace, PredictionTable(path), k=3).table.equals(first)  # and a re-run repeats it


def test_items_without_object_boxes_are_counted(dogs: tuple[Workspace, dict[str, str]], tmp_path: Path) -> None:
    workspace, ids = dogs
    workspace.catalog.add_evidence([Evidence(ids["0.png"], "dog", "detector", "p1", EvidenceRole.CORE, 0.0, None)])
    path = tmp_path / "a.csv"
    pl.DataFrame([{"item_id": i, "variant": v, "present": 1} for i in ids.values() for v in ("natural", "masked")]
                 ).write_csv(path)
    result = spurious_gaps(workspace, PredictionTable(path), k=2)
    assert result.skipped_without_boxes == 1 and result.table["n_masked_top"][0] == 1


def test_gap_through_the_cli(dogs: tuple[Workspace, dict[str, str]], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    workspace, ids = dogs
    path = tmp_path / "answers.csv"
    pl.DataFrame([{"item_id": i, "variant": v, "prediction": "dog"} for i in ids.values()
                  for v in ("natural", "masked")]).write_csv(path)
    result = CliRunner().invoke(app, ["gap", "table", "--set", f"path={path}", "--k", "2", "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert "gap table: 1 (class, cue) rows, 0 failed answers (counted wrong)" in result.output
    assert "95% interval" in result.output and "random 95%" in result.output
    bad = CliRunner().invoke(app, ["gap", "oracle", "-w", str(workspace.root)])
    assert bad.exit_code == 2 and "unknown model under test 'oracle'" in bad.output


def test_masking_the_cue_keeps_x_as_the_right_answer(dogs: tuple[Workspace, dict[str, str]], tmp_path: Path) -> None:
    workspace, ids = dogs
    workspace.catalog.add_evidence([Evidence(ids[n], "grass", "detector", "p1", EvidenceRole.CANDIDATE, "Background",
                                             s, BOX) for n, s in GRASS.items()])
    path = tmp_path / "a.csv"
    says = {"0.png": 0, "1.png": 0, "2.png": 1, "3.png": 1}  # without grass, the top images are missed
    pl.DataFrame([{"item_id": ids[n], "variant": v, "present": 1 if v == "natural" else p}
                  for n, p in says.items() for v in ("natural", "masked")]).write_csv(path)
    row = spurious_gaps(workspace, PredictionTable(path), k=2, mask="cue").table.row(0, named=True)
    assert row["masked_top_acc"] == 0.0 and row["masked_bottom_acc"] == 1.0 and row["masked_gap"] == 1.0
    assert row["natural_gap"] == 0.0 and row["score"] == 0.5
    with pytest.raises(ValueError, match="mask is"):
        spurious_gaps(workspace, PredictionTable(path), mask="everything")


def test_each_image_is_shown_to_the_model_once_whatever_number_of_cues(dogs: tuple[Workspace, dict[str, str]],
                                                                      tmp_path: Path) -> None:
    workspace, ids = dogs
    workspace.catalog.add_evidence([Evidence(ids[n], "sky", "detector", "p1", EvidenceRole.CANDIDATE, "Background",
                                             1 - s) for n, s in GRASS.items()])
    path = tmp_path / "a.csv"
    pl.DataFrame([{"item_id": i, "variant": v, "present": 1} for i in ids.values() for v in ("natural", "masked")]
                 ).write_csv(path)
    shown: list[tuple[str, str]] = []

    class Counting(PredictionTable):
        def says_present(self, items: Any, images: Any, label: str, variant: str, classes: Any) -> list[float]:
            shown.extend((item.item_id, variant) for item in items)
            return super().says_present(items, images, label, variant, classes)

    result = spurious_gaps(workspace, Counting(path), k=2)
    assert result.table.height == 2  # grass and sky rank the same four dogs, in opposite orders
    assert len(shown) == len(set(shown)) == 8  # 4 images x (natural, masked), each once


def test_the_report_shows_each_gap_with_its_interval_baseline_and_failures(dogs: tuple[Workspace, dict[str, str]],
                                                                          tmp_path: Path) -> None:
    from curate.analyze.report import build_report

    workspace, ids = dogs
    path = tmp_path / "answers.csv"
    says = {"0.png": (1, 1), "1.png": (1, 1), "2.png": (1, 0), "3.png": (None, 0)}  # (natural, masked)
    pl.DataFrame([{"item_id": ids[n], "variant": v, "present": p} for n, answers in says.items()
                  for v, p in zip(("natural", "masked"), answers, strict=True)]).write_csv(path)
    run = measure_gaps(workspace, "table", {"path": str(path)}, k=2).run
    text = build_report(workspace).read_text()
    assert f"## Spurious gap: table (run `{run.run_id}`)" in text and "1 answers failed and count as wrong" in text
    assert "| dog | grass | 2 | 0.500 | 1.000 | 0.750 | [0.500, 1.000] | [-0.750, 0.750] | 1 |" in text
    assert "## Cues" not in text  # a gap run is not a cue analysis


def test_the_report_reads_gap_runs_written_before_the_intervals(dogs: tuple[Workspace, dict[str, str]],
                                                               tmp_path: Path) -> None:
    from curate.analyze.report import build_report

    workspace, ids = dogs
    path = tmp_path / "answers.csv"
    pl.DataFrame([{"item_id": i, "variant": v, "present": 1} for i in ids.values() for v in ("natural", "masked")]
                 ).write_csv(path)
    measure_gaps(workspace, "table", {"path": str(path)}, k=2)
    with workspace.runs.track("analyze", "gap table", {"gap": "table", "mask": "object"}) as old:
        workspace.tables.write(GAPS_TABLE, pl.DataFrame({  # the columns an earlier version stored
            "class_label": ["dog"], "attribute": ["sky"], "k": [2], "natural_gap": [0.5], "masked_gap": [0.5],
            "score": [0.5], "run_id": [old.run_id]}), part=old.run_id)
    text = build_report(workspace).read_text()
    assert "| dog | sky | 2 | 0.500 | 0.500 | 0.500 | [-, -] | [-, -] | - |" in text
    assert text.count("## Spurious gap: table") == 2


def test_classes_ranked_a_few_at_a_time_give_the_same_gaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gap ranks the presence rows of a few whole classes at a time (``GAP_ROWS``): one class at a
    time gives the table, the masking counts and the failed answers of all classes at once."""
    import curate.analyze.gap as gap

    rng = np.random.default_rng(3)
    for label in ("cat", "dog", "fox"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for n in range(6):
            image = distinct_image(len(label) * 31 + n * 7 + ord(label[0]), (24, 16))
            image.save(tmp_path / "img" / label / f"{n}.png")
    workspace = Workspace.init(tmp_path / "ws")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    refs = workspace.catalog.references()
    workspace.catalog.add_evidence(
        [Evidence(ref.item_id, f"{cue} of {ref.label}", "detector", "p1", EvidenceRole.CANDIDATE, "Background",
                  float(rng.choice([0.0, 0.5, rng.random()])), BOX if rng.random() < 0.7 else [])
         for ref in refs for cue in ("grass", "snow")]
        + [Evidence(ref.item_id, str(ref.label), "detector", "p1", EvidenceRole.CORE, None, 0.7, BOX)
           for ref in refs[::2]])
    path = tmp_path / "answers.csv"
    pl.DataFrame([{"item_id": ref.item_id, "variant": variant, "present": None if rng.random() < 0.1
                   else int(rng.random() < 0.6)} for ref in refs for variant in ("natural", "masked")]).write_csv(path)
    together = spurious_gaps(workspace, PredictionTable(path), k=2, bootstrap=20, progress=False)
    monkeypatch.setattr(gap, "GAP_ROWS", 1)  # each class on its own
    apart = spurious_gaps(workspace, PredictionTable(path), k=2, bootstrap=20, progress=False)
    assert together.table.height == 6 and set(together.table["class_label"]) == {"cat", "dog", "fox"}
    assert together.failed_answers > 0 and together.skipped_without_boxes > 0  # both counts are exercised
    assert apart.table.equals(together.table)
    assert (apart.skipped_without_boxes, apart.failed_answers) == (together.skipped_without_boxes,
                                                                   together.failed_answers)
