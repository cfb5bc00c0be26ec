"""Tables that live on disk: a scratch directory of parquet parts written a batch at a time and read
back as lazy polars frames; batches of a table, and the workspace's items, read in bounded memory.

What a large release is made of (``curate.builders.Release``): a stage that would hold a million
rows writes them to a ``Spill`` part by part and hands on ``spill.scan(name)``. Lazy frames read the
files whenever they are collected, long after the stage returned, so the directory stays until
``close()`` or the end of the process (not when the spill object is dropped). It lives under the
system's temporary directory (``TMPDIR``).

>>> spill = Spill()
>>> for n in range(3):
...     spill.write("rows", pl.DataFrame({"n": [n]}))
>>> spill.scan("rows").collect()["n"].to_list(), row_count(spill.scan("rows"))
([0, 1, 2], 3)
>>> [batch["n"].to_list() for batch in batches(spill.scan("rows"), 2)]
[[0, 1], [2]]
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from curate.workspace import Workspace

Table = pl.DataFrame | pl.LazyFrame
ITEM_ROWS = 32_768  # workspace items a large build or publish holds at a time (``item_chunks``)
ROUTE_ROWS = 131_072  # workspace items read (in storage order) before ``item_chunks`` routes them to their range
READ_ROWS = 65_536  # rows of a lazy table held at a time: read by ``batches``, a row group where one is written


def row_count(table: Table) -> int:
    """Rows of a table, without loading a lazy one."""
    return table.height if isinstance(table, pl.DataFrame) else int(table.select(pl.len()).collect().item())


def batches(table: Table, rows: int) -> Iterator[pl.DataFrame]:
    """A table ``rows`` at a time, in order. A lazy table is collected ``READ_ROWS`` (or ``rows``)
    at a time (a scan of a spill reads only the parts a slice needs); a frame is sliced without
    copying."""
    if isinstance(table, pl.DataFrame):
        yield from table.iter_slices(rows)
        return
    read = max(rows, READ_ROWS)
    for start in range(0, row_count(table), read):
        yield from table.slice(start, read).collect().iter_slices(rows)


def item_chunks(workspace: Workspace, columns: list[str], ranges: pl.Series | None = None) -> Iterator[pl.DataFrame]:
    """The workspace's items (``item_id`` and ``columns``) in ``item_id`` order, ``ITEM_ROWS`` at a
    time (each a range of ids, the last of each range shorter: of ``item_ranges``, only the last
    one): read in the catalogue's storage order, routed to a spill table per range of ids of
    ``item_ranges`` (or ``ranges``, what it gave a caller who routes rows of its own alike), then
    each range sorted once and handed out ``ITEM_ROWS`` at a time (a chunk never spans two
    ranges). Reading through the id index instead fetches each row from a random page: four times
    the time at a million items. A table per chunk would write four times the parts (a part per
    read and table)."""
    bounds = item_ranges(workspace) if ranges is None else ranges
    spill = Spill()
    try:
        route(spill, "items-", workspace.catalog.item_batches(columns=columns, batch_size=8192), "item_id", bounds)
        for number in range(len(bounds)):
            if spill.parts(f"items-{number}"):
                yield from spill.scan(f"items-{number}").collect().sort("item_id").iter_slices(ITEM_ROWS)
    finally:
        spill.close()


def item_ranges(workspace: Workspace) -> pl.Series:
    """The lower bounds of the ranges of ids ``item_chunks`` routes items to and sorts whole, read
    from the id index alone: as many ``ITEM_ROWS`` chunks each as a route holds (``ROUTE_ROWS``; at
    least one chunk), so that sorting a range holds no more than routing it.

    >>> import tempfile
    >>> from curate.workspace import Workspace
    >>> item_ranges(Workspace.init(tempfile.mkdtemp())).to_list()
    []
    """
    return pl.Series(workspace.catalog.item_bounds(max(ROUTE_ROWS // ITEM_ROWS, 1) * ITEM_ROWS), dtype=pl.String)


def route(spill: Spill, prefix: str, frames: Iterable[pl.DataFrame], key: str, bounds: pl.Series) -> None:
    """Append each row of ``frames`` to the spill table ``<prefix><n>`` of the range of sorted
    ``bounds`` its ``key`` falls in (``bounds[n] <= key < bounds[n + 1]``; keys below the first
    bound go with the first range), ``ROUTE_ROWS`` rows at a time (fewer, larger parts than a
    frame at a time).

    >>> spill = Spill()
    >>> route(spill, "part-", [pl.DataFrame({"k": ["b", "a"]}), pl.DataFrame({"k": ["d", "c"]})], "k",
    ...       pl.Series(["a", "c"]))
    >>> [spill.scan(f"part-{n}").collect()["k"].to_list() for n in range(2)]
    [['b', 'a'], ['d', 'c']]
    """
    held: list[pl.DataFrame] = []
    for frame in itertools.chain(frames, [None]):  # None: the end, where what is held goes too
        if frame is not None:
            held.append(frame)
        if held and (frame is None or sum(part.height for part in held) >= ROUTE_ROWS):
            rows = pl.concat(held)
            held = []
            number = (bounds.search_sorted(rows[key], side="right").cast(pl.Int64) - 1).clip(lower_bound=0)
            for (n,), part in rows.with_columns(_range=number).partition_by("_range", as_dict=True).items():
                spill.write(f"{prefix}{n}", part.drop("_range"))


def regroup(frames: Iterable[pl.DataFrame], rows: int) -> Iterator[pl.DataFrame]:
    """The rows of ``frames`` in order, ``rows`` at a time (the last frame shorter).

    >>> [frame["n"].to_list() for frame in regroup([pl.DataFrame({"n": [0, 1, 2]}), pl.DataFrame({"n": [3]})], 2)]
    [[0, 1], [2, 3]]
    """
    held: list[pl.DataFrame] = []
    for frame in frames:
        held.append(frame)
        count = sum(part.height for part in held)
        if count >= rows:
            whole, cut = pl.concat(held), count - count % rows
            yield from whole.slice(0, cut).iter_slices(rows)
            held = [whole.slice(cut)]
    if any(part.height for part in held):
        yield pl.concat(held)


class Spill:
    """A scratch directory of named tables, each a sequence of parquet parts in write order."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="curate-spill-")
        _OPEN.append(self._directory)  # removed at exit (or by ``close``), whoever still reads it
        self.root = Path(self._directory.name)
        self._parts: dict[str, int] = {}

    def write(self, name: str, frame: pl.DataFrame) -> None:
        """Append ``frame`` to the table ``name`` as a new part (an empty frame sets only the schema)."""
        number = self._parts.get(name, 0)
        if number and not frame.height:
            return
        (self.root / name).mkdir(exist_ok=True)
        frame.write_parquet(self.root / name / f"{number:06d}.parquet", compression="lz4", statistics=False)
        self._parts[name] = number + 1

    def parts(self, name: str) -> list[Path]:
        """The parts of ``name`` in write order."""
        return [self.root / name / f"{n:06d}.parquet" for n in range(self._parts.get(name, 0))]

    def scan(self, name: str) -> pl.LazyFrame:
        """The table ``name`` as a lazy frame over its parts, in write order."""
        if name not in self._parts:
            raise KeyError(f"nothing was written to the spill table {name!r}")
        return pl.scan_parquet(self.parts(name), hive_partitioning=False)

    def rows(self, name: str) -> int:
        """Rows written to ``name`` (read from the parts' footers)."""
        return sum(pq.ParquetFile(path).metadata.num_rows for path in self.parts(name))

    def close(self) -> None:
        """Remove the directory now: frames read from it can no longer be collected."""
        self._directory.cleanup()
        _OPEN.remove(self._directory)


_OPEN: list[tempfile.TemporaryDirectory[str]] = []
