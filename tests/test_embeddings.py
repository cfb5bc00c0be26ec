"""Image embeddings are stored once per model version, and a resumed run loses none of them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow.parquet as pq
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
    _write_parts(workspace, 2000)  # one row group a part, as parts were before (the store rewrites them)
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


def _parts(workspace: Workspace) -> dict[str, tuple[pl.DataFrame, list[int]]]:
    """Each part of model ``probe``'s table: its rows, and the rows of each of its row groups."""
    footers = {path: pq.read_metadata(path) for path in workspace.tables.files(embeddings_table("probe"))}
    return {path.name: (pl.read_parquet(path), [footer.row_group(g).num_rows for g in range(footer.num_row_groups)])
            for path, footer in footers.items()}


def test_parts_written_in_one_row_group_are_rewritten_in_small_ones_once_with_every_vector_kept(
        workspace: Workspace) -> None:
    _write_parts(workspace, 2500)  # parts of 1,024 rows in one row group each, as before row groups were small
    _write_parts(workspace, 30, version="v0")  # another model version's part: rewritten too, never read
    before = _parts(workspace)
    assert sorted(groups for _, groups in before.values()) == [[30], [452], [1024], [1024]]
    store = embeddings.EmbeddingStore(workspace, SimpleNamespace(name="probe", version="v1"), "run")
    after = _parts(workspace)
    assert after.keys() == before.keys()
    for name, (rows, groups) in after.items():
        assert rows.equals(before[name][0])  # every id, vector and version, in the same order
        assert groups == [64] * (rows.height // 64) + ([rows.height % 64] if rows.height % 64 else []), name
    asked = [2499, 3, 1023, 1024, 700, 2048]
    stored = pl.concat(rows for rows, _ in before.values()).filter(pl.col("version") == "v1")
    wanted = np.array([stored.filter(pl.col("item_id") == f"item-{n:06d}")["embedding"].item().to_list()
                       for n in asked], dtype=np.float32)
    assert np.array_equal(store.vectors([_item(f"item-{n:06d}") for n in asked]), wanted)
    assert workspace.tables.regroup(embeddings_table("probe"), embeddings.ROWS_PER_GROUP) == 0  # once only


_KILLED_REGROUPING = """
import os
import sys
from pathlib import Path
from curate.workspace.tables import SideTables

real_replace, renamed = os.replace, []


def killed_before_the_second_rename(source, target):
    renamed.append(target)
    if len(renamed) == 2:
        os._exit(9)  # the second part's new file is written whole, not yet renamed
    real_replace(source, target)


os.replace = killed_before_the_second_rename
SideTables(Path(sys.argv[1])).regroup(sys.argv[2], 64)
"""


def test_a_regrouping_killed_half_way_loses_nothing_and_the_next_store_finishes_it(workspace: Workspace) -> None:
    _write_parts(workspace, 3000)
    before = _parts(workspace)
    table = embeddings_table("probe")
    killed = subprocess.run([sys.executable, "-c", _KILLED_REGROUPING, str(workspace.tables.root), table])
    assert killed.returncode == 9
    halfway = _parts(workspace)  # every part whole: rewritten or as it was
    assert all(rows.equals(before[name][0]) for name, (rows, _) in halfway.items())
    assert [len(groups) for _, groups in halfway.values()] == [16, 1, 1]  # the first part's 1,024 rows only
    assert len(list((workspace.tables.root / table).glob(".*.tmp"))) == 1  # the killed rename's file
    store = embeddings.EmbeddingStore(workspace, SimpleNamespace(name="probe", version="v1"), "run")
    assert all(max(groups) == 64 for _, groups in _parts(workspace).values())
    assert not list((workspace.tables.root / table).glob(".*.tmp"))
    assert store.vectors([_item(f"item-{n:06d}") for n in (2999, 0, 1500)])[:, 0].tolist() == [2999, 0, 1500]


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
