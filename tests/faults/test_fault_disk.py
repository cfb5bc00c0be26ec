"""A full disk, wherever it strikes (a blob being written, the catalogue growing): one line naming the
file, no traceback, no orphan blob or temporary file, an intact catalogue, and a re-run that ends with
the rows of an ingest that never hit it."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest
from faultkit import curate, intact, make_image_folder, one_line_error, rows, temporaries

import curate.workspace as workspace_module
from curate.ingest import FolderSource, IngestOptions, ingest
from curate.workspace import Workspace


def _blob_files(workspace: Workspace) -> set[str]:
    return {f"blob:{p.relative_to(workspace.root / 'blobs').as_posix()}"
            for p in (workspace.root / "blobs").rglob("*") if p.is_file()}


def _stored_blobs(workspace: Workspace) -> set[str]:
    return {row[0] for row in workspace.connect().execute("SELECT uri FROM items WHERE uri LIKE 'blob:%'")}


def _ingest_again_matches_a_clean_ingest(workspace: Workspace, folder: Path, tmp_path: Path) -> None:
    assert curate("ingest", "folder", folder, "-w", workspace.root, "--copy", "-q")[0] == 0
    reference = Workspace.init(tmp_path / "reference")
    ingest(reference, FolderSource(folder), IngestOptions(copy=True), progress=False)
    assert rows(workspace) == rows(reference) and _blob_files(workspace) == _stored_blobs(workspace)


def test_enospc_while_copying_blobs(workspace: Workspace, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    image_folder = make_image_folder(tmp_path)
    real_fsync, calls = os.fsync, []

    def fsync_on_a_filling_disk(fd: int) -> None:
        calls.append(fd)
        if len(calls) > 25:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_on_a_filling_disk)
    code, output = curate("ingest", "folder", image_folder, "-w", workspace.root, "--copy", "-q",
                          "--batch-size", "10")
    monkeypatch.undo()
    line = one_line_error(output)
    assert code == 2 and "no space left on the device holding" in line and str(workspace.root / "blobs") in line
    assert temporaries(workspace.root) == [] and intact(workspace)
    assert _blob_files(workspace) == _stored_blobs(workspace)  # no blob without its row
    assert 0 < len(_stored_blobs(workspace)) < len(calls)
    _ingest_again_matches_a_clean_ingest(workspace, image_folder, tmp_path)


def test_the_catalogue_filling_the_disk(workspace: Workspace, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    image_folder = make_image_folder(tmp_path)
    real_connect = workspace_module._connect

    def connect_to_a_nearly_full_disk(database: Path, mode: str) -> sqlite3.Connection:
        conn = real_connect(database, mode)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 3}")  # SQLite's own "database or disk is full"
        return conn

    monkeypatch.setattr(workspace_module, "_connect", connect_to_a_nearly_full_disk)
    code, output = curate("ingest", "folder", image_folder, "-w", workspace.root, "--copy", "-q",
                          "--batch-size", "10")
    monkeypatch.undo()
    line = one_line_error(output)
    assert code == 2 and f"no space left on the device holding {workspace.database}:" in line
    assert temporaries(workspace.root) == [] and intact(workspace)
    assert _blob_files(workspace) == _stored_blobs(workspace)  # the failed batch took its blobs with it
    _ingest_again_matches_a_clean_ingest(workspace, image_folder, tmp_path)
