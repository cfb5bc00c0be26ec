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

from curate.ingest import FolderSource, ingest
from curate.records import RunStatus
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
