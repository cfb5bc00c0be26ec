"""Images as Label Studio sees them: linked into the workspace's served folder."""

from __future__ import annotations

import os
from pathlib import Path

from curate.records import Item
from curate.workspace import Workspace

FILES_FOLDER = "annotation-files"


def files_folder(workspace: Workspace) -> Path:
    folder = workspace.root / FILES_FOLDER
    folder.mkdir(exist_ok=True)
    return folder


def storage_path(workspace: Workspace) -> str:
    return str(files_folder(workspace).absolute())


def image_url(workspace: Workspace, item: Item) -> str:
    """Link the image into the workspace's served folder; its local-files URL."""
    source = workspace.resolve_uri(item.uri).resolve()
    link = files_folder(workspace) / f"{item.item_id}{source.suffix.lower()}"
    if not link.exists():
        os.symlink(source, link)
    return "/data/local-files/?d=" + str(link.absolute()).lstrip("/")
