"""Human verdicts: their vocabulary, the one consensus rule, and the decision each unit resolves to.

A verdict is one person's answer about one unit (an item and an attribute) in one round. Builders and
analysis never count raw votes: they read :func:`resolved_verdicts`, which takes each unit's consensus
over the rounds asked for and lets an adjudication of those rounds overrule it.

>>> from curate.records import Verdict
>>> votes = [Verdict("img1", "water", name, "round-1", value) for name, value in
...          (("ann", "spurious"), ("bob", "spurious"), ("cy", "not present"))]
>>> [(v.attribute, v.value, v.annotator) for v in resolve(votes).decided]
[('water', 'spurious', 'consensus')]
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import polars as pl

from curate.records import Verdict

if TYPE_CHECKING:
    from curate.workspace import Workspace


class VerdictValue(StrEnum):
    """What a person can say about an attribute of an image (``added``: an attribute they named
    themselves because the proposers missed it)."""

    CORE = "core"
    SPURIOUS = "spurious"
    NOT_PRESENT = "not present"
    UNSURE = "unsure"
    ADDED = "added"


ATTRIBUTE_CHOICES: tuple[str, ...] = tuple(v.value for v in (VerdictValue.CORE, VerdictValue.SPURIOUS,
                                                             VerdictValue.NOT_PRESENT, VerdictValue.UNSURE))
"""The values the attribute form offers, in the order it shows them."""
PRESENT = frozenset({VerdictValue.CORE, VerdictValue.SPURIOUS, VerdictValue.ADDED})
ABSENT = frozenset({VerdictValue.NOT_PRESENT})
ABSTAINING = frozenset({VerdictValue.UNSURE})
"""Values that are not a vote: an ``unsure`` answer neither confirms nor denies."""

CONSENSUS = "consensus"
ADJUDICATED = "adjudicated"
GOLD_KEY = "gold"
"""``Verdict.extra`` flag of answers given on a gold task (they measure people, they decide nothing)."""
ADJUDICATES_KEY = "adjudicates"
"""``Verdict.extra`` key naming the round an adjudication verdict resolves."""
SIMULATED_KEY = "simulated"
"""``Verdict.extra`` flag of answers given by a simulated annotator."""
SIMULATED_DOMAIN = "simulated.curate.invalid"
"""Simulated annotators log in as ``sim-<n>@simulated.curate.invalid``; their verdicts are flagged."""
_PROVENANCE_KEYS = frozenset({"task_id", "annotation_id", GOLD_KEY, ADJUDICATES_KEY, SIMULATED_KEY})

Ratings = Mapping[Any, Mapping[str, str]]  # any hashable unit (Mapping's key is invariant)


@dataclass(frozen=True, slots=True)
class Consensus:
    """Decided units, and the units that need an adjudication, with the reason."""

    decided: dict[Any, str]
    to_adjudicate: dict[Any, str]


def consensus(ratings: Ratings, min_share: float = 0.5, min_raters: int = 1) -> Consensus:
    """The one consensus rule: a unit is decided when its most common value holds more than
    ``min_share`` of its ratings and strictly more than any other value; ties, weak majorities and
    units with fewer than ``min_raters`` ratings go to adjudication.

    >>> result = consensus({"u1": {"a": "x", "b": "x", "c": "y"}, "u2": {"a": "x", "b": "y"}})
    >>> result.decided, result.to_adjudicate
    ({'u1': 'x'}, {'u2': 'tie between x, y'})
    """
    decided: dict[Any, str] = {}
    pending: dict[Any, str] = {}
    for unit, by_annotator in ratings.items():
        counts = Counter(by_annotator.values()).most_common()
        if len(by_annotator) < min_raters or not counts:
            pending[unit] = f"{len(by_annotator)} ratings, {min_raters} needed"
        elif len(counts) > 1 and counts[0][1] == counts[1][1]:
            tied = sorted(v for v, n in counts if n == counts[0][1])
            pending[unit] = f"tie between {', '.join(tied)}"
        elif len(counts) > 1 and counts[0][1] / len(by_annotator) <= min_share:
            pending[unit] = f"majority {counts[0][0]} holds only {counts[0][1]} of {len(by_annotator)}"
        else:
            decided[unit] = counts[0][0]
    return Consensus(decided, pending)


@dataclass(frozen=True, slots=True)
class Resolution:
    """One decision per unit (``decided``, as verdicts by ``consensus`` or ``adjudicated``) and the
    units still open, with the reason."""

    decided: list[Verdict]
    open: dict[tuple[str, str], str]


def round_names(rounds: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Rounds as a tuple; a string may name several, comma-separated (``"round-1,round-2"``).

    >>> round_names("round-1, adjudication-1"), round_names(None)
    (('round-1', 'adjudication-1'), None)
    """
    if rounds is None:
        return None
    names = rounds.split(",") if isinstance(rounds, str) else rounds
    return tuple(n.strip() for n in names if n.strip()) or None


