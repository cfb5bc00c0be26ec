"""A FIFO (or any non-regular file) named like an image is quarantined, never opened: before, open()
blocked forever and nothing was committed. Ingest runs in a process of its own, so a hang fails the
test after a minute instead of hanging the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
from faultkit import IMAGES, intact, make_image_folder

from curate.workspace import Workspace


def _ingest(*args: str | Path) -> None:
    done = subprocess.run([sys.executable, "-m", "curate", "ingest", *map(str, args), "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_fifo_in_a_folder_is_quarantined_and_the_rest_ingested(workspace: Workspace, tmp_path: Path) -> None:
    image_folder = make_image_folder(tmp_path)
    os.mkfifo(image_folder / "class0" / "pipe.jpg")
    _ingest("folder", image_folder, "-w", workspace.root)
    [run] = workspace.runs.list("ingest")
    assert run.counts == {"new_items": IMAGES, "quarantined": 1, "quarantined:not-a-file": 1}
    [held] = workspace.catalog.quarantined()
    assert held.locator == "class0/pipe.jpg" and "is a FIFO, not a regular file" in held.detail
    assert intact(workspace)


def test_fifos_devices_and_folders_in_a_manifest_are_quarantined(workspace: Workspace, tmp_path: Path) -> None:
    image_folder = make_image_folder(tmp_path)
    os.mkfifo(image_folder / "pipe.png")
    (image_folder / "folder.png").mkdir()
    manifest = image_folder / "manifest.csv"
    pl.DataFrame({"path": ["pipe.png", "/dev/zero", "folder.png", "class0/0000.png"],
                  "label": ["a", "b", "c", "d"]}).write_csv(manifest)
    _ingest("manifest", manifest, "--allow-absolute", "-w", workspace.root)
    [run] = workspace.runs.list("ingest")
    assert run.counts == {"new_items": 1, "quarantined": 3, "quarantined:not-a-file": 3}
    details = {q.locator: q.detail for q in workspace.catalog.quarantined()}
    assert "a FIFO" in details["pipe.png"] and "a character device" in details["/dev/zero"]
    assert "a folder" in details["folder.png"]
