"""What a verification round is: its spec (what it verifies, how many people, which kind), read by
the routing and task kinds (``annotation.tasks``) and by push and pull (``annotation.rounds``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from annotation.configs import ATTRIBUTE_SLOTS
from annotation.transport import BridgeError
from curate.workspace import Workspace

_ROUND_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class RoundSpec:
    """What a round verifies: evidence of ``source`` (one run, or all), at most ``budget`` items,
    uncertain ones first (scores nearest ``threshold``), classes (or class x attribute groups) served
    in turn, so small ones are verified in full first; at most ``max_attributes`` per task.

    ``overlap`` is the share of tasks answered by ``overlap_k`` people (the rest by one).
    ``gold_round`` names an earlier round whose decided units make ``gold_count`` gold tasks,
    pre-filled with the *wrong* answer, so people who accept predictions without looking show up in
    their gold accuracy. ``adjudicates`` names a round whose disputed units this round decides.
    ``kind`` is ``attributes`` (one task per image, every attribute judged), ``boxes`` (one task
    per (image, cue) with pre-filled rectangles to correct), or ``mcq``, ``setting`` or ``logo``,
    whose units come from the table at ``units`` (what the builders write).

    >>> RoundSpec("round-1", overlap=0.25, overlap_k=3).overlap_k
    3
    """

    name: str
    source: str = "detector"
    evidence_run: str | None = None
    budget: int = 1000
    threshold: float = 0.05
    max_attributes: int = 10
    overlap: float = 0.0
    overlap_k: int = 2
    gold_round: str | None = None
    gold_count: int = 0
    adjudicates: str | None = None
    kind: str = "attributes"
    units: str | None = None

    def __post_init__(self) -> None:
        if not _ROUND_NAME.fullmatch(self.name):
            raise BridgeError(f"round names use letters, digits, '_', '-' and '.': {self.name!r}")
        if not 0.0 <= self.overlap <= 1.0:
            raise BridgeError(f"overlap is a share of tasks between 0 and 1, got {self.overlap}")
        if self.overlap_k < 1 or (self.overlap > 0 and self.overlap_k < 2):
            raise BridgeError(f"overlap_k is how many people answer a shared task (2 or more), got {self.overlap_k}")
        if not 1 <= self.max_attributes <= ATTRIBUTE_SLOTS:
            raise BridgeError(f"max_attributes must be between 1 and {ATTRIBUTE_SLOTS}, got {self.max_attributes}")
        if self.adjudicates and self.kind != "attributes":
            raise BridgeError("adjudication rounds are attribute rounds (kind=attributes)")
        if self.adjudicates == self.name or self.gold_round == self.name:
            raise BridgeError(f"round {self.name!r} cannot adjudicate or give gold to itself")

    def project_title(self, workspace: Workspace) -> str:
        """``<round> <folder> <id>``, cut to Label Studio's 50 characters; the id is the workspace's."""
        return f"{self.name} {workspace.root.name}"[:41] + f" {workspace.workspace_id[:8]}"

    def project_description(self, workspace: Workspace) -> str:
        return f"curate round {self.name} of workspace {workspace.workspace_id}"