def resolve(verdicts: Iterable[Verdict], rounds: str | Sequence[str] | None = None,
            min_share: float = 0.5) -> Resolution:
    """Resolve raw verdicts to one decision per (item, attribute).

    Verdicts of ``rounds`` (all when None) are pooled per unit and decided by :func:`consensus`;
    answers on gold tasks and ``unsure`` answers are left out. Verdicts of an adjudication of one of
    those rounds (``extra["adjudicates"]``) overrule the consensus. A decided verdict carries the
    majority type and, for other extra fields (a brand, a comment), the most common value among the
    people who chose the decided value; ``extra["votes"]`` keeps the count per value.
    """
    wanted = round_names(rounds)
    ordinary: dict[tuple[str, str], list[Verdict]] = defaultdict(list)
    adjudicated: dict[tuple[str, str], list[Verdict]] = defaultdict(list)
    for verdict in verdicts:
        target = verdict.extra.get(ADJUDICATES_KEY)
        if verdict.extra.get(GOLD_KEY) or verdict.value in ABSTAINING:
            continue
        if target is not None and (wanted is None or target in wanted or verdict.round in wanted):
            adjudicated[(verdict.item_id, verdict.attribute)].append(verdict)
        elif target is None and (wanted is None or verdict.round in wanted):
            ordinary[(verdict.item_id, verdict.attribute)].append(verdict)
    decided: list[Verdict] = []
    still_open: dict[tuple[str, str], str] = {}
    for how, groups in ((CONSENSUS, ordinary), (ADJUDICATED, adjudicated)):
        ratings = {unit: {v.annotator: v.value for v in rows} for unit, rows in groups.items()}
        result = consensus(ratings, min_share)
        for unit, value in result.decided.items():
            decided.append(_decision(groups[unit], str(value), how))
        for unit, reason in result.to_adjudicate.items():
            still_open[unit] = reason
    by_unit: dict[tuple[str, str], Verdict] = {}
    for verdict in decided:  # adjudications come second and overrule
        by_unit[(verdict.item_id, verdict.attribute)] = verdict
    return Resolution(sorted(by_unit.values(), key=lambda v: (v.item_id, v.attribute)),
                      {unit: reason for unit, reason in still_open.items() if unit not in by_unit})


def _decision(rows: list[Verdict], value: str, how: str) -> Verdict:
    voters = [v for v in rows if v.value == value]
    types = Counter(v.taxonomy_type for v in voters if v.taxonomy_type)
    extra: dict[str, Any] = {"votes": dict(sorted(Counter(v.value for v in rows).items())),
                             "rounds": sorted({v.round for v in rows})}
    if any(v.extra.get(SIMULATED_KEY) for v in rows):
        extra[SIMULATED_KEY] = True
    for key in sorted({k for v in voters for k in v.extra} - _PROVENANCE_KEYS):
        common = Counter(v.extra[key] for v in voters
                         if isinstance(v.extra.get(key), str | int | float) and v.extra[key] != "").most_common(1)
        if common:
            extra[key] = common[0][0]
    return Verdict(rows[0].item_id, rows[0].attribute, how, ",".join(extra["rounds"]), value,
                   types.most_common(1)[0][0] if types else None, extra)


def resolved_verdicts(workspace: Workspace, rounds: str | Sequence[str] | None = None,
                      min_share: float = 0.5) -> list[Verdict]:
    """The workspace's decided units: what builders and analysis read instead of raw votes.

    ``rounds`` names the rounds to use (comma-separated or a sequence; None: all); adjudications
    of those rounds are included on their own. An unknown round is an error that lists the known ones.
    """
    wanted = round_names(rounds)
    everything = workspace.catalog.verdicts()
    if wanted is not None:
        known = {v.round for v in everything}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ValueError(f"no verdicts of round {', '.join(unknown)}; rounds with verdicts: "
                             f"{', '.join(sorted(known)) or 'none (pull a round first)'}")
    return resolve(everything, wanted, min_share).decided


def listed_verdicts(workspace: Workspace, rounds: str | Sequence[str] | None = None, raw: bool = False
                    ) -> list[Verdict]:
    """What ``curate verdicts`` and ``Project.verdicts`` show: the decided units of ``rounds``, or with
    ``raw`` every person's answer in them."""
    if not raw:
        return resolved_verdicts(workspace, rounds)
    wanted = round_names(rounds)
    return [v for v in workspace.catalog.verdicts() if wanted is None or v.round in wanted]


def verdict_frame(verdicts: Sequence[Verdict]) -> pl.DataFrame:
    """Verdicts as a table (``extra`` as JSON text), for exports and notebooks."""
    return pl.DataFrame(
        [{"item_id": v.item_id, "attribute": v.attribute, "annotator": v.annotator, "round": v.round, "value": v.value,
          "taxonomy_type": v.taxonomy_type, "extra": json.dumps(v.extra, sort_keys=True)} for v in verdicts],
        schema={"item_id": pl.String, "attribute": pl.String, "annotator": pl.String, "round": pl.String,
                "value": pl.String, "taxonomy_type": pl.String, "extra": pl.String})


SPURIOUS_ONLY_QUESTIONS = ("cue", "object")
"""The two questions a spurious-only round asks of a candidate image for one (class, cue) pair."""
SPURIOUS_ONLY_ANSWERS = ("yes", "no", "unsure")


def question_attribute(question: str, class_label: str, cue: str) -> str:
    """The verdict attribute of one spurious-only question about one (class, cue) pair: each pair's
    questions are units of their own, so an image that is a candidate for two pairs is judged for each.

    >>> question_attribute("cue", "dog", "leash"), question_attribute("object", "dog", "leash")
    ('cue|dog|leash', 'object|dog|leash')
    """
    if question not in SPURIOUS_ONLY_QUESTIONS:
        raise ValueError(f"question is one of {SPURIOUS_ONLY_QUESTIONS}, not {question!r}")
    return f"{question}|{class_label}|{cue}"
