"""Image embeddings stored once per workspace and model version, as a parquet side table.

Parts are named ``<run>-<process>-<n>``: a resumed run (a new process, its counter back at 0) adds
parts beside those of the killed one instead of overwriting them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from curate.executors import image_batches
from curate.models import ClipModel
from curate.records import Item
from curate.workspace import Workspace
from curate.workspace.tables import embeddings_table

FLUSH_EVERY = 1024


class EmbeddingStore:
    """Reads the embeddings a model already computed in this workspace and computes the rest.

    ``part_prefix`` (the run id) starts the name of every part this store writes, followed by a
    token of its own, so no two stores (processes) ever write the same part.
    """

    def __init__(self, workspace: Workspace, clip: ClipModel, part_prefix: str) -> None:
        self.workspace = workspace
        self.clip = clip
        self.table = embeddings_table(clip.name)
        self.part_prefix = f"{part_prefix}-{uuid.uuid4().hex[:12]}"
        self.known: dict[str, np.ndarray] = {}
        self._pending: list[dict[str, object]] = []
        self._parts = 0
        self.computed = 0
        if self.table in workspace.tables.names():
            frame = workspace.tables.scan(self.table).filter(pl.col("version") == clip.version).collect()
            for item_id, vector in zip(frame["item_id"], frame["embedding"], strict=True):
                self.known[item_id] = np.asarray(vector, dtype=np.float32)

    def embed(self, items: Sequence[Item], batch_size: int) -> list[tuple[Item, str]]:
        """Make sure every item whose image opens has its embedding in ``known`` (stored ones are
        not decoded again; the rest are computed, kept and flushed); returns the images that failed."""
        failures: list[tuple[Item, str]] = []
        missing = [item for item in items if item.item_id not in self.known]
        for batch in image_batches(self.workspace, missing, batch_size, self.clip.preprocess_image):
            if batch.items:
                self.remember(batch.items, self.clip.encode_images(torch.stack(batch.transformed)))
            failures += batch.failures
        self.flush()
        return failures

    def remember(self, items: Sequence[Item], vectors: np.ndarray) -> None:
        """Keep fresh embeddings; they are written as a side-table part every ``FLUSH_EVERY``."""
        for item, vector in zip(items, vectors, strict=True):
            self.known[item.item_id] = vector
            self._pending.append({"item_id": item.item_id, "model": self.clip.name, "version": self.clip.version,
                                  "embedding": vector.tolist()})
        self.computed += len(items)
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write the embeddings computed since the last flush as one part of the side table."""
        if not self._pending:
            return
        frame = pl.DataFrame(self._pending, schema={"item_id": pl.String, "model": pl.String, "version": pl.String,
                                                    "embedding": pl.List(pl.Float32)})
        self.workspace.tables.write(self.table, frame, part=f"{self.part_prefix}-{self._parts:05d}")
        self._parts += 1
        self._pending.clear()
