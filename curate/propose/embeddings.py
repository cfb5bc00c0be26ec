"""Image embeddings stored once per workspace and model version, as a parquet side table.

Parts are named ``<run>-<process>-<n>``: a resumed run (a new process, its counter back at 0) adds
parts beside those of the killed one instead of overwriting them.

A store never holds the table: it keeps a directory of where each stored embedding is (16 bytes an
image) and reads the row groups a batch asks for (``ROWS_PER_GROUP`` embeddings each), keeping the last
ones read up to ``CACHE_BYTES``. Parts written before row groups were small (one group of 1,024) are
rewritten in small groups, once, when a store first opens the table.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch

from curate.executors import image_batches
from curate.models import ClipModel
from curate.records import Item
from curate.workspace import Workspace
from curate.workspace.tables import embeddings_table

FLUSH_EVERY = 1024
ROWS_PER_GROUP = 64
"""Embeddings a part stores per parquet row group: what a lookup of one scattered image reads."""
CACHE_BYTES = 1 << 30
"""How many bytes of row groups read from disk a store keeps for the next batches (the least recently
used go): a workspace of up to 500k ViT-B embeddings is read once however its images are visited
(a negative pool visits them in id order, not in the order they were written)."""
_MERGE_EVERY = 1 << 16


def _key(item_id: str) -> int:
    """A 64-bit key of an item id (that two of a million ids share one: a chance of about 3 in 10^8).

    >>> _key("a") == _key("a") != _key("b")
    True
    """
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


class _Directory:
    """Where each stored embedding is: an item's key -> its place (part number << 32 | row), in two
    sorted arrays plus a dict of the places added since they were last merged."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)
        self.places = np.empty(0, dtype=np.int64)
        self.recent: dict[int, int] = {}

    @classmethod
    def of_parts(cls, parts: Iterable[tuple[Sequence[str], np.ndarray]]) -> _Directory:
        """The directory of stored parts, each given as (item ids, their rows), numbered in order."""
        keys, places = [], []
        for part, (item_ids, rows) in enumerate(parts):
            keys.append(np.fromiter((_key(item_id) for item_id in item_ids), np.uint64, len(item_ids)))
            places.append(np.int64(part) << 32 | rows.astype(np.int64))
        directory = cls()
        directory.merge(keys, places)
        return directory

    def add(self, part: int, item_ids: Iterable[str]) -> None:
        """Record that rows 0, 1, ... of ``part`` hold the embeddings of ``item_ids``."""
        self.recent.update((_key(item_id), part << 32 | row) for row, item_id in enumerate(item_ids))
        if len(self.recent) >= _MERGE_EVERY:
            self.merge()

    def merge(self, keys: list[np.ndarray] | None = None, places: list[np.ndarray] | None = None) -> None:
        """Move the recent places, and any ``keys`` at ``places`` given, into the sorted arrays."""
        keys = [self.keys, np.fromiter(self.recent.keys(), np.uint64, len(self.recent)), *(keys or [])]
        places = [self.places, np.fromiter(self.recent.values(), np.int64, len(self.recent)), *(places or [])]
        merged_keys = np.concatenate(keys)
        order = np.argsort(merged_keys, kind="stable")
        self.keys, self.places = merged_keys[order], np.concatenate(places)[order]
        self.recent.clear()

    def find(self, item_id: str) -> int | None:
        """The place of an item's embedding, or None when none is stored."""
        key = _key(item_id)
        if key in self.recent:
            return self.recent[key]
        wanted = np.uint64(key)
        at = int(np.searchsorted(self.keys, wanted))
        return int(self.places[at]) if at < len(self.keys) and self.keys[at] == wanted else None


