"""How spurious is each cue? Co-occurrence statistics per (class, cue).

Presence comes either from machine evidence (a score at or above a threshold: detector box
confidence, CLIP presence probability) or from human verdicts; the two are never mixed, and every
row says which it is (``evidence``). Statistics of a cue are computed over the items that were
scored for that cue, whatever their class: its own class's images and the negative pool the
proposer scored it on (``curate.propose.scoring``). Rows are written for the classes that list the
cue (machine rows scored only as negatives, ``own`` false, count but get no row of their own):

- ``p_cue_given_class`` = P(cue | class), ``p_class_given_cue`` = P(class | cue), each with a 95%
  Wilson interval;
- ``lift`` = P(class | cue) / P(class); ``pmi`` = log2(lift);
- ``nmi``: normalised mutual information between "is this class" and "has this cue";
- ``predictivity_gain``: cleanlab-style, the cross-validated accuracy (out-of-fold predictions
  pooled) of a Gaussian naive Bayes classifier predicting the class from the cue's score alone,
  minus the majority-class accuracy (per cue, repeated on each of its rows); a fold whose training
  scores are constant predicts its majority class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from curate.records import NEGATIVE_OF, Evidence, EvidenceRole, Item, Verdict
from curate.verdicts import ABSENT, PRESENT

Z_95 = 1.959963984540054
VERDICT_PRESENT: dict[str, bool] = {str(value): True for value in PRESENT} | {str(value): False for value in ABSENT}
STAT_COLUMNS = ("class_label", "attribute", "evidence", "taxonomy_type", "n_scored", "n_class", "n_cue", "n_both",
                "p_cue_given_class", "p_cue_given_class_low", "p_cue_given_class_high", "p_class_given_cue",
                "p_class_given_cue_low", "p_class_given_cue_high", "lift", "pmi", "nmi", "predictivity_acc",
                "majority_acc", "predictivity_gain", "n_classes_scored", "rank")


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``(nan, nan)`` for no trials).

    >>> [round(v, 4) for v in wilson(8, 10)]
    [0.4902, 0.9433]
    """
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def presence_from_evidence(evidence: Iterable[Evidence], items: dict[str, Item], threshold: float) -> pl.DataFrame:
    """``item_id, class_label, attribute, taxonomy_type, score, present, own`` from machine evidence
    about cues (evidence about the class object itself, role ``core``, is left out); ``own`` is false
    for rows scored only as negatives for another class's cue."""
    rows = [{"item_id": e.item_id, "class_label": items[e.item_id].label, "attribute": e.attribute,
             "taxonomy_type": e.taxonomy_type, "score": float(e.score or 0.0),
             "present": float(e.score or 0.0) >= threshold, "own": NEGATIVE_OF not in e.extra}
            for e in evidence
            if e.role != EvidenceRole.CORE and e.item_id in items and items[e.item_id].label is not None]
    return _frame(rows)


def presence_from_verdicts(verdicts: Iterable[Verdict], items: dict[str, Item]) -> pl.DataFrame:
    """The same table from human verdicts (``unsure`` and unknown values are left out)."""
    rows = [{"item_id": v.item_id, "class_label": items[v.item_id].label, "attribute": v.attribute,
             "taxonomy_type": v.taxonomy_type, "score": float(VERDICT_PRESENT[v.value]),
             "present": VERDICT_PRESENT[v.value], "own": True}
            for v in verdicts if v.value in VERDICT_PRESENT and v.item_id in items and items[v.item_id].label]
    return _frame(rows)


def _frame(rows: Sequence[Mapping[str, object]]) -> pl.DataFrame:
    schema = {"item_id": pl.String, "class_label": pl.String, "attribute": pl.String, "taxonomy_type": pl.String,
              "score": pl.Float64, "present": pl.Boolean, "own": pl.Boolean}
    return pl.DataFrame(rows, schema=schema).unique(["item_id", "attribute"], keep="first", maintain_order=True)


def predictivity(scores: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """(accuracy of out-of-fold Gaussian naive Bayes predictions from one score, majority-class accuracy).

    >>> acc, base = predictivity(np.r_[np.zeros(10), np.ones(10)], np.array(["a"] * 10 + ["b"] * 10))
    >>> acc, base
    (1.0, 0.5)
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.naive_bayes import GaussianNB

    values, counts = np.unique(labels, return_counts=True)
    majority = float(counts.max() / counts.sum())
    n_splits = min(folds, int(counts.min()))
    if len(values) < 2 or n_splits < 2:
        return majority, majority
    x, correct = scores.reshape(-1, 1), 0
    for train, test in StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x, labels):
        if np.ptp(x[train]) == 0:  # a constant score has no variance to fit: predict the fold's majority
            seen, seen_counts = np.unique(labels[train], return_counts=True)
            predicted = np.full(len(test), seen[seen_counts.argmax()])
        else:
            predicted = GaussianNB().fit(x[train], labels[train]).predict(x[test])
        correct += int((predicted == labels[test]).sum())
    return correct / len(labels), majority


def cue_statistics(presence: pl.DataFrame, evidence_kind: str) -> pl.DataFrame:
    """One row per (class, cue) with the statistics above, ranked within each class by lift, then
    P(cue | class). Undefined values (a cue never present: no P(class | cue), no lift) are null.
    Without an ``own`` column every class scored gets a row."""
    from sklearn.metrics import normalized_mutual_info_score

    rows = []
    for (attribute,), scored in presence.group_by(["attribute"], maintain_order=True):
        labels = scored["class_label"].to_numpy()
        present = scored["present"].to_numpy()
        acc, majority = predictivity(scored["score"].to_numpy(), labels)
        n_scored, n_cue = len(labels), int(present.sum())
        classes = np.unique(labels)
        listed = set(scored.filter(pl.col("own"))["class_label"]) if "own" in scored.columns else set(classes)
        for label in (label for label in classes if label in listed):
            is_class = labels == label
            n_class, n_both = int(is_class.sum()), int((is_class & present).sum())
            p_cue_given_class = n_both / n_class
            p_class_given_cue = n_both / n_cue if n_cue else math.nan
            lift = p_class_given_cue / (n_class / n_scored) if n_cue else math.nan
            rows.append({
                "class_label": str(label), "attribute": str(attribute), "evidence": evidence_kind,
                "taxonomy_type": scored.filter(pl.col("class_label") == label)["taxonomy_type"][0],
                "n_scored": n_scored, "n_class": n_class, "n_cue": n_cue, "n_both": n_both,
                "p_cue_given_class": p_cue_given_class,
                **dict(zip(("p_cue_given_class_low", "p_cue_given_class_high"), wilson(n_both, n_class), strict=True)),
                "p_class_given_cue": p_class_given_cue,
                **dict(zip(("p_class_given_cue_low", "p_class_given_cue_high"), wilson(n_both, n_cue), strict=True)),
                "lift": lift, "pmi": math.log2(lift) if lift and not math.isnan(lift) else math.nan,
                "nmi": float(normalized_mutual_info_score(is_class, present)) if len(classes) > 1 else math.nan,
                "predictivity_acc": acc, "majority_acc": majority, "predictivity_gain": acc - majority,
                "n_classes_scored": len(classes),
            })
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in STAT_COLUMNS})
    frame = pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col(pl.Float64).fill_nan(None))
    ranked = frame.sort(["class_label", "lift", "p_cue_given_class"], descending=[False, True, True],
                        nulls_last=True)
    return ranked.with_columns(pl.int_range(1, pl.len() + 1).over("class_label").alias("rank")).select(STAT_COLUMNS)
