"""Image embeddings are stored once per model version, and a resumed run loses none of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from conftest import distinct_image
from peak_memory import needs_proc, peak_growths_kib

from curate.ingest import FolderSource, ingest
from curate.propose import embeddings, make_proposer, propose
from curate.propose.base import ProposeContext
from curate.records import Item
from curate.workspace import Workspace
from curate.workspace.tables import embeddings_table


@pytest.fixture
def animals(workspace: Workspace, tmp_path: Path) -> Workspace:
    for label, seeds in (("cat", [1, 2, 3]), ("dog", [4, 5])):
        (tmp_path / "animals" / label).mkdir(parents=True)
        for seed in seeds:
            distinct_image(seed, (48, 40)).save(tmp_path / "animals" / label / f"{seed}.png")
    ingest(workspace, FolderSource(tmp_path / "animals"), progress=False)
    propose(workspace, make_proposer("priors", types=("Background",)), progress=False)
    return workspace


def test_a_resumed_clip_run_keeps_the_embeddings_of_the_killed_one(animals: Workspace, tiny_clip: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "FLUSH_EVERY", 2)
    monkeypatch.setattr(embeddings, "ROWS_PER_GROUP", 2)  # a part per two images
    real_write: Callable[..., None] = ProposeContext.write_evidence
    writes = {"n": 0}

    def killed_at_the_second_batch(self: ProposeContext, rows: list, **counts: int) -> None:
        real_write(self, rows, **counts)
        writes["n"] += 1
        if writes["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ProposeContext, "write_evidence", killed_at_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        propose(animals, make_proposer("clip", model=tiny_clip, batch_size=2), progress=False)
    table = embeddings_table(tiny_clip)
    before_kill = set(animals.tables.read(table)["item_id"])
    assert len(before_kill) == 2  # the first cat batch's part; the second batch died unflushed
    monkeypatch.setattr(ProposeContext, "write_evidence", real_write)
    resumed = propose(animals, make_proposer("clip", model=tiny_clip, batch_size=2), progress=False)
    assert resumed.run.attempts == 2 and resumed.counts["embeddings_computed"] == 2  # the dogs
    dogs = {item.item_id for item in animals.catalog.items(label="dog")}
    assert set(animals.tables.read(table)["item_id"]) == before_kill | dogs  # no part overwritten
    other = propose(animals, make_proposer("clip", model=tiny_clip, templates=("a photo of {attribute}.",)),
                    progress=False)
    assert other.counts["embeddings_computed"] == 1  # only the one the killed process never stored


def _write_parts(workspace: Workspace, stored: int, version: str = "v1", width: int = 64,
                 row_group_size: int | None = None) -> None:
    """``stored`` embeddings of model ``probe`` in parts of 1,024: item ``n``'s first value is ``n``."""
    rng = np.random.default_rng(stored)
    for start in range(0, stored, 1024):
        numbers = np.arange(start, min(start + 1024, stored))
        vectors = rng.random((len(numbers), width), dtype=np.float32)
        vectors[:, 0] = numbers
        workspace.tables.write(embeddings_table("probe"), pl.DataFrame(
            {"item_id": [f"item-{n:06d}" for n in numbers], "model": "probe", "version": version,
             "embedding": vectors.tolist()}, schema={"item_id": pl.String, "model": pl.String, "version": pl.String,
                                                     "embedding": pl.List(pl.Float32)}),
            part=f"run-{version}-{stored}-{start:06d}", row_group_size=row_group_size)


def _item(item_id: str) -> Item:
    return Item(item_id, "", None, 1, 1, "RGB", "PNG", 0)


def test_the_store_finds_its_versions_embeddings_across_parts_and_its_own_before_and_after_writing(
        workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "CACHE_BYTES", 1)  # one row group held at a time: the others are read again
    _write_parts(workspace, 2000)  # one row group a part, as before parts had small ones
    _write_parts(workspace, 3000, row_group_size=100)  # the same first 2,000 again, and 1,000 more
    _write_parts(workspace, 10, version="v0")  # another version of the model: not this store's
    store = embeddings.EmbeddingStore(workspace, SimpleNamespace(name="probe", version="v1"), "run")
    asked = [_item(f"item-{n:06d}") for n in (2999, 5, 1024, 6, 2048)]
    assert store.vectors(asked)[:, 0].tolist() == [2999, 5, 1024, 6, 2048]
    assert not store.has("item-003000") and not store.has("nothing")
    monkeypatch.setattr(embeddings, "FLUSH_EVERY", 2)
    monkeypatch.setattr(embeddings, "ROWS_PER_GROUP", 2)
    fresh = np.full((3, 64), 0.5, dtype=np.float32)
    store.remember([_item("new-a")], fresh[:1])  # held, not written yet
    assert store.has("new-a") and store.vectors([_item("new-a"), _item("item-000007")])[:, 0].tolist() == [0.5, 7]
    store.remember([_item("new-b"), _item("new-c")], fresh[1:])  # written with new-a: a part of two row groups
    assert store.computed == 3 and not store._pending
    assert store.vectors([_item("new-c"), _item("item-000001"), _item("new-a")])[:, 0].tolist() == [0.5, 1, 0.5]
    reopened = embeddings.EmbeddingStore(workspace, SimpleNamespace(name="probe", version="v1"), "run")
    assert reopened.has("new-b") and reopened.vectors([_item("new-b")]).tolist() == [[0.5] * 64]
    with pytest.raises(KeyError, match="no stored probe embedding of item nothing"):
        reopened.vectors([_item("nothing")])


_ONE_BATCH = """
from types import SimpleNamespace
from curate.propose.embeddings import EmbeddingStore
from curate.records import Item
from curate.workspace import Workspace


def step(root):
    store = EmbeddingStore(Workspace.open(root), SimpleNamespace(name="probe", version="v1"), "probe")
    batch = [Item(f"item-{n:06d}", "", None, 1, 1, "RGB", "PNG", 0) for n in range(0, 64, 2)]
    return str(int(store.vectors(batch)[:, 0].sum()))
"""


@needs_proc
def test_the_store_holds_what_a_batch_asks_for_not_the_whole_table(tmp_path: Path) -> None:
    """4,000 vs 40,000 stored embeddings of 64 floats, one batch of 32 asked for: holding every stored
    embedding would be about 25 MB more; the store reads the batch's row groups, so the peak rises by
    about as much for both (a few MB at most)."""
    roots = []
    for stored in (2_000, 4_000, 40_000):  # the first warms up (imports, thread pools), once
        workspace = Workspace.init(tmp_path / f"ws{stored}")
        _write_parts(workspace, stored)
        roots.append(str(workspace.root))
    _, (small, small_growth), (large, large_growth) = peak_growths_kib(_ONE_BATCH, *roots)
    assert small == large == str(sum(range(0, 64, 2)))
    assert large_growth - small_growth < 6 * 1024, f"the peak rose by {small_growth} KiB, then {large_growth} KiB"
