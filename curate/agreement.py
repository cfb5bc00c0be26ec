"""Agreement between annotators and gold accuracy (the consensus rule lives in ``curate.verdicts``).

Ratings are ``{unit: {annotator: value}}`` (a unit is an (item, attribute) pair); values are nominal.

>>> ratings = {"u1": {"ann": "a", "bob": "a"}, "u2": {"ann": "a", "bob": "b"}, "u3": {"ann": "b", "bob": "b"}}
>>> round(krippendorff_alpha(ratings), 4), round(cohen_kappa(ratings, "ann", "bob"), 4), round(fleiss_kappa(ratings), 4)
(0.4444, 0.4, 0.3333)
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from curate.records import Verdict
from curate.verdicts import GOLD_KEY, VerdictValue

Ratings = Mapping[Any, Mapping[str, str]]  # any hashable unit (Mapping's key is invariant)


def round_ratings(verdicts: Iterable[Verdict]) -> tuple[dict[tuple[str, str], dict[str, str]],
                                                       dict[tuple[str, str], dict[str, str]]]:
    """A round's verdicts as ratings of (item, attribute) units: those agreement is measured on, and
    the answers on gold tasks apart (they never enter agreement); objects people added are no rating.

    >>> ratings, gold = round_ratings([Verdict("i1", "grass", "ann", "r", "spurious"),
    ...                                Verdict("i1", "grass", "bob", "r", "absent", extra={"gold": True})])
    >>> dict(ratings), dict(gold)
    ({('i1', 'grass'): {'ann': 'spurious'}}, {('i1', 'grass'): {'bob': 'absent'}})
    """
    ratings: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    gold: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for verdict in verdicts:
        if verdict.value != VerdictValue.ADDED:
            (gold if verdict.extra.get(GOLD_KEY) else ratings)[(verdict.item_id, verdict.attribute)][
                verdict.annotator] = str(verdict.value)
    return ratings, gold


def krippendorff_alpha(ratings: Ratings) -> float:
    """Krippendorff's alpha for nominal data; units with fewer than two ratings are left out.

    Returns nan when it is undefined (fewer than two pairable ratings, or a single value overall).
    """
    coincidence: dict[tuple[str, str], float] = defaultdict(float)
    for by_annotator in ratings.values():
        values = list(by_annotator.values())
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                pairs = n_c * (n_k - 1) if c == k else n_c * n_k
                coincidence[(c, k)] += pairs / (m - 1)
    totals: dict[str, float] = defaultdict(float)
    for (c, _), weight in coincidence.items():
        totals[c] += weight
    n = sum(totals.values())
    if n <= 1:
        return math.nan
    observed = sum(w for (c, k), w in coincidence.items() if c != k) / n
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k) / (n * (n - 1))
    return math.nan if expected == 0 else 1.0 - observed / expected


def cohen_kappa(ratings: Ratings, first: str, second: str) -> float:
    """Cohen's kappa of two annotators over the units both rated (nan if undefined)."""
    pairs = [(r[first], r[second]) for r in ratings.values() if first in r and second in r]
    if not pairs:
        return math.nan
    observed = sum(a == b for a, b in pairs) / len(pairs)
    left, right = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(left[v] * right[v] for v in left) / len(pairs) ** 2
    return math.nan if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(ratings: Ratings) -> float:
    """Fleiss' kappa over the units with the most common number of raters (it needs a constant
    number per unit); nan when undefined."""
    sizes = Counter(len(r) for r in ratings.values() if len(r) >= 2)
    if not sizes:
        return math.nan
    raters = sizes.most_common(1)[0][0]
    units = [Counter(r.values()) for r in ratings.values() if len(r) == raters]
    per_unit = [(sum(n * n for n in counts.values()) - raters) / (raters * (raters - 1)) for counts in units]
    totals: Counter[str] = Counter()
    for counts in units:
        totals.update(counts)
    expected = sum((n / (len(units) * raters)) ** 2 for n in totals.values())
    observed = sum(per_unit) / len(per_unit)
    return math.nan if expected == 1 else (observed - expected) / (1 - expected)


def gold_accuracy(ratings: Ratings, gold: Mapping[Any, str]) -> dict[str, float]:
    """Per annotator, the share of gold units answered as the gold says.

    >>> gold_accuracy({"u1": {"ann": "a", "bob": "b"}, "u2": {"ann": "b"}}, {"u1": "a", "u2": "b"})
    {'ann': 1.0, 'bob': 0.0}
    """
    right: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for unit, answer in gold.items():
        for annotator, value in ratings.get(unit, {}).items():
            seen[annotator] += 1
            right[annotator] += value == answer
    return {annotator: right[annotator] / seen[annotator] for annotator in sorted(seen)}
