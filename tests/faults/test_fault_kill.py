"""SIGKILL at a random batch of an ingest: the next ingest resumes the same run and ends with the rows,
counts and files of an ingest that was never interrupted."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultkit import IMAGES, intact, make_image_folder, rows, temporaries

from curate.ingest import FolderSource, IngestOptions, ingest
from curate.records import RunStatus
from curate.workspace import Workspace


def _stored(database: Path) -> int:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM item_sources").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _kill_ingest_after(workspace: Workspace, folder: Path, stored: int, *extra: str) -> None:
    """Start ``curate ingest folder`` in a process and SIGKILL it once ``stored`` entries are committed."""
    process = subprocess.Popen([sys.executable, "-m", "curate", "ingest", "folder", str(folder), "-w",
                                str(workspace.root), "--quiet", "--batch-size", "10", "--workers", "1", *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _stored(workspace.database) < stored:
        assert process.poll() is None, process.stderr.read() if process.stderr else "ingest ended early"
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("copy", [False, True], ids=["in-place", "copy"])
def test_sigkill_at_a_random_batch_then_resume_gives_the_rows_of_an_uninterrupted_ingest(
        workspace: Workspace, tmp_path: Path, copy: bool) -> None:
    image_folder = make_image_folder(tmp_path)
    options = IngestOptions(copy=copy, batch_size=10)
    reference = Workspace.init(tmp_path / "reference")
    uninterrupted = ingest(reference, FolderSource(image_folder), options, progress=False)

    seed = int(os.environ.get("CURATE_FAULT_SEED", random.randrange(1_000_000)))
    batch = random.Random(seed).randrange(1, IMAGES // 10 - 2)
    print(f"killing after batch {batch} (CURATE_FAULT_SEED={seed})")
    _kill_ingest_after(workspace, image_folder, 10 * batch, *(["--copy"] if copy else []))
    [killed] = workspace.runs.list("ingest")
    assert killed.status == RunStatus.INTERRUPTED and intact(workspace)
    stored = _stored(workspace.database)
    assert stored < IMAGES, "the kill came too late to test resuming"

    resumed = ingest(workspace, FolderSource(image_folder), options, progress=False)
    assert resumed.run.run_id == killed.run_id and resumed.run.attempts == 2
    assert resumed.counts["unchanged"] == stored  # this attempt skipped what the killed one stored
    assert resumed.run.counts == uninterrupted.run.counts == {"new_items": IMAGES}
    assert rows(workspace) == rows(reference)
    assert intact(workspace) and temporaries(workspace.root) == []
    blobs = sorted(p.name for p in (workspace.root / "blobs").rglob("*") if p.is_file())
    assert blobs == sorted(p.name for p in (reference.root / "blobs").rglob("*") if p.is_file())


def test_a_blob_left_half_written_by_a_killed_copy_is_removed_by_the_next_ingest(
        workspace: Workspace, tmp_path: Path) -> None:
    image_folder = make_image_folder(tmp_path)
    leftover = workspace.root / "blobs" / "ab" / ".ab12.png.x7y8z9.tmp"  # what kill -9 mid-write leaves
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"\x89PNG half")
    (workspace.root / "blobs" / "cd").mkdir()
    writing = subprocess.Popen(  # a live writer's temporary, locked by its process: kept
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'wb'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); time.sleep(60)",
         str(workspace.root / "blobs" / "cd" / ".cd34.png.live00.tmp")], stdout=subprocess.PIPE)
    try:
        assert writing.stdout is not None and writing.stdout.readline() == b"\n"
        ingest(workspace, FolderSource(image_folder), IngestOptions(copy=True), progress=False)
        assert [p.name for p in temporaries(workspace.root)] == [".cd34.png.live00.tmp"]
    finally:
        writing.kill()
        writing.wait()
    assert not leftover.exists()