class EmbeddingStore:
    """Looks up the embeddings a model already computed in this workspace and computes the rest.

    ``part_prefix`` (the run id) starts the name of every part this store writes, followed by a
    token of its own, so no two stores (processes) ever write the same part. Of the table only the
    directory grows with it (16 bytes an image: 16 MB for a million); beyond that a store holds the
    row groups cached for the next batches and the embeddings not flushed yet.
    """

    def __init__(self, workspace: Workspace, clip: ClipModel, part_prefix: str) -> None:
        self.workspace = workspace
        self.clip = clip
        self.table = embeddings_table(clip.name)
        self.part_prefix = f"{part_prefix}-{uuid.uuid4().hex[:12]}"
        self._files: list[Path] = []
        if self.table in workspace.tables.names():
            workspace.tables.regroup(self.table, ROWS_PER_GROUP)  # old parts: a scattered lookup read 1,024 rows
            self._files = workspace.tables.files(self.table)
        self._directory = _Directory.of_parts(self._stored_rows(path) for path in self._files)
        self._group_starts: dict[int, np.ndarray] = {}  # part -> the first row of each of its row groups
        self._cache: OrderedDict[tuple[int, int], tuple[list[str], np.ndarray]] = OrderedDict()
        self._cached_bytes = 0
        self._pending: dict[str, np.ndarray] = {}
        self._parts = 0
        self.computed = 0

    def _stored_rows(self, path: Path) -> tuple[Sequence[str], np.ndarray]:
        """The item ids in one part with this model version's embedding, and their rows."""
        ids = pl.read_parquet(path, columns=["item_id", "version"]).with_row_index("row").filter(
            pl.col("version") == self.clip.version)
        return ids["item_id"].to_list(), ids["row"].to_numpy()

    def has(self, item_id: str) -> bool:
        """Whether this model version's embedding of the item is stored (or computed by this store)."""
        return item_id in self._pending or self._directory.find(item_id) is not None

    def vectors(self, items: Sequence[Item]) -> np.ndarray:
        """The (N, D) embeddings of ``items``, in order; each must be stored (see ``has``)."""
        found = {position: self._pending[item.item_id] for position, item in enumerate(items)
                 if item.item_id in self._pending}
        places: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (part, group) -> (position in items, row)
        for position, item in enumerate(items):
            if position not in found:
                place = self._directory.find(item.item_id)
                if place is None:
                    raise KeyError(f"no stored {self.clip.name} embedding of item {item.item_id}")
                part, row = place >> 32, place & 0xFFFFFFFF
                starts = self._starts(part)
                group = int(np.searchsorted(starts, row, side="right")) - 1
                places.setdefault((part, group), []).append((position, row - int(starts[group])))
        for (part, group), wanted in places.items():
            ids, matrix = self._group(part, group)
            for position, row in wanted:
                if ids[row] != items[position].item_id:  # two ids with one key: never seen, but never wrong
                    raise KeyError(f"the {self.clip.name} embedding of item {items[position].item_id} is "
                                   f"ambiguous in {self._files[part].name}; delete the table to compute it again")
                found[position] = matrix[row]
        return np.stack([found[position] for position in range(len(items))]) if items else np.empty((0, 0))

    def _starts(self, part: int) -> np.ndarray:
        """The first row of each row group of a part (read from its footer once)."""
        if part not in self._group_starts:
            footer = pq.read_metadata(self._files[part])
            sizes = [footer.row_group(group).num_rows for group in range(footer.num_row_groups)]
            self._group_starts[part] = np.cumsum([0, *sizes[:-1]])
        return self._group_starts[part]

    def _group(self, part: int, group: int) -> tuple[list[str], np.ndarray]:
        """The item ids and (rows, D) embeddings of one row group of a part, from the cache or read."""
        if (part, group) in self._cache:
            self._cache.move_to_end((part, group))
            return self._cache[part, group]
        rows = pq.ParquetFile(self._files[part]).read_row_group(group, columns=["item_id", "embedding"])
        embeddings = rows.column("embedding").combine_chunks()
        matrix = embeddings.flatten().to_numpy().astype(np.float32, copy=False).reshape(len(embeddings), -1)
        return self._remember(part, group, rows.column("item_id").to_pylist(), matrix)

    def _remember(self, part: int, group: int, ids: list[str], matrix: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Cache a row group's ids and embeddings, dropping the least recently used beyond ``CACHE_BYTES``."""
        self._cache[part, group] = (ids, matrix)
        self._cached_bytes += matrix.nbytes
        while len(self._cache) > 1 and self._cached_bytes > CACHE_BYTES:
            self._cached_bytes -= self._cache.popitem(last=False)[1][1].nbytes
        return ids, matrix

    def embed(self, items: Sequence[Item], batch_size: int) -> list[tuple[Item, str]]:
        """Make sure every item whose image opens has its embedding stored (stored ones are not
        decoded again; the rest are computed and flushed); returns the images that failed."""
        failures: list[tuple[Item, str]] = []
        missing = [item for item in items if not self.has(item.item_id)]
        for batch in image_batches(self.workspace, missing, batch_size, self.clip.preprocess_image):
            if batch.items:
                self.remember(batch.items, self.clip.encode_images(torch.stack(batch.transformed)))
            failures += batch.failures
        self.flush()
        return failures

    def remember(self, items: Sequence[Item], vectors: np.ndarray) -> None:
        """Keep fresh embeddings; they are written as a side-table part every ``FLUSH_EVERY``."""
        for item, vector in zip(items, vectors, strict=True):
            self._pending[item.item_id] = vector
        self.computed += len(items)
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write the embeddings computed since the last flush as one part of the side table."""
        if not self._pending:
            return
        frame = pl.DataFrame({"item_id": list(self._pending), "model": self.clip.name, "version": self.clip.version,
                              "embedding": [v.tolist() for v in self._pending.values()]},
                             schema={"item_id": pl.String, "model": pl.String, "version": pl.String,
                                     "embedding": pl.List(pl.Float32)})
        path = self.workspace.tables.write(self.table, frame, part=f"{self.part_prefix}-{self._parts:05d}",
                                           row_group_size=ROWS_PER_GROUP)
        part, ids, matrix = len(self._files), list(self._pending), np.stack(list(self._pending.values()))
        self._directory.add(part, ids)
        self._files.append(path)
        starts = self._starts(part)
        for group, (start, end) in enumerate(zip(starts, [*starts[1:], len(ids)], strict=True)):
            self._remember(part, group, ids[start:end], matrix[start:end])  # kept for the batches that asked
        self._parts += 1
        self._pending.clear()
