from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import distinct_image, encode

from curate.images import open_image
from curate.ingest import FolderSource, IngestOptions, ManifestSource, SourceError, ingest, runner
from curate.records import RunStatus
from curate.workspace import Workspace


@pytest.fixture
def image_tree(tmp_path: Path, write_image: Callable[..., Path], photos: dict[str, Path]) -> Path:
    """cat/ and dog/ folders with PNG, JPEG and WebP files, nesting, real photos and broken files."""
    root = tmp_path / "images"
    write_image(root / "cat" / "a.png", 1)
    write_image(root / "cat" / "indoor" / "b.JPG", 2, "JPEG")
    write_image(root / "cat" / "c.webp", 3, "WEBP")
    (root / "cat" / "chelsea.png").write_bytes(photos["chelsea"].read_bytes())
    write_image(root / "dog" / "d.png", 4)
    (root / "dog" / "flower.jpg").write_bytes(photos["flower"].read_bytes())
    write_image(root / "dog" / "same-as-a.png", 1)  # same bytes as cat/a.png
    (root / "dog" / "notes.txt").write_text("not an image extension: ignored")
    (root / "dog" / ".hidden.png").write_bytes(b"hidden files are skipped")
    (root / "dog" / "empty.png").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("I am text")
    truncated = encode(distinct_image(9, (64, 64)), "PNG")
    (root / "dog" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    os.symlink(root / "nowhere.png", root / "dog" / "dangling.png")
    write_image(root / "loose.png", 5)  # directly in the root: no label
    return root


def test_folder_ingest_labels_checks_and_quarantines(workspace: Workspace, image_tree: Path) -> None:
    result = ingest(workspace, FolderSource(image_tree), progress=False)
    assert result.counts == {
        "new_items": 7, "duplicates": 1, "quarantined": 4, "quarantined:empty": 1,
        "quarantined:not-an-image": 1, "quarantined:truncated": 1, "quarantined:unreadable": 1,
    }
    status = workspace.status()
    assert status.per_class == {"<unlabelled>": 1, "cat": 4, "dog": 2}
    assert status.label_conflicts == 1  # the same bytes under cat/ and dog/
    assert {q.locator: q.reason for q in workspace.catalog.quarantined()} == {
        "dog/empty.png": "empty", "dog/text.jpg": "not-an-image", "dog/truncated.png": "truncated",
        "dog/dangling.png": "unreadable",
    }
    a_bytes = (image_tree / "cat" / "a.png").read_bytes()
    item = workspace.catalog.item(hashlib.sha256(a_bytes).hexdigest())
    assert (item.label, item.format, item.width, item.height) == ("cat", "PNG", 16, 12)
    assert {r.locator for r in workspace.catalog.references(item_id=item.item_id)} == {"cat/a.png",
                                                                                      "dog/same-as-a.png"}
    assert Path(item.uri) == image_tree / "cat" / "a.png"
    run = workspace.runs.get(result.run.run_id)
    assert run.status == RunStatus.COMPLETED and run.counts == result.counts


@pytest.mark.parametrize("lookup_batch", [5, runner.LOOKUP_BATCH])  # stored entries looked up in 3 batches or 1
def test_ingesting_the_same_folder_again_changes_nothing(workspace: Workspace, image_tree: Path, lookup_batch: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "LOOKUP_BATCH", lookup_batch)
    ingest(workspace, FolderSource(image_tree), progress=False)
    before = _snapshot(workspace)
    again = ingest(workspace, FolderSource(image_tree), progress=False)
    assert again.counts == {"unchanged": 12}
    assert _snapshot(workspace) == before


@pytest.mark.parametrize("lookup_batch", [5, runner.LOOKUP_BATCH])
def test_a_changed_or_repaired_file_is_ingested_again(workspace: Workspace, image_tree: Path,
                                                      write_image: Callable[..., Path], lookup_batch: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "LOOKUP_BATCH", lookup_batch)
    ingest(workspace, FolderSource(image_tree), progress=False)
    write_image(image_tree / "dog" / "empty.png", 77)  # repaired
    result = ingest(workspace, FolderSource(image_tree), progress=False)
    assert result.counts == {"new_items": 1, "unchanged": 11}
    assert "dog/empty.png" not in {q.locator for q in workspace.catalog.quarantined()}


def test_copy_makes_the_workspace_self_contained(workspace: Workspace, image_tree: Path) -> None:
    ingest(workspace, FolderSource(image_tree), IngestOptions(copy=True), progress=False)
    for item in workspace.catalog.items():
        path = workspace.resolve_uri(item.uri)
        assert item.uri.startswith("blob:") and path.is_relative_to(workspace.root)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == item.item_id
        assert open_image(path).size == item.display_size


def test_pixel_limit_and_licence_options(workspace: Workspace, image_tree: Path) -> None:
    options = IngestOptions(max_pixels=100_000, license="CC0-1.0")
    result = ingest(workspace, FolderSource(image_tree), options, progress=False)
    assert result.counts["quarantined:too-many-pixels"] == 2  # chelsea 451x300, flower 640x427
    assert {item.license for item in workspace.catalog.items()} == {"CC0-1.0"}


def test_a_later_source_fills_the_licence_and_label_an_earlier_one_lacked(
        workspace: Workspace, tmp_path: Path, write_image: Callable[..., Path]) -> None:
    import polars as pl

    write_image(tmp_path / "loose.png", 1)
    ingest(workspace, FolderSource(tmp_path), progress=False)
    pl.DataFrame({"path": ["loose.png"], "label": ["cat"], "licence": ["CC-BY-4.0"]}).write_csv(tmp_path / "m.csv")
    ingest(workspace, ManifestSource(tmp_path / "m.csv", license_column="licence"), progress=False)
    item = next(workspace.catalog.items())
    assert (item.label, item.license) == ("cat", "CC-BY-4.0")


def test_a_missing_folder_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="no folder"):
        FolderSource(Path("/does/not/exist"))


