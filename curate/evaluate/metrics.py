"""Metrics on predictions, named so they cannot be confused (spurious-benchmarks.md §6).

- ``acc_avg``: plain accuracy over all items.
- ``acc_wg``: worst-group accuracy, the minimum over non-empty groups.
- ``acc_group_balanced``: unweighted mean of per-group accuracies (SubpopBench calls it "adjusted").
- ``acc_train_adjusted``: per-group accuracy weighted by the *training* frequency of each group
  (WILDS' ``adj_acc_avg`` for Waterbirds).
- ``acc_class_balanced``: unweighted mean of per-class accuracies.
- ``acc_<field:value>_...`` and ``count_<field:value>_...``: per group.

>>> import polars as pl
>>> frame = pl.DataFrame({"y": [0, 0, 1, 1], "a": [0, 1, 1, 1], "pred": [0, 1, 1, 0]})
>>> metrics = group_metrics(frame)
>>> metrics["acc_avg"], metrics["acc_wg"], metrics["acc_y:0_a:1"], metrics["count_y:1_a:1"]
(0.5, 0.0, 0.0, 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

Metrics = dict[str, float | int]


def _group_name(fields: Sequence[str], values: Sequence[object], names: Mapping[str, Sequence[str]]) -> str:
    parts = []
    for field, value in zip(fields, values, strict=True):
        label = names[field][int(value)] if field in names else value  # type: ignore[call-overload]
        parts.append(f"{field}:{label}")
    return "_".join(parts)


def group_metrics(frame: pl.DataFrame, y: str = "y", pred: str = "pred", group_fields: Sequence[str] = ("y", "a"),
                  train_counts: Mapping[tuple[object, ...], int] | None = None,
                  value_names: Mapping[str, Sequence[str]] | None = None) -> Metrics:
    """Accuracy metrics over groups defined by ``group_fields`` (class x attribute by default).

    ``train_counts`` maps a group's field values to its size in the training split; it is needed
    for ``acc_train_adjusted`` only. ``value_names`` names integer codes in the per-group keys.
    """
    if frame.is_empty():
        raise ValueError("no predictions to evaluate")
    names = value_names or {}
    scored = frame.with_columns((pl.col(pred) == pl.col(y)).cast(pl.Float64).alias("_correct"))
    metrics: Metrics = {"acc_avg": float(scored["_correct"].mean()), "count": scored.height}  # type: ignore[arg-type]
    per_group = scored.group_by(list(group_fields)).agg(pl.col("_correct").mean().alias("acc"),
                                                        pl.len().alias("n")).sort(list(group_fields))
    accuracies = {}
    for row in per_group.iter_rows(named=True):
        key = tuple(row[f] for f in group_fields)
        name = _group_name(group_fields, key, names)
        metrics[f"acc_{name}"], metrics[f"count_{name}"] = float(row["acc"]), int(row["n"])
        accuracies[key] = float(row["acc"])
    metrics["acc_wg"] = min(accuracies.values())
    metrics["acc_group_balanced"] = float(np.mean(list(accuracies.values())))
    per_class = scored.group_by(y).agg(pl.col("_correct").mean())["_correct"]
    metrics["acc_class_balanced"] = float(per_class.mean())  # type: ignore[arg-type]
    if train_counts is not None:
        total = sum(train_counts.values())
        missing = sorted(set(train_counts) - set(accuracies), key=str)
        if missing:
            raise ValueError(f"groups {missing} occur in training but have no test predictions")
        metrics["acc_train_adjusted"] = sum(accuracies[g] * n / total for g, n in train_counts.items())
    return metrics


def mcq_metrics(frame: pl.DataFrame, answer: str = "answer", prediction: str = "prediction",
                types: str = "spurious_correlation_type") -> Metrics:
    """MM-SpuBench-style multiple choice: accuracy overall and per taxonomy type (an item counts
    for each of its types).

    >>> frame = pl.DataFrame({"answer": ["A", "B"], "prediction": ["A", "C"],
    ...                       "spurious_correlation_type": [["Background", "Shape"], ["Background", "Orientation"]]})
    >>> mcq_metrics(frame)["acc_type:Background"], mcq_metrics(frame)["acc_type:Shape"]
    (0.5, 1.0)
    """
    if frame.is_empty():
        raise ValueError("no predictions to evaluate")
    scored = frame.with_columns(
        (pl.col(prediction).cast(pl.String).str.strip_chars().str.to_uppercase().str.slice(0, 1)
         == pl.col(answer).cast(pl.String).str.strip_chars().str.to_uppercase()).cast(pl.Float64).alias("_correct"))
    metrics: Metrics = {"acc_avg": float(scored["_correct"].mean()), "count": scored.height}  # type: ignore[arg-type]
    per_type = scored.explode(types).group_by(types).agg(pl.col("_correct").mean().alias("acc"),
                                                         pl.len().alias("n")).sort(types)
    for row in per_type.iter_rows(named=True):
        metrics[f"acc_type:{row[types]}"], metrics[f"count_type:{row[types]}"] = float(row["acc"]), int(row["n"])
    return metrics


def focus_metrics(frame: pl.DataFrame, correct: str = "correct", n_uncommon: str = "n_uncommon",
                  attributes: Sequence[str] = ("time", "weather", "locations")) -> Metrics:
    """FOCUS-style: accuracy per number of uncommon attributes, and per attribute the gap
    ``acc(uncommon) - acc(common)``; ``uncommon_<attribute>`` columns flag each image.

    >>> frame = pl.DataFrame({"correct": [1, 1, 0, 0], "n_uncommon": [0, 0, 1, 2],
    ...                       "uncommon_time": [False, False, True, True]})
    >>> m = focus_metrics(frame, attributes=("time",))
    >>> m["acc_uncommon:0"], m["acc_uncommon:2"], m["gap_time"]
    (1.0, 0.0, -1.0)
    """
    if frame.is_empty():
        raise ValueError("no predictions to evaluate")
    scored = frame.with_columns(pl.col(correct).cast(pl.Float64))
    metrics: Metrics = {"acc_avg": float(scored[correct].mean()), "count": scored.height}  # type: ignore[arg-type]
    for row in scored.group_by(n_uncommon).agg(pl.col(correct).mean().alias("acc"), pl.len().alias("n")).sort(
            n_uncommon).iter_rows(named=True):
        metrics[f"acc_uncommon:{row[n_uncommon]}"] = float(row["acc"])
        metrics[f"count_uncommon:{row[n_uncommon]}"] = int(row["n"])
    for attribute in attributes:
        flag = f"uncommon_{attribute}"
        if flag not in scored.columns:
            continue
        uncommon = scored.filter(pl.col(flag))[correct]
        common = scored.filter(~pl.col(flag))[correct]
        if uncommon.len() and common.len():
            metrics[f"gap_{attribute}"] = float(uncommon.mean()) - float(common.mean())  # type: ignore[arg-type]
    return metrics


def spurious_score(positive: Sequence[float], negative: Sequence[float]) -> Metrics:
    """Spurious-ImageNet-style separation of a class's real images (``positive``: the model's
    probability for the class) from its spurious-feature images (``negative``). Both the average
    precision (what the public code computes) and the ROC AUC (what its README says) are reported.

    >>> spurious_score([0.9, 0.8], [0.1, 0.85])
    {'ap': 0.8333333333333333, 'roc_auc': 0.75, 'n_positive': 2, 'n_negative': 2}
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not positive or not negative:
        raise ValueError("need at least one positive and one negative score")
    truth = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    scores = np.r_[np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)]
    return {"ap": float(average_precision_score(truth, scores)), "roc_auc": float(roc_auc_score(truth, scores)),
            "n_positive": len(positive), "n_negative": len(negative)}
