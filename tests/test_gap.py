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
from curate.analyze.gap import ClipZeroShot, PredictionTable, masked_image, spurious_gaps
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

    run, table = measure_gaps(workspace, "table", {"path": str(path)}, k=2)
    assert table.equals(result.table) and run.counts == {"rows": 1, "images_without_object_boxes": 0}
    assert workspace.tables.read(GAPS_TABLE)["score"].to_list() == [0.75]


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


def test_clip_zero_shot_as_the_model_under_test(dogs: tuple[Workspace, dict[str, str]], tiny_clip: str) -> None:
    workspace, _ = dogs
    answers = ClipZeroShot(tiny_clip).says_present([], [Image.new("RGB", (32, 32))] * 2, "dog", "natural",
                                                    ["cat", "dog"])
    assert len(answers) == 2 and set(answers) <= {0.0, 1.0}
    run, table = measure_gaps(workspace, "clip", {"model": tiny_clip}, k=2)
    assert table.height == 1 and -1.0 <= table["score"][0] <= 1.0
    assert run.models == {tiny_clip: "curate-tiny-clip@random"}


def test_a_vlm_answers_three_questions_per_image(dogs: tuple[Workspace, dict[str, str]]) -> None:
    workspace, _ = dogs

    def always_yes(body: dict[str, Any]) -> dict[str, str]:
        return {"answer": "yes"}

    with standin(always_yes) as server:
        _, table = measure_gaps(workspace, "vlm", {"base_url": server.base_url}, k=2)
        assert len(server.requests) == 3 * 8  # 2 top + 2 bottom, natural and masked
    row = table.row(0, named=True)
    assert row["natural_gap"] == 0.0 and row["masked_top_acc"] == 0.0 and row["score"] == 0.0


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
    assert "gap table: 1 (class, cue) rows" in result.output
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
