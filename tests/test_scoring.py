"""The scoring driver: its store linear in a run's size, the same rows whichever way passes are
taken; its passes made of ids (memory flat in the workspace's size) and fixed negative samples."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import distinct_image
from peak_memory import needs_proc, peak_growths_kib

from curate.executors import BatchWorker, Job, ScoredBatch
from curate.executors.local import LocalExecutor
from curate.ingest import FolderSource, ingest
from curate.propose import make_proposer, propose
from curate.propose.base import ProposeContext
from curate.propose.scoring import ImageProposer, negative_pool, score_images
from curate.records import Cue, Evidence, Item, RunStatus, SourceRef
from curate.workspace import Workspace
from curate.workspace.evidence import EvidenceStore

# "ball" and "grass" are listed by two classes: their pairs are wanted by more than one pass
CUES = {"dog": ["leash", "ball", "grass"], "cat": ["yarn", "ball"], "cow": ["grass", "bell"]}


def _pool(root: Path, images: Path, per_class: int) -> Workspace:
    """A workspace of ``per_class`` images of each class of ``CUES`` (the same images for every root)."""
    for offset, label in enumerate(CUES):
        (images / label).mkdir(parents=True, exist_ok=True)
        for seed in range(100 * offset, 100 * offset + per_class):
            if not (images / label / f"{seed}.png").exists():
                distinct_image(seed, (32, 32)).save(images / label / f"{seed}.png")
    workspace = Workspace.init(root)
    ingest(workspace, FolderSource(images), progress=False)
    _cues(workspace, CUES)
    return workspace


def _cues(workspace: Workspace, cues: dict[str, list[str]]) -> None:
    workspace.catalog.add_cues([Cue(label, attribute, "llm", "propose-llm", "Co-occurring Objects")
                                for label, attributes in cues.items() for attribute in attributes])


def _rows(workspace: Workspace) -> list[tuple[object, ...]]:
    return sorted((r.item_id, r.attribute, r.score, r.model_version, sorted(r.extra.items()))
                  for r in workspace.catalog.evidence(source="clip"))


def test_storing_a_batch_reads_none_of_the_runs_evidence(tmp_path: Path, tiny_clip: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The evidence a run stored is read once per proposal, not once per stored batch (which made a
    run quadratic in its size): a run of one-image batches reads it as often as one of big ones."""
    reads: list[dict[str, Any]] = []
    scan = EvidenceStore.scan

    def counted(self: EvidenceStore, **filters: Any) -> Any:
        reads.append(filters)
        return scan(self, **filters)

    monkeypatch.setattr(EvidenceStore, "scan", counted)
    rows: dict[int, set[tuple[str, str, str | None]]] = {}
    scans: dict[int, int] = {}
    for batch_size in (1, 32):
        workspace = _pool(tmp_path / f"ws-{batch_size}", tmp_path / "images", per_class=4)
        reads.clear()
        propose(workspace, make_proposer("clip", model=tiny_clip, batch_size=batch_size), progress=False)
        rows[batch_size] = {(r.item_id, r.attribute, r.extra.get("negative_of"))
                            for r in workspace.catalog.evidence(source="clip")}
        scans[batch_size] = len(reads)
    assert rows[1] == rows[32] and len(rows[1]) == 12 * 5  # every image, every attribute some class lists, once
    assert scans[1] == scans[32] <= 4, scans  # 36 batches of one image against 6 passes of all their images


class AllAtOnce(LocalExecutor):
    """The local executor taking every pass before storing anything, as the Ray executor does."""

    def run(self, workspace: Workspace, jobs: Iterable[Job], batch_size: int,
            make_worker: Callable[[], BatchWorker]) -> Iterator[ScoredBatch]:
        return super().run(workspace, list(jobs), batch_size, make_worker)


def _propose_at_once(workspace: Workspace, proposer: ImageProposer) -> dict[str, int]:
    with workspace.runs.track("propose", proposer.name, {"proposer": proposer.name, "options": proposer.options(),
                                                         "classes": None}, extend_completed=True) as run:
        context = ProposeContext(workspace, run, None, progress=False)
        score_images(context, proposer.scorers, proposer.passes(context), proposer.batch_size, proposer.name,
                     AllAtOnce())
    return dict(context.counts)


