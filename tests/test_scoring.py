"""The scoring driver's store: linear in a run's size, the same rows whichever way passes are taken."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import distinct_image

from curate.executors import BatchWorker, Job, ScoredBatch
from curate.executors.local import LocalExecutor
from curate.ingest import FolderSource, ingest
from curate.propose import make_proposer, propose
from curate.propose.base import ProposeContext
from curate.propose.scoring import ImageProposer, score_images
from curate.records import Cue, Evidence
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
