"""Parquet side tables: bulk exports and large arrays (embeddings) beside the SQLite catalogue.

A table is ``tables/NAME.parquet``, or a folder ``tables/NAME/`` of parts written one at a time
(for results that stream in). Every file is written to a temporary name and renamed, so a crash
never leaves half a file under a table's name.
"""

from __future__ import annotations

import fcntl
import io
import re
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from curate.progress import progress_bar
from curate.workspace._sql import atomic_write_bytes, remove_orphaned_temporaries
from curate.workspace.faults import DamagedFileError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def embeddings_table(model_name: str) -> str:
    """The side table holding a model's image embeddings.

    >>> embeddings_table("clip-vit-b-32")
    'image-embeddings.clip-vit-b-32'
    """
    return "image-embeddings." + re.sub(r"[^a-z0-9_-]+", "-", model_name.lower())


class SideTables:
    """Write, read and list the parquet side tables of a workspace.

    >>> import tempfile, polars as pl
    >>> tables = SideTables(Path(tempfile.mkdtemp()))
    >>> _ = tables.write("scores", pl.DataFrame({"item_id": ["a"], "score": [0.5]}))
    >>> tables.read("scores").shape
    (1, 2)
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, name: str, frame: pl.DataFrame, part: str | None = None, row_group_size: int | None = None
              ) -> Path:
        """Write a whole table, or one ``part`` of a partitioned table (in row groups of ``row_group_size``
        rows, for readers of a few rows); return the file."""
        self._check(name)
        if part is None:
            target = self.root / f"{name}.parquet"
        else:
            self._check(part)
            target = self.root / name / f"{part}.parquet"
        buffer = io.BytesIO()
        frame.write_parquet(buffer, row_group_size=row_group_size)
        atomic_write_bytes(target, buffer.getvalue())
        return target

    def scan(self, name: str, part: str | None = None) -> pl.LazyFrame:
        """A lazy view of a table (all parts of a partitioned one, or only ``part``: parts written by
        different code versions may not share one schema)."""
        self._check(name)
        if part is not None:
            self._check(part)
            path = self.root / name / f"{part}.parquet"
            if not path.is_file():
                raise KeyError(f"no part {part!r} of side table {name!r} in {self.root}")
            return pl.scan_parquet(path)
        return pl.scan_parquet(self.files(name))

    def files(self, name: str) -> list[Path]:
        """The files of a table: the one file, or every part in name order (each checked whole)."""
        self._check(name)
        single, folder = self.root / f"{name}.parquet", self.root / name
        files = [single] if single.exists() else sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if not files:
            raise KeyError(f"no side table {name!r} in {self.root}")
        for path in files:
            _check_whole(path)
        return files

    def read(self, name: str) -> pl.DataFrame:
        """The whole table in memory."""
        return self.scan(name).collect()

    def part(self, name: str, part: str) -> pl.DataFrame | None:
        """One part of a partitioned table, or None when it was never written (or was deleted)."""
        try:
            return self.scan(name, part).collect()
        except KeyError:
            return None

    def regroup(self, name: str, row_group_size: int) -> int:
        """Rewrite the files of a table whose row groups hold more than ``row_group_size`` rows into row
        groups of that size (readers of a few rows then read a few); return how many were rewritten.

        Files already in small groups are left alone, so only the first call does work. Each file is
        written whole to a temporary name and renamed over the old one: rows, their order and their
        values never change, and a process killed half-way leaves every file whole (its temporary
        file is removed by the next call). One process regroups a table at a time (``flock``).

        >>> import tempfile, polars as pl
        >>> tables = SideTables(Path(tempfile.mkdtemp()))
        >>> _ = tables.write("scores", pl.DataFrame({"score": range(100)}), part="old")
        >>> tables.regroup("scores", 64), tables.regroup("scores", 64)
        (1, 0)
        """
        def too_large(path: Path) -> bool:
            footer = pq.read_metadata(path)
            return any(footer.row_group(group).num_rows > row_group_size for group in range(footer.num_row_groups))

        files = self.files(name)
        if not any(too_large(path) for path in files):
            return 0  # nothing to do: no lock taken (a table others only read stays theirs to read)
        with (self.root / f".{name}.regroup.lock").open("wb") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when closed, or when a killed holder dies
            remove_orphaned_temporaries(files[0].parent)
            rewritten = 0
            with progress_bar(f"rewriting {name} into row groups of {row_group_size} (once)", len(files)) as advance:
                for path in files:
                    if too_large(path):  # looked at again under the lock: another process may have done it
                        buffer = io.BytesIO()
                        pl.read_parquet(path).write_parquet(buffer, row_group_size=row_group_size)
                        atomic_write_bytes(path, buffer.getvalue())
                        rewritten += 1
                    advance()
        return rewritten

    def names(self) -> list[str]:
        """Names of the tables that exist."""
        if not self.root.exists():
            return []
        found = {p.stem for p in self.root.glob("*.parquet")}
        found |= {p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("*.parquet"))}
        return sorted(found)

    @staticmethod
    def _check(name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"table names use letters, digits, '_', '-' and '.': {name!r}")


_PARQUET_MAGIC = b"PAR1"


def _check_whole(path: Path) -> None:
    """Refuse a parquet file that is not whole (cut short, or not parquet), naming it.

    Only its first and last four bytes are read; polars would otherwise fail later, without the name.
    """
    with path.open("rb") as handle:
        head = handle.read(4)
        size = handle.seek(0, io.SEEK_END)
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    if size < 12 or head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
        raise DamagedFileError(path, f"not a whole parquet file, {size:,} bytes",
                               "delete it and run again the stage that wrote it")