@pytest.mark.parametrize("negatives", [None, 2])
def test_passes_taken_at_once_store_the_rows_of_passes_taken_in_turn(tmp_path: Path, tiny_clip: str,
                                                                    negatives: int | None) -> None:
    """A pair two passes want (a cue another class lists; overlapping negative pools) is stored once,
    by the first pass, whether a pass is made after the one before it is stored or all are made
    first; the same holds for a re-run that adds cues and for a pair a model's older version stored."""
    clip = make_proposer("clip", model=tiny_clip, batch_size=3, negatives=negatives)
    assert isinstance(clip, ImageProposer)
    in_turn, at_once = (_pool(tmp_path / name, tmp_path / "images", per_class=3) for name in ("turn", "once"))
    counts = propose(in_turn, clip, progress=False).counts
    assert _propose_at_once(at_once, clip) == counts
    assert _rows(at_once) == _rows(in_turn)
    _assert_each_pair_stored_once_on_its_own_terms(in_turn, counts, CUES)

    for workspace in (in_turn, at_once):
        _cues(workspace, {"cat": ["grass", "bell"], "cow": ["yarn"]})  # now shared by more classes
        stale = workspace.catalog.evidence(source="clip")[0]
        workspace.catalog.add_evidence([Evidence(stale.item_id, stale.attribute, stale.source, stale.run_id,
                                                 stale.role, stale.taxonomy_type, 0.5, [], stale.model, "old",
                                                 stale.extra)])
    counts = propose(in_turn, clip, progress=False).counts
    assert counts["evidence"] > 0 and _propose_at_once(at_once, clip) == counts
    rows = _rows(in_turn)
    assert rows == _rows(at_once) and len({row[:2] for row in rows}) == len(rows)
    assert "old" not in {row[3] for row in rows}
    # pairs first stored for another class's pool are stored again on the terms of the class now listing them
    labels = {item.item_id: item.label for item in in_turn.catalog.items()}
    lists = {"dog": {"leash", "ball", "grass"}, "cat": {"yarn", "ball", "grass", "bell"},
             "cow": {"grass", "bell", "yarn"}}
    assert all(("negative_of" in r.extra) == (r.attribute not in lists[str(labels[r.item_id])])
               for r in in_turn.catalog.evidence(source="clip"))


def _assert_each_pair_stored_once_on_its_own_terms(workspace: Workspace, counts: dict[str, int],
                                                   lists: dict[str, list[str]]) -> None:
    """Every (image, attribute) stored by one pass only (the run counted each row once), on its own
    class's terms where its class lists the attribute (else marked with the class it was scored for)."""
    rows = workspace.catalog.evidence(source="clip")
    labels = {item.item_id: item.label for item in workspace.catalog.items()}
    assert counts["evidence"] == len(rows) == len({(r.item_id, r.attribute) for r in rows})
    assert all(("negative_of" in r.extra) == (r.attribute not in lists[str(labels[r.item_id])]) for r in rows)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _labelled(classes: int, per_class: int) -> pl.DataFrame:
    """Item ids as ingest makes them (sha256 digests) and labels, in id order."""
    rows = sorted((_sha(f"{c}-{n}"), f"class{c}") for c in range(classes) for n in range(per_class))
    return pl.DataFrame(rows, schema={"item_id": pl.String, "label": pl.String}, orient="row")


def test_a_capped_negative_pool_is_a_fixed_uniform_sample_that_differs_by_class() -> None:
    """The pool is the documented key, plain integers of sha256 digests (the same on every machine and
    polars version): each image's first 15 hex digits XOR its class's, smallest first, ties by id."""
    items = _labelled(classes=10, per_class=500)
    pools = {f"class{c}": negative_pool(items, f"class{c}", 900) for c in range(10)}
    labels = dict(items.iter_rows())
    for label, pool in pools.items():
        others = [i for i in items["item_id"] if labels[i] != label]
        expected = sorted(others, key=lambda i, label=label: (int(i[:15], 16) ^ int(_sha(label)[:15], 16), i))[:900]
        assert pool.to_list() == sorted(expected) and pool.is_unique().all()
        assert pool.equals(negative_pool(items.reverse(), label, 900))  # the same sample whatever the order
        # about 100 of each other class's 500 images (4 standard deviations apart), none of its own
        taken = Counter(labels[i] for i in pool)
        assert label not in taken and len(taken) == 9 and all(60 <= n <= 140 for n in taken.values()), taken
    assert len({tuple(pool) for pool in pools.values()}) == 10
    overlap = len(set(pools["class0"]) & set(pools["class1"]))
    assert overlap < 900 * 0.5, overlap  # two classes' samples share about as much as random ones (180 expected)
    # every image of the class, uncapped or capped at as many or more
    assert negative_pool(items, "class0", None).len() == negative_pool(items, "class0", 4500).len() == 4500
    assert negative_pool(items, "class0", 0).len() == 0


