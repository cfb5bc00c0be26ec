"""The FiftyOne export: FiftyOne's on-disk dataset layout, checked without FiftyOne and, where it
installs and its database runs, loaded by FiftyOne itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.export import ExportError, export_fiftyone, load_fiftyone
from curate.ingest import FolderSource, ingest
from curate.records import Evidence, EvidenceRole, Verdict
from curate.workspace import Workspace


@pytest.fixture
def viewed(workspace: Workspace, tmp_path: Path, write_image: Callable[..., Path]) -> Workspace:
    """Two cats and a dog (20 x 10 pixels); the first cat has CLIP scores, detector boxes and verdicts."""
    for name, seed in (("cat/a.png", 1), ("cat/b.png", 2), ("dog/c.png", 3)):
        write_image(tmp_path / "img" / name, seed, size=(20, 10))
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    cat = _item_of(workspace, "cat/a.png")
    workspace.catalog.add_evidence([
        Evidence(cat, "grass", "clip", "run-clip", EvidenceRole.SPURIOUS, score=0.75),
        Evidence(cat, "collar", "clip", "run-clip", EvidenceRole.CORE, score=0.25),
        Evidence(cat, "grass", "detector", "run-det", score=0.9, boxes=[[2.0, 1.0, 12.0, 6.0, 0.9], [0, 0, 20, 10]]),
    ])
    workspace.catalog.add_verdicts([Verdict(cat, "grass", "ann", "round-1", "spurious"),
                                    Verdict(cat, "grass", "bob", "round-1", "spurious")])
    return workspace


def _item_of(workspace: Workspace, locator: str) -> str:
    return next(ref.item_id for ref in workspace.catalog.references() if ref.locator == locator)


def _samples(folder: Path) -> dict[str, dict[str, Any]]:
    return {sample["item_id"]: sample for sample in json.loads((folder / "samples.json").read_text())["samples"]}


def test_the_folder_holds_labels_boxes_scores_and_verdicts_in_fiftyone_terms(viewed: Workspace,
                                                                              tmp_path: Path) -> None:
    result = export_fiftyone(viewed, tmp_path / "fo")
    assert result.samples == 3
    metadata = json.loads((tmp_path / "fo" / "metadata.json").read_text())
    assert metadata["media_type"] == "image" and "version" not in metadata  # read by FiftyOne's legacy importer
    samples = _samples(tmp_path / "fo")
    cat = samples[_item_of(viewed, "cat/a.png")]
    assert Path(cat["filepath"]).is_file() and cat["filepath"].endswith("cat/a.png")
    assert cat["ground_truth"] == {"_cls": "Classification", "label": "cat"}
    assert cat["metadata"]["_cls"] == "ImageMetadata"
    assert (cat["metadata"]["width"], cat["metadata"]["height"]) == (20, 10)
    assert [(c["label"], c["confidence"], c["role"]) for c in cat["clip_cues"]["classifications"]] == [
        ("collar", 0.25, "core"), ("grass", 0.75, "spurious")]
    boxes = cat["detector_boxes"]
    assert boxes["_cls"] == "Detections"
    assert [(d["label"], d["bounding_box"], d["confidence"]) for d in boxes["detections"]] == [
        ("grass", [0.1, 0.1, 0.5, 0.5], 0.9), ("grass", [0.0, 0.0, 1.0, 1.0], None)]
    assert cat["verdicts"]["classifications"] == [
        {"_cls": "Classification", "label": "grass", "verdict": "spurious", "round": "round-1"}]
    dog = samples[_item_of(viewed, "dog/c.png")]
    assert dog["ground_truth"]["label"] == "dog" and "clip_cues" not in dog and "verdicts" not in dog
    assert all(sample["tags"] == [] and "split" not in sample for sample in samples.values())


def test_a_release_names_the_items_and_their_splits(viewed: Workspace, tmp_path: Path) -> None:
    release = tmp_path / "release"
    (release / "data").mkdir(parents=True)
    cat, dog = _item_of(viewed, "cat/a.png"), _item_of(viewed, "dog/c.png")
    pl.DataFrame({"item_id": [cat], "y": [0]}).write_parquet(release / "data" / "train.parquet")
    pl.DataFrame({"item_id": [dog], "y": [1]}).write_parquet(release / "data" / "test.parquet")
    (release / "release.json").write_text(json.dumps({"builder": "groups", "counts": {"train": 1, "test": 1}}))
    export_fiftyone(viewed, tmp_path / "fo", release=release)
    samples = _samples(tmp_path / "fo")
    assert {item: (s["split"], s["tags"]) for item, s in samples.items()} == {cat: ("train", ["train"]),
                                                                             dog: ("test", ["test"])}


def test_cli_exports_one_class_and_replaces_the_folder(viewed: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "fo"
    (out / "stale").mkdir(parents=True)
    result = CliRunner().invoke(app, ["export", "fiftyone", str(out), "--label", "cat", "-w", str(viewed.root)])
    assert result.exit_code == 0, result.output
    assert "exported 2 samples" in result.output
    assert {s["ground_truth"]["label"] for s in _samples(out).values()} == {"cat"}
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "samples.json"]


def test_without_fiftyone_loading_says_how_to_get_it(viewed: Workspace, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fiftyone", None)  # import fiftyone raises ImportError
    export_fiftyone(viewed, tmp_path / "fo")
    with pytest.raises(ExportError, match=r"pip install 'curate\[fiftyone\]'"):
        load_fiftyone(tmp_path / "fo")


def test_fiftyones_importer_parses_every_sample(viewed: Workspace, tmp_path: Path) -> None:
    """The importer ``fo.Dataset.from_dir`` picks for this folder (no "version" in metadata.json), run
    without FiftyOne's database: every sample parses into FiftyOne's label types."""
    pytest.importorskip("fiftyone")
    from fiftyone.core.labels import Classifications, Detections
    from fiftyone.utils.data.importers import LegacyFiftyOneDatasetImporter

    export_fiftyone(viewed, tmp_path / "fo")
    with LegacyFiftyOneDatasetImporter(str(tmp_path / "fo")) as importer:
        samples = {sample["item_id"]: sample for sample in importer}
    cat = samples[_item_of(viewed, "cat/a.png")]
    assert isinstance(cat.detector_boxes, Detections) and isinstance(cat.clip_cues, Classifications)
    assert cat.detector_boxes.detections[0].bounding_box == [0.1, 0.1, 0.5, 0.5]
    assert (cat.metadata.width, cat.ground_truth.label, cat.verdicts.classifications[0]["verdict"]) == (
        20, "cat", "spurious")
    assert len(samples) == 3 and all(Path(sample.filepath).is_file() for sample in samples.values())


def test_fiftyone_reads_the_folder(viewed: Workspace, tmp_path: Path) -> None:
    fo = pytest.importorskip("fiftyone")  # needs curate[fiftyone] and a MongoDB FiftyOne can start
    from fiftyone.core.config import FiftyOneConfigError

    export_fiftyone(viewed, tmp_path / "fo")
    try:
        dataset = load_fiftyone(tmp_path / "fo", name="curate-test-export")
    except FiftyOneConfigError as error:  # fiftyone-db could not fetch a mongod when it was built
        pytest.skip(f"FiftyOne is installed but its database cannot start: {error}")
    try:
        assert len(dataset) == 3
        cat = dataset.match(fo.ViewField("item_id") == _item_of(viewed, "cat/a.png")).first()
        assert cat.ground_truth.label == "cat"
        assert cat.detector_boxes.detections[0].bounding_box == pytest.approx([0.1, 0.1, 0.5, 0.5])
        assert [c.label for c in cat.clip_cues.classifications] == ["collar", "grass"]
        assert cat.verdicts.classifications[0]["verdict"] == "spurious"
    finally:
        dataset.delete()
