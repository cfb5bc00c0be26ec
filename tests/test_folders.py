"""Folders replaced whole: the atomic switch, its two-rename fallback, and what a killed process left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import curate.folders as folders
from curate.folders import clean_leftovers, replaced


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.parametrize("exchange", [True, False])
def test_a_new_version_replaces_the_old_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(folders, "_exchange", lambda first, second: False)  # platforms without renameat2
    target = tmp_path / "out"
    with replaced(target) as folder:
        (folder / "old.txt").write_text("1")
    with replaced(target) as folder:
        (folder / "new.txt").write_text("2")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_failed_version_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with replaced(target) as folder:
        (folder / "good.txt").write_text("1")
    with pytest.raises(RuntimeError), replaced(target) as folder:
        (folder / "half.txt").write_text("2")
        raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in target.iterdir()] == ["good.txt"]


def test_what_a_killed_process_left_is_cleared_and_a_cut_switch_is_undone(tmp_path: Path) -> None:
    dead = _dead_pid()
    target = tmp_path / "out"
    (tmp_path / f".out.new-{dead}").mkdir()  # killed while writing
    (tmp_path / f".out.old-{dead}").mkdir()  # killed between the two renames of the fallback: out is gone
    (tmp_path / f".out.old-{dead}" / "good.txt").write_text("1")
    (tmp_path / f".other.new-{dead}").mkdir()  # not ours
    clean_leftovers(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.new-{dead}", "out"]
    assert (target / "good.txt").read_text() == "1"