def test_a_negative_pool_of_hand_made_ids_is_fixed_too() -> None:
    """Ids that are not sha256 digests take the first 15 hex digits of their own sha256."""
    items = pl.DataFrame({"item_id": [f"i{n}" for n in range(40)] + ["a1"], "label": ["dog", "cat"] * 20 + [None]})
    pool = negative_pool(items, "dog", 5).to_list()
    cats = [f"i{n}" for n in range(1, 40, 2)]
    assert pool == sorted(sorted(cats, key=lambda i: int(_sha(i)[:15], 16) ^ int(_sha("dog")[:15], 16))[:5])


_PROPOSAL = """
from curate.executors import ImageBatch
from curate.propose.base import ProposeContext
from curate.propose.scoring import ImageScorer, class_passes, score_images
from curate.records import Evidence
from curate.workspace import Workspace


class Constant(ImageScorer):
    def needs_image(self, item):
        return False

    def begin_class(self, context, label, targets, own=True):
        self.targets = targets

    def score(self, context, batch):
        return [Evidence(i.item_id, t.attribute, "constant", context.run.run_id, score=0.5)
                for i in batch.items for t in self.targets]


def step(root):
    workspace = Workspace.open(root)
    with workspace.runs.track("propose", "constant", {"proposer": "constant"}) as run:
        context = ProposeContext(workspace, run, None, progress=False)
        score_images(context, lambda context: [Constant()], class_passes(context, "llm", 10), 1000, "constant")
    return f"{context.counts['items']}+{context.counts['negative_items']}"
"""


def _items(root: Path, n_items: int, classes: int = 10) -> str:
    """A workspace of ``n_items`` labelled items (ingest's records, no files) and one cue per class."""
    workspace = Workspace.init(root)
    source = workspace.catalog.register_source("folder", str(root), {})
    run = workspace.runs.start("ingest", "test", {"n": n_items})
    for start in range(0, n_items, 10_000):
        ids = [(n, _sha(str(n))) for n in range(start, min(n_items, start + 10_000))]
        workspace.catalog.record_ingest_batch(run.run_id, [
            (Item(item_id, f"/images/class{n % classes}/{n}.png", f"class{n % classes}", 4, 4, "RGB", "PNG", 75),
             SourceRef(source.source_id, f"{n}.png", item_id, "f", f"class{n % classes}")) for n, item_id in ids], [])
    workspace.runs.finish(run.run_id, RunStatus.COMPLETED)
    workspace.catalog.add_cues([Cue(f"class{c}", f"cue {c}", "llm", "test") for c in range(classes)])
    return str(workspace.root)


@needs_proc
def test_a_proposals_passes_hold_ids_not_records(tmp_path: Path) -> None:
    """A proposal makes records of the images a batch needs, not of the whole workspace: scoring 50k
    images (each class's own, and 10 of other classes for each) raises the peak by a few MB more than
    scoring 5k (the ids and labels it reads, about 100 bytes an image). Holding every image as an
    ``Item`` (with a copy per class's pool) rose by about 28 MB more."""
    roots = [_items(tmp_path / f"ws{n}", n) for n in (2_000, 5_000, 50_000)]  # the first warms up, once
    _, (small, small_growth), (large, large_growth) = peak_growths_kib(_PROPOSAL, *roots)
    assert (small, large) == ("5000+100", "50000+100")
    assert large_growth - small_growth < 15 * 1024, f"the peak rose by {small_growth} KiB, then {large_growth} KiB"
