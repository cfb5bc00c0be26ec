"""Damaged workspace files: a zero-byte or garbled catalogue, a catalogue with bad pages, a parquet file cut
short. Each is one line naming the file and saying what to do; opening never makes a new workspace."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from faultkit import curate, intact, make_image_folder, one_line_error

from curate.ingest import FolderSource, ingest
from curate.workspace import DamagedFileError, Workspace


@pytest.mark.parametrize("content", [b"", b"this is not a database" * 100], ids=["zero-bytes", "garbage"])
def test_an_empty_or_garbled_catalogue_is_an_error_never_a_new_workspace(tmp_path: Path, content: bytes) -> None:
    Workspace.init(tmp_path / "ws")
    database = tmp_path / "ws" / "curate.sqlite"
    database.write_bytes(content)
    for command in (["status"], ["runs"], ["quarantine"]):
        code, output = curate(*command, "-w", tmp_path / "ws")
        line = one_line_error(output)
        assert code == 2 and str(database) in line and "is damaged" in line and "backup" in line
    assert database.read_bytes() == content  # nothing was written into it
    with pytest.raises(DamagedFileError):
        Workspace.init(tmp_path / "ws")  # init does not paper over it either


def test_an_init_that_fails_on_a_full_disk_leaves_no_workspace_that_opens_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.workspace as workspace_module

    real_migrate = workspace_module.migrate

    def migrate_on_a_full_disk(conn: object) -> int:
        conn.execute("PRAGMA max_page_count = 1")  # type: ignore[attr-defined]  # SQLite's own "disk is full"
        return real_migrate(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(workspace_module, "migrate", migrate_on_a_full_disk)
    code, output = curate("init", tmp_path / "ws")
    line = one_line_error(output)
    assert code == 2 and "no space left" in line and str(tmp_path / "ws" / "curate.sqlite") in line
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "ws").iterdir() if p.is_file()) == []
    code, output = curate("status", "-w", tmp_path / "ws")
    assert code == 2 and "curate init" in one_line_error(output)
    assert curate("init", tmp_path / "ws")[0] == 0 and intact(Workspace.open(tmp_path / "ws"))


def test_a_catalogue_with_damaged_pages_is_one_line_naming_it(workspace: Workspace, tmp_path: Path) -> None:
    ingest(workspace, FolderSource(make_image_folder(tmp_path)), progress=False)
    workspace.close()  # checkpoints the WAL into the file
    size = workspace.database.stat().st_size
    with workspace.database.open("r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\xff" * 4096)
    code, output = curate("status", "-w", workspace.root)
    line = one_line_error(output)
    assert code == 2 and "database disk image is malformed" in line and str(workspace.database) in line
    assert ".recover" in line


def test_a_side_table_cut_short_is_one_line_naming_the_file(workspace: Workspace) -> None:
    part = workspace.tables.write("evaluations", pl.DataFrame({"kind": ["groups"], "run_id": ["r"],
                                                               "metrics": ["{}"]}), part="r")
    part.write_bytes(part.read_bytes()[:-9])
    code, output = curate("report", "-w", workspace.root)
    line = one_line_error(output)
    assert code == 2 and str(part) in line and "not a whole parquet file" in line and "delete it" in line


def test_a_manifest_cut_short_is_one_line_naming_it(workspace: Workspace, tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pl.DataFrame({"path": ["a.png"] * 100, "label": ["x"] * 100}).write_parquet(manifest)
    manifest.write_bytes(manifest.read_bytes()[:-20])
    code, output = curate("ingest", "manifest", manifest, "-w", workspace.root)
    assert code == 2 and str(manifest) in one_line_error(output)
