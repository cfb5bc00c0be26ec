from __future__ import annotations

import struct
import zlib
from pathlib import Path

import polars as pl
import pytest

from curate.ingest import GroupTableSource, SourceError, ingest
from curate.workspace import Workspace

# Waterbirds' published split / group sizes, keyed by (split code, y, a).
WATERBIRDS_COUNTS = {
    (0, 0, 0): 3498, (0, 0, 1): 184, (0, 1, 0): 56, (0, 1, 1): 1057,
    (1, 0, 0): 467, (1, 0, 1): 466, (1, 1, 0): 133, (1, 1, 1): 133,
    (2, 0, 0): 2255, (2, 0, 1): 2255, (2, 1, 0): 642, (2, 1, 1): 642,
}


def _png(width: int, height: int, rgb: bytes) -> bytes:
    """An RGB PNG of these pixels, encoded here: PIL's encoder, once per image, took most of the time
    of writing Waterbirds' 11,788 files."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))  # filter 0 a row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _waterbirds_like(root: Path) -> Path:
    """A metadata.csv with Waterbirds' column names and group sizes, and one tiny image per row."""
    rows = []
    for (split, y, a), count in WATERBIRDS_COUNTS.items():
        rows += [(split, y, a)] * count
    folder = root / "images" / "birds"
    folder.mkdir(parents=True)
    records = []
    for index, (split, y, a) in enumerate(rows):
        name = f"birds/{index:05d}.png"
        (root / "images" / name).write_bytes(_png(2, 2, index.to_bytes(3, "big") * 4))
        records.append({"img_id": index + 1, "img_filename": name, "y": y, "split": split, "place": a,
                        "place_filename": f"/places/{'water' if a else 'land'}.jpg"})
    table = root / "metadata.csv"
    pl.DataFrame(records).write_csv(table)
    return table


def test_waterbirds_style_table_keeps_its_splits_and_groups_exactly(workspace: Workspace, tmp_path: Path) -> None:
    table = _waterbirds_like(tmp_path)
    (tmp_path / "images" / "birds" / "00007.png").write_bytes(b"broken")
    source = GroupTableSource(table, images=tmp_path / "images", id_column="img_id",
                              filename_column="img_filename", a_column="place",
                              y_names=("landbird", "waterbird"), a_names=("land", "water"))
    result = ingest(workspace, source, progress=False)
    assert result.counts == {"new_items": 11787, "quarantined": 1, "quarantined:not-an-image": 1}
    kept = workspace.catalog.group_table(result.source.source_id)
    original = pl.read_csv(table).rename({"img_id": "id", "img_filename": "filename", "place": "a"})
    columns = ["id", "filename", "split", "y", "a"]
    assert kept.select(columns).equals(original.select(columns).sort("id"))
    counts = {tuple(k): v for *k, v in kept.group_by(["split", "y", "a"]).len().iter_rows()}
    assert counts == WATERBIRDS_COUNTS
    assert kept.filter(pl.col("item_id").is_null()).get_column("quarantine_reason").to_list() == ["not-an-image"]
    waterbirds = sum(n for (_, y, _), n in WATERBIRDS_COUNTS.items() if y == 1)
    assert workspace.status().per_class == {"landbird": 11788 - waterbirds - 1, "waterbird": waterbirds}
    ref = workspace.catalog.references(source_id=result.source.source_id)[0]
    assert (ref.split, ref.metadata["a_name"], ref.metadata["place_filename"]) == ("train", "land",
                                                                                   "/places/land.jpg")


def test_group_codes_without_a_name_are_refused(tmp_path: Path) -> None:
    table = tmp_path / "groups.csv"
    pl.DataFrame({"id": [1, 2], "filename": ["a.png", "b.png"], "split": [0, 0], "y": [0, 2],
                  "a": [0, 1]}).write_csv(table)
    with pytest.raises(SourceError, match="value 2 has no name"):
        GroupTableSource(table, y_names=("landbird", "waterbird"))
    text = tmp_path / "text.csv"
    pl.DataFrame({"id": [1], "filename": ["a.png"], "split": [0], "y": ["bird"], "a": [0]}).write_csv(text)
    with pytest.raises(SourceError, match="integer codes"):
        GroupTableSource(text)


def test_group_table_refuses_other_sources(workspace: Workspace, tmp_path: Path) -> None:
    from curate.ingest import FolderSource

    result = ingest(workspace, FolderSource(tmp_path), progress=False)
    with pytest.raises(ValueError, match="not a group table"):
        workspace.catalog.group_table(result.source.source_id)


def test_a_table_written_on_another_machine_is_read_through_a_path_map(workspace: Workspace, tmp_path: Path) -> None:
    from conftest import distinct_image
    from typer.testing import CliRunner

    from curate.cli import app

    old = "/restricted/projectnb/metashift/train"  # MetaShift's published metadata carries such paths
    (tmp_path / "images" / "cat").mkdir(parents=True)
    for index in range(3):
        distinct_image(900 + index, (6, 6)).save(tmp_path / "images" / "cat" / f"{index}.jpg")
    rows = [{"id": i, "filename": f"{old}/cat/cat(indoor)/../../cat/{i}.jpg" if i == 2 else f"{old}/cat/{i}.jpg",
             "split": 0, "y": 0, "a": i % 2} for i in range(3)]
    pl.DataFrame(rows).write_csv(tmp_path / "metadata.csv")
    source = GroupTableSource(tmp_path / "metadata.csv", y_names=("cat",), a_names=("outdoor", "indoor"))
    assert ingest(workspace, source, progress=False).counts["quarantined"] == 3  # every row an absolute path

    command = ["ingest", "groups", str(tmp_path / "metadata.csv"), "--y-names", "cat", "--a-names",
               "outdoor,indoor", "--path-map", f"{old}/=images/", "-w", str(workspace.root)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    labels = sorted(item.label for item in workspace.catalog.items())
    assert labels == ["cat", "cat"]  # the mapped row with '..' is still refused: nothing leaves the root
    reasons = {q.locator: q.reason for q in workspace.catalog.quarantined()}
    assert list(reasons.values()).count("path-escape") >= 1
    bad = CliRunner().invoke(app, [*command[:-2], "--path-map", "no-equals-sign", "-w", str(workspace.root)])
    assert bad.exit_code != 0 and "OLD_PREFIX=NEW_PREFIX" in bad.output
