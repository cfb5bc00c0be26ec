"""The images a workspace's Label Studio may serve, and nothing else.

A workspace's server serves local files only from ``<ws>/annotation-files`` (its document root).
Label Studio refuses a storage equal to the root, so images are linked into
``<ws>/annotation-files/images`` and projects attach that folder as local-files storage. A task
points at ``/data/local-files/?d=images/<item_id>.<ext>`` (relative to the document root). Links
are symbolic: Label Studio checks the requested *path* against the root and the storage and then
reads through the link, so the image stays where it is and no bytes are copied.

>>> from pathlib import Path
>>> document_root(Path("/data/ws"))
PosixPath('/data/ws/annotation-files')
"""

from __future__ import annotations

import os
from pathlib import Path

from curate.records import Item
from curate.workspace import Workspace

DOCUMENT_ROOT = "annotation-files"
IMAGES = "images"
URL_PREFIX = "/data/local-files/?d="


def document_root(workspace_root: Path) -> Path:
    """The only folder the workspace's server serves local files from."""
    return Path(workspace_root).resolve() / DOCUMENT_ROOT


def files_folder(workspace: Workspace) -> Path:
    """The folder images are linked into (created on first use)."""
    folder = document_root(workspace.root) / IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def storage_path(workspace: Workspace) -> str:
    """What a project's local-files storage attaches: the images folder, absolute."""
    return str(files_folder(workspace))


def image_url(workspace: Workspace, item: Item) -> str:
    """Link the item's image into the served folder (once); its URL relative to the document root.

    A link left dangling by a moved image is replaced.
    """
    source = workspace.resolve_uri(item.uri).resolve()
    link = files_folder(workspace) / f"{item.item_id}{source.suffix.lower()}"
    if os.path.lexists(link) and not link.exists():
        link.unlink()
    if not os.path.lexists(link):
        os.symlink(source, link)
    return URL_PREFIX + f"{IMAGES}/{link.name}"
