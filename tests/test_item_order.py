"""Items read in storage order and put in order afterwards (#12): ``item_chunks`` gives the same id
ranges as a walk through the id index, and an items export the same rows in the same order as the
catalogue's own query, whatever the ids look like (hand-made or sha256) and however they were stored."""

from __future__ import annotations

import hashlib
import random

import pytest

from curate import spill
from curate.records import Item, RunStatus, SourceRef
from curate.spill import item_chunks
from curate.workspace import Workspace

HAND_MADE = ["img_10", "img_9", "IMG-3", "a", "z9", "\u00e9t\u00e9", "0", "00", "a b", "Z"]


@pytest.fixture
def stored(workspace: Workspace) -> Workspace:
    """Hand-made and sha256 ids stored shuffled over a few ingest batches and two sources; some
    items found twice (in both sources, or twice in one), some unlabelled."""
    ids = HAND_MADE + [hashlib.sha256(str(n).encode()).hexdigest() for n in range(60)]
    random.Random(0).shuffle(ids)
    sources = [workspace.catalog.register_source("folder", f"/data/{name}", {}).source_id for name in ("b", "a")]
    run = workspace.runs.start("ingest", "folder", {})
    for start in range(0, len(ids), 25):
        found = []
        for n, item_id in enumerate(ids[start:start + 25], start):
            label = None if n % 7 == 0 else f"c{n % 3}"
            item = Item(item_id, f"/img/{n}.png", label, 4, 4, "RGB", "PNG", 75, license="cc0" if n % 2 else None)
            found.append((item, SourceRef(sources[n % 2], f"{n}.png", item_id, "f", label)))
            if n % 5 == 0:  # found again: in the other source, or under a second name in the same one
                found.append((item, SourceRef(sources[(n // 5) % 2], f"again/{n}.png", item_id, "f", label)))
        workspace.catalog.record_ingest_batch(run.run_id, found, [])
    workspace.runs.finish(run.run_id, RunStatus.COMPLETED)
    return workspace


def test_item_chunks_are_ranges_of_ids_in_id_order(stored: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spill, "ITEM_ROWS", 8)
    monkeypatch.setattr(spill, "ROUTE_ROWS", 20)  # several reads, each routed to several ranges
    chunks = list(item_chunks(stored, ["uri", "license"]))
    rows = stored.connect().execute("SELECT item_id, uri, license FROM items ORDER BY item_id").fetchall()
    assert [chunk.height for chunk in chunks] == [8] * 8 + [6]
    assert [row for chunk in chunks for row in chunk.iter_rows()] == [tuple(row) for row in rows]
    assert all(chunk.columns == ["item_id", "uri", "license"] for chunk in chunks)
    assert list(item_chunks(Workspace.init(stored.root.parent / "empty"), ["uri"])) == []
