"""A FIFO (or any non-regular file) named like an image is quarantined, never opened: before, open()
blocked forever and nothing was committed."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
from faultkit import IMAGES, intact, make_image_folder

from curate.ingest import FolderSource, ManifestSource, ingest
from curate.workspace import Workspace


@pytest.mark.timeout(60)
def test_a_fifo_in_a_folder_is_quarantined_and_the_rest_ingested(workspace: Workspace, tmp_path: Path) -> None:
    image_folder = make_image_folder(tmp_path)
    os.mkfifo(image_folder / "class0" / "pipe.jpg")
    result = ingest(workspace, FolderSource(image_folder), progress=False)
    assert result.counts == {"new_items": IMAGES, "quarantined": 1, "quarantined:not-a-file": 1}
    [held] = workspace.catalog.quarantined()
    assert held.locator == "class0/pipe.jpg" and "is a FIFO, not a regular file" in held.detail
    assert intact(workspace)


@pytest.mark.timeout(60)
def test_fifos_devices_and_folders_in_a_manifest_are_quarantined(workspace: Workspace, tmp_path: Path) -> None:
    image_folder = make_image_folder(tmp_path)
    os.mkfifo(image_folder / "pipe.png")
    (image_folder / "folder.png").mkdir()
    manifest = image_folder / "manifest.csv"
    pl.DataFrame({"path": ["pipe.png", "/dev/zero", "folder.png", "class0/0000.png"],
                  "label": ["a", "b", "c", "d"]}).write_csv(manifest)
    result = ingest(workspace, ManifestSource(manifest, allow_absolute=True), progress=False)
    assert result.counts == {"new_items": 1, "quarantined": 3, "quarantined:not-a-file": 3}
    details = {q.locator: q.detail for q in workspace.catalog.quarantined()}
    assert "a FIFO" in details["pipe.png"] and "a character device" in details["/dev/zero"]
    assert "a folder" in details["folder.png"]