def test_export_items_streams_to_parquet_and_csv(workspace: Workspace, image_tree: Path, tmp_path: Path) -> None:
    import polars as pl

    ingest(workspace, FolderSource(image_tree), progress=False)
    assert workspace.export("items", tmp_path / "items.parquet") == 7
    frame = pl.read_parquet(tmp_path / "items.parquet")
    assert frame.height == 7 and frame.filter(pl.col("n_sources") == 2).height == 1
    assert workspace.export("items", tmp_path / "items.csv") == 7
    assert pl.read_csv(tmp_path / "items.csv").get_column("item_id").sort().equals(
        frame.get_column("item_id").sort())
    with pytest.raises(ValueError, match="parquet or .csv"):
        workspace.export("items", tmp_path / "items.xlsx")


def _snapshot(workspace: Workspace) -> tuple[object, ...]:
    conn = workspace.connect()
    return tuple(
        conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()  # noqa: S608
        for table in ("items", "item_sources", "quarantine")
    )


def test_a_run_counts_unchanged_entries_once(workspace: Workspace, tmp_path: Path,
                                            write_image: Callable[..., Path]) -> None:
    for index in range(30):
        write_image(tmp_path / "grow" / "a" / f"{index:02d}.png", index)
    ingest(workspace, FolderSource(tmp_path / "grow"), progress=False)
    for index in range(30, 42):  # twelve more: the next ingest stores them over three batches
        write_image(tmp_path / "grow" / "a" / f"{index:02d}.png", index)
    result = ingest(workspace, FolderSource(tmp_path / "grow"), IngestOptions(batch_size=5), progress=False)
    assert result.counts == {"new_items": 12, "unchanged": 30}
    assert result.run.counts == {"new_items": 12, "unchanged": 30}


def test_quarantine_lists_at_most_limit_entries(workspace: Workspace, image_tree: Path) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    ingest(workspace, FolderSource(image_tree), progress=False)
    listed = CliRunner().invoke(app, ["quarantine", "--limit", "2", "-w", str(workspace.root)])
    assert listed.exit_code == 0 and listed.output.rstrip().endswith("4 quarantined entries (showing 2)")
    assert sum("dog/" in line for line in listed.output.splitlines()) == 2
    everything = CliRunner().invoke(app, ["quarantine", "-w", str(workspace.root)])
    assert everything.output.rstrip().endswith("4 quarantined entries")
