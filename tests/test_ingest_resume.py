"""Crash safety: a SIGKILLed ingest resumes without duplicates; two ingests at once corrupt nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from peak_memory import needs_proc, peak_kib

from curate.ingest import FolderSource, ingest
from curate.records import Quarantined, RunStatus
from curate.workspace import Workspace

TOTAL = 3000


def _curate(*args: str) -> list[str]:
    return [sys.executable, "-m", "curate", *args]


def _count(database: Path, table: str) -> int:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


@pytest.fixture
def many_images(tmp_path: Path, write_image: Callable[..., Path]) -> Path:
    root = tmp_path / "many"
    for index in range(TOTAL):
        write_image(root / f"class{index % 3}" / f"{index:05d}.png", index, size=(8, 8))
    return root


def test_sigkill_mid_ingest_then_rerun_gives_the_same_rows_once(workspace: Workspace, many_images: Path) -> None:
    process = subprocess.Popen(
        _curate("ingest", "folder", str(many_images), "-w", str(workspace.root), "--quiet", "--batch-size", "50"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while _count(workspace.database, "items") < 300:
        assert process.poll() is None, process.stderr.read() if process.stderr else "ingest exited early"
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stored_at_kill = _count(workspace.database, "items")
    assert 300 <= stored_at_kill < TOTAL, "the kill came too late to test resuming"
    [killed] = workspace.runs.list("ingest")
    assert killed.status == RunStatus.INTERRUPTED
    assert killed.counts["new_items"] == stored_at_kill  # counts were committed with the rows

    result = ingest(workspace, FolderSource(many_images), progress=False)
    assert result.run.run_id == killed.run_id and result.run.attempts == 2
    assert result.counts == {"new_items": TOTAL - stored_at_kill, "unchanged": stored_at_kill}
    assert result.run.counts["new_items"] == TOTAL
    conn = workspace.connect()
    assert tuple(conn.execute("SELECT COUNT(*), COUNT(DISTINCT item_id) FROM items").fetchone()) == (TOTAL, TOTAL)
    assert conn.execute("SELECT COUNT(*) FROM item_sources").fetchone()[0] == TOTAL
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert workspace.status().per_class == {"class0": 1000, "class1": 1000, "class2": 1000}


def test_two_ingest_processes_at_once_store_the_union(workspace: Workspace, tmp_path: Path,
                                                      write_image: Callable[..., Path]) -> None:
    for index in range(400):  # two folders sharing the images of seeds 200-399
        write_image(tmp_path / "left" / "a" / f"{index}.png", index, size=(8, 8))
        write_image(tmp_path / "right" / "a" / f"{index}.png", index + 200, size=(8, 8))
    processes = [
        subprocess.Popen(_curate("ingest", "folder", str(tmp_path / side), "-w", str(workspace.root), "--quiet",
                                 "--batch-size", "20"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for side in ("left", "right")
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    conn = workspace.connect()
    assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 600
    assert conn.execute("SELECT COUNT(*) FROM item_sources").fetchone()[0] == 800
    runs = workspace.runs.list("ingest")
    assert len(runs) == 2 and sum(r.counts["new_items"] for r in runs) == 600
    assert sum(r.counts.get("duplicates", 0) for r in runs) == 200
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


_REINGEST = """
import sys
from pathlib import Path
from curate.ingest import FolderSource, ingest
from curate.workspace import Workspace
print(ingest(Workspace.open(sys.argv[1]), FolderSource(Path(sys.argv[2])), progress=False).counts["unchanged"])
"""


@needs_proc
def test_a_reingest_does_not_hold_every_stored_locator_of_its_source(tmp_path: Path,
                                                                     write_image: Callable[..., Path]) -> None:
    """A source with 3,000 vs 30,000 stored entries (400-byte locators) ingested again: a note of every
    stored locator would be about 20 MB more; looked up a batch at a time, peak RSS stays within a few MB."""
    for index in range(4):
        write_image(tmp_path / "images" / f"{index}.png", index)
    source = FolderSource(tmp_path / "images")
    peaks = []
    for stored in (3_000, 30_000):
        workspace = Workspace.init(tmp_path / f"ws{stored}")
        first = ingest(workspace, source, progress=False)
        gone = [Quarantined(first.source.source_id, f"gone/{n:06d}/" + "x" * 400, "not-an-image", "gone", "print")
                for n in range(stored - 4)]  # entries stored before that the folder no longer holds
        workspace.catalog.record_ingest_batch(first.run.run_id, [], gone)
        printed, peak = peak_kib(_REINGEST, str(workspace.root), str(source.location))
        assert printed == ["4"]
        peaks.append(peak)
    assert peaks[1] - peaks[0] < 6 * 1024, f"peak RSS grew from {peaks[0]} KiB to {peaks[1]} KiB"
