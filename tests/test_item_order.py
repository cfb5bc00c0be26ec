"""Items read in storage order and put in order afterwards (#12): ``item_chunks`` gives the same id
ranges as a walk through the id index, and an items export the same rows in the same order as the
catalogue's own query, whatever the ids look like (hand-made or sha256) and however they were stored."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from curate import spill
from curate.records import Item, RunStatus, SourceRef
from curate.spill import item_chunks
from curate.workspace import Workspace, catalog
from curate.workspace.export import EXPORT_SCHEMAS, write_rows

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


@pytest.mark.parametrize(("route_rows", "ranges"), [(20, 5), (5, 9)])
def test_item_chunks_are_ranges_of_ids_in_id_order(stored: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                    route_rows: int, ranges: int) -> None:
    """Chunks of 8 cut from ranges of 16 ids (two chunks: what a route of 20 rows holds) or of 8
    (a route of 5 holds less than a chunk), routed a part per range (a read of the 70 items is one
    frame): five parts, not the nine of a table per chunk."""
    monkeypatch.setattr(spill, "ITEM_ROWS", 8)
    monkeypatch.setattr(spill, "ROUTE_ROWS", route_rows)
    written: list[str] = []
    write = spill.Spill.write

    def counted(self: spill.Spill, name: str, frame: pl.DataFrame) -> None:
        written.append(name)
        write(self, name, frame)

    monkeypatch.setattr(spill.Spill, "write", counted)
    chunks = list(item_chunks(stored, ["uri", "license"]))
    assert len(written) == len(set(written)) == ranges
    rows = stored.connect().execute("SELECT item_id, uri, license FROM items ORDER BY item_id").fetchall()
    assert [chunk.height for chunk in chunks] == [8] * 8 + [6]
    assert [row for chunk in chunks for row in chunk.iter_rows()] == [tuple(row) for row in rows]
    assert all(chunk.columns == ["item_id", "uri", "license"] for chunk in chunks)
    assert list(item_chunks(Workspace.init(stored.root.parent / "empty"), ["uri"])) == []


_ORACLE = ("SELECT i.*, (SELECT s.source_id || ':' || s.locator FROM item_sources s WHERE s.item_id = i.item_id "
           "ORDER BY s.source_id, s.locator LIMIT 1) AS first_source, (SELECT COUNT(*) FROM item_sources s "
           "WHERE s.item_id = i.item_id) AS n_sources FROM items i {where} ORDER BY i.rowid")


@pytest.mark.parametrize("filters", [{}, {"label": "c1"}, {"label": "none of them"}])
def test_an_items_export_is_the_catalogue_query_byte_for_byte(stored: Workspace, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              filters: dict[str, str]) -> None:
    """Each item's first source and number of sources are what looking them up through the index
    gave, in storage order, with rowid gaps (deleted items) and items left without a source."""
    with stored.transaction() as conn:
        rows = conn.execute("SELECT item_id FROM items ORDER BY rowid").fetchall()
        conn.execute("DELETE FROM item_sources WHERE item_id IN (?, ?)", (rows[3][0], rows[40][0]))  # no source
        for (item_id,) in rows[10:14] + rows[50:51]:  # gaps in the rowids
            conn.execute("DELETE FROM item_sources WHERE item_id = ?", (item_id,))
            conn.execute("DELETE FROM items WHERE item_id = ?", (item_id,))
    monkeypatch.setattr(catalog, "EXPORT_RANGE", 16)  # several ranges of ids and of rowids,
    monkeypatch.setattr(catalog, "READ_RANGE", 5)  # reads within them,
    monkeypatch.setattr(spill, "ROUTE_ROWS", 20)  # and routes
    where = " AND ".join(f"i.{column} = ?" for column in filters)
    oracle = stored.connect().execute(_ORACLE.format(where=f"WHERE {where}" if where else ""),
                                      list(filters.values())).fetchall()
    if not filters:  # what the export is tried on
        assert len(oracle) == 65 and [row["n_sources"] for row in oracle].count(0) == 2
    for suffix in (".parquet", ".csv"):
        expected, written = tmp_path / f"expected{suffix}", tmp_path / f"written{suffix}"
        write_rows(expected, EXPORT_SCHEMAS["items"], [[dict(row) for row in oracle]] if oracle else [])
        assert stored.export("items", written, **filters) == len(oracle)
        assert written.read_bytes() == expected.read_bytes()
    if not filters:
        assert [frame.height for frame in stored.catalog.item_export(batch_size=7)] == [7] * 9 + [2]
        assert pq.ParquetFile(written.with_suffix(".parquet")).metadata.num_row_groups == 1
