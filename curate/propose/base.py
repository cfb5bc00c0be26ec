"""Proposers: the registry, the context they run in, and the run that records them.

A proposer converts its model's output into ``Cue`` (per class) or ``Evidence`` (per item) rows at
its own edge; nothing downstream knows the model. Adding one is a module with one
``@register_proposer`` dataclass whose fields are its options.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import polars as pl

from curate.records import Cue, Evidence, Run, RunStatus
from curate.registry import Registry
from curate.workspace import Workspace


class ProposeError(ValueError):
    """A proposer cannot run as asked (unknown name, bad option, nothing to score)."""


@dataclass
class ProposeContext:
    """What a proposer sees: the workspace, its run, the classes asked for, and writers that store
    rows together with the run's counts (one transaction per batch). Proposers note the models they
    load in ``models`` (name -> version); the run records them, and ``failed_requests`` (requests
    that failed and a re-run would retry): the run then ends ``completed_with_failures``."""

    workspace: Workspace
    run: Run
    classes: tuple[str, ...] | None
    progress: bool = True
    counts: Counter[str] = field(default_factory=Counter)
    models: dict[str, str] = field(default_factory=dict)
    failed_requests: int = 0
    _done: pl.Series | None = field(default=None, repr=False)

    def class_labels(self) -> list[str]:
        """The classes to work on: those asked for, else every labelled class in the workspace."""
        present = self.workspace.catalog.labels()
        if self.classes is None:
            return present
        missing = sorted(set(self.classes) - set(present))
        if missing:
            raise ProposeError(f"no items of class {', '.join(missing)}; classes here: {', '.join(present)}")
        return list(self.classes)

    def pending_classes(self) -> list[str]:
        """Classes with no cues from this run yet (what a class-level proposer still has to do)."""
        done = {cue.class_label for cue in self.workspace.catalog.cues(run_id=self.run.run_id)}
        return [label for label in self.class_labels() if label not in done]

    def pending_items(self, label: str | None = None) -> pl.Series:
        """The ids of items (of a class, or all) with no evidence from this run yet, in id order: a
        resumed run skips the rest.

        What is done is read once, when first asked: items written since belong to classes this
        invocation has already finished.
        """
        if self._done is None:
            self._done = self.workspace.catalog.evidence_scan(run_id=self.run.run_id).select(
                pl.col("item_id").unique()).collect()["item_id"]
        ids = self.workspace.catalog.items_frame(label=label, columns=["item_id"])["item_id"]
        return ids.filter(~ids.is_in(self._done.implode()))

    def write_evidence(self, rows: Sequence[Evidence], **counts: int) -> None:
        """Store a batch of evidence and count it (plus any extra counts) in this run."""
        added = _nonzero({"evidence": len(rows), **counts})
        self.workspace.catalog.add_evidence(rows, (self.run.run_id, added))
        self.counts.update(added)

    def write_cues(self, rows: Sequence[Cue], **counts: int) -> None:
        """Store a batch of class-level cues and count them in this run."""
        added = _nonzero({"cues": len(rows), **counts})
        self.workspace.catalog.add_cues(rows, (self.run.run_id, added))
        self.counts.update(added)

    def replace_cues(self, label: str, source: str, rows: Sequence[Cue], **counts: int) -> None:
        """Store a class's cues in place of those this run stored for it before (a repair), counting
        the difference (``cues`` and any count given, which may be negative)."""
        before = len(self.workspace.catalog.cues(class_label=label, source=source, run_id=self.run.run_id))
        added = _nonzero({"cues": len(rows) - before, **counts})
        self.workspace.catalog.add_cues(rows, (self.run.run_id, added), replacing=(label, source, self.run.run_id))
        self.counts.update(added)

    def count(self, **counts: int) -> None:
        """Count something that wrote no rows (failures, skipped items)."""
        counts = {k: v for k, v in counts.items() if v}
        if not counts:
            return
        with self.workspace.transaction() as conn:
            self.workspace.runs.add_counts(conn, self.run.run_id, counts)
        self.counts.update(counts)


def _nonzero(counts: dict[str, int]) -> Counter[str]:
    return Counter({key: value for key, value in counts.items() if value})


class Proposer(ABC):
    """A registered way of proposing attributes. Subclasses are dataclasses of their options."""

    name: ClassVar[str]

    def options(self) -> dict[str, Any]:
        """The options, JSON-ready, recorded in the run config."""
        # ignored below (arg-type): every registered proposer is a dataclass
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @abstractmethod
    def run(self, context: ProposeContext) -> None:
        """Propose for ``context.class_labels()``, writing through the context's writers."""


PROPOSERS: Registry[type[Proposer]] = Registry("proposer", ProposeError, attribute="name")
register_proposer = PROPOSERS.register


def make_proposer(name: str, **options: Any) -> Proposer:
    """Build a registered proposer from its options; unknown names and options are clear errors."""
    return PROPOSERS.create(name, **options)


@dataclass(frozen=True, slots=True)
class ProposeResult:
    """What one proposal did: this invocation's counts and the stored run."""

    run: Run
    counts: dict[str, int]
    seconds: float

    def summary(self) -> str:
        """One line for the end of a command."""
        shown = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items())) or "nothing new"
        resumed = f", resumed (attempt {self.run.attempts})" if self.run.attempts > 1 else ""
        failed = f"; {self.run.error}" if self.run.status == RunStatus.COMPLETED_WITH_FAILURES else ""
        return (f"propose {self.run.config['proposer']}: {shown} in {self.seconds:.1f}s "
                f"[run {self.run.run_id}{resumed}]{failed}")


def propose(workspace: Workspace, proposer: Proposer, classes: Iterable[str] | None = None,
            *, progress: bool = True) -> ProposeResult:
    """Run a proposer as a recorded, resumable ``propose`` run.

    >>> import tempfile
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> propose(ws, make_proposer("priors"), progress=False).counts
    {}
    """
    started = time.perf_counter()
    chosen = tuple(sorted(set(classes))) if classes is not None else None
    config = {"proposer": proposer.name, "options": proposer.options(), "classes": chosen}
    context: ProposeContext | None = None
    workspace.evidence.sweep()  # what a killed proposal left unregistered
    with workspace.runs.track("propose", proposer.name, config, extend_completed=True,
                              failures=lambda: context.failed_requests if context else 0) as run:
        context = ProposeContext(workspace, run, chosen, progress)
        proposer.run(context)
        if context.models:  # a run with nothing left to score may load none (a Ray driver never does)
            workspace.runs.set_models(run.run_id, context.models)
        workspace.evidence.compact(run.run_id)  # one shard per finished run, however small its batches
    return ProposeResult(workspace.runs.get(run.run_id), dict(sorted(context.counts.items())),
                         time.perf_counter() - started)
