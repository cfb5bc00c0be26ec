"""Agreement statistics against published and hand-worked values."""

from __future__ import annotations

import math

import pytest
from sklearn.metrics import cohen_kappa_score

from curate.agreement import cohen_kappa, fleiss_kappa, gold_accuracy, krippendorff_alpha
from curate.verdicts import consensus

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the nominal example: alpha = 0.743.
RELIABILITY_DATA = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def _units(data: dict[str, list[object]]) -> dict[int, dict[str, str]]:
    units: dict[int, dict[str, str]] = {}
    for coder, values in data.items():
        for unit, value in enumerate(values):
            if value is not None:
                units.setdefault(unit, {})[coder] = str(value)
    return units


def test_krippendorff_alpha_matches_the_published_example() -> None:
    assert krippendorff_alpha(_units(RELIABILITY_DATA)) == pytest.approx(0.743, abs=5e-4)


def test_perfect_and_undefined_agreement() -> None:
    assert krippendorff_alpha({1: {"a": "x", "b": "x"}, 2: {"a": "y", "b": "y"}}) == 1.0
    assert math.isnan(krippendorff_alpha({1: {"a": "x", "b": "x"}}))  # one value overall: undefined
    assert math.isnan(krippendorff_alpha({1: {"a": "x"}}))


def test_cohen_kappa_agrees_with_scikit_learn() -> None:
    first = ["spurious", "core", "not present", "spurious", "core", "spurious", "not present", "core"]
    second = ["spurious", "core", "spurious", "spurious", "not present", "spurious", "not present", "core"]
    ratings = {i: {"ann": a, "bob": b} for i, (a, b) in enumerate(zip(first, second, strict=True))}
    assert cohen_kappa(ratings, "ann", "bob") == pytest.approx(cohen_kappa_score(first, second))


def test_fleiss_kappa_by_hand() -> None:
    # 4 units, 3 raters: unit agreements P_i = 1, 1/3, 1/3, 1/3 -> mean 1/2; categories x 8/12, y 4/12
    ratings = {1: {"a": "x", "b": "x", "c": "x"}, 2: {"a": "x", "b": "x", "c": "y"},
               3: {"a": "x", "b": "y", "c": "y"}, 4: {"a": "x", "b": "x", "c": "y"}}
    expected = (8 / 12) ** 2 + (4 / 12) ** 2
    assert fleiss_kappa(ratings) == pytest.approx((1 / 2 - expected) / (1 - expected))


def test_gold_accuracy_and_consensus() -> None:
    ratings = {"u1": {"ann": "core", "bob": "core", "cy": "spurious"},
               "u2": {"ann": "core", "bob": "spurious"},
               "u3": {"ann": "not present"},
               "g1": {"ann": "spurious", "bob": "core"}}
    assert gold_accuracy(ratings, {"g1": "spurious"}) == {"ann": 1.0, "bob": 0.0}
    result = consensus(ratings, min_raters=2)
    assert result.decided == {"u1": "core"}
    assert result.to_adjudicate == {"u2": "tie between core, spurious", "u3": "1 ratings, 2 needed",
                                    "g1": "tie between core, spurious"}
    strict = consensus({"u": {"a": "x", "b": "x", "c": "y"}}, min_share=0.7)
    assert strict.to_adjudicate == {"u": "majority x holds only 2 of 3"}
