"""Metrics on predictions, named so they cannot be confused (spurious-benchmarks.md §6).

- ``acc_avg``: plain accuracy over all items.
- ``acc_wg``: worst-group accuracy, the minimum over non-empty groups.
- ``acc_wc``: worst-class accuracy, the minimum over classes.
- ``acc_group_balanced``: unweighted mean of per-group accuracies (SubpopBench calls it "adjusted").
- ``acc_train_adjusted``: per-group accuracy weighted by the *training* frequency of each group
  (WILDS' ``adj_acc_avg`` for Waterbirds).
- ``acc_class_balanced``: unweighted mean of per-class accuracies.
- ``acc_<field:value>_...`` and ``count_<field:value>_...``: per group.
- ``ci_low_<metric>`` / ``ci_high_<metric>``: percentile bootstrap interval of an accuracy (see
  ``group_metrics``).
- ``missing_predictions``: rows without a prediction, counted as wrong.
- ``ap_class:<k>`` / ``roc_auc_class:<k>``, ``ap_mean`` / ``roc_auc_mean``: Spurious ImageNet's
  separation of class k's real images from its spurious-only images (see ``spurious_only_metrics``);
  ``predicted_as_class:<k>`` and ``predicted_as_class_mean``: the share of spurious-only images
  predicted as their class.

>>> import polars as pl
>>> frame = pl.DataFrame({"y": [0, 0, 1, 1], "a": [0, 1, 1, 1], "pred": [0, 1, 1, 0]})
>>> metrics = group_metrics(frame)
>>> metrics["acc_avg"], metrics["acc_wg"], metrics["acc_wc"], metrics["acc_y:0_a:1"], metrics["count_y:1_a:1"]
(0.5, 0.0, 0.5, 0.0, 2)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from curate.builders.mmspubench import LETTERS, literal_list

Metrics = dict[str, float | int]


def _group_name(fields: Sequence[str], values: Sequence[object], names: Mapping[str, Sequence[str]]) -> str:
    parts = []
    for field, value in zip(fields, values, strict=True):
        # ignored below (call-overload): a group value named in ``names`` is an integer code
        label = names[field][int(value)] if field in names else value  # type: ignore[call-overload]
        parts.append(f"{field}:{label}")
    return "_".join(parts)


def group_metrics(frame: pl.DataFrame, y: str = "y", pred: str = "pred", group_fields: Sequence[str] = ("y", "a"),
                  train_counts: Mapping[tuple[object, ...], int] | None = None,
                  value_names: Mapping[str, Sequence[str]] | None = None, bootstrap: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> Metrics:
    """Accuracy metrics over groups defined by ``group_fields`` (class x attribute by default).

    ``train_counts`` maps a group's field values to its size in the training split; it is needed
    for ``acc_train_adjusted`` only. ``value_names`` names integer codes in the per-group keys.
    A row without a prediction counts as wrong (``missing_predictions`` says how many).

    Confidence intervals (``bootstrap`` resamples, 0 for none): the test set is resampled with
    replacement *within each group* (group sizes stay fixed, as a group-balanced test set is
    built), every accuracy is recomputed per resample, and the ``confidence`` percentile interval
    is reported. Resampling a group of n items with k correct is drawn exactly as Binomial(n, k/n).
    Seeded by ``seed``, so the same predictions give the same intervals.
    """
    if frame.is_empty():
        raise ValueError("no predictions to evaluate")
    if bootstrap < 0 or not 0 < confidence < 1:
        raise ValueError(f"bootstrap must be >= 0 and confidence in (0, 1), not {bootstrap} and {confidence}")
    names = value_names or {}
    fields = list(group_fields)
    strata = fields + ([y] if y not in fields else [])
    scored = frame.with_columns((pl.col(pred) == pl.col(y)).fill_null(False).cast(pl.Int64).alias("_correct"))
    cells = scored.group_by(strata).agg(pl.col("_correct").sum().alias("k"), pl.len().alias("n")).sort(strata)
    k, n = cells["k"].to_numpy().astype(float), cells["n"].to_numpy().astype(float)
    group_keys = [tuple(row[:len(fields)]) for row in cells.select(strata).rows()]
    class_keys = cells[y].to_list()
    groups = sorted(set(group_keys), key=lambda g: group_keys.index(g))
    classes = sorted(set(class_keys), key=lambda c: class_keys.index(c))
    in_group = np.array([[key == g for key in group_keys] for g in groups], dtype=float)  # groups x cells
    in_class = np.array([[key == c for key in class_keys] for c in classes], dtype=float)

    def summarise(correct: np.ndarray) -> dict[str, np.ndarray]:
        """Accuracies from correct counts per cell (last axis), for one draw or many."""
        per_group = (correct @ in_group.T) / (in_group @ n)
        per_class = (correct @ in_class.T) / (in_class @ n)
        return {"acc_avg": correct.sum(-1) / n.sum(), "acc_wg": per_group.min(-1), "acc_wc": per_class.min(-1),
                "acc_group_balanced": per_group.mean(-1), "acc_class_balanced": per_class.mean(-1),
                **{f"acc_{_group_name(fields, g, names)}": per_group[..., i] for i, g in enumerate(groups)}}

    point = summarise(k)
    metrics: Metrics = {"acc_avg": float(point["acc_avg"]), "count": scored.height,
                        "missing_predictions": int(frame[pred].null_count())}
    for index, group in enumerate(groups):
        name = _group_name(fields, group, names)
        metrics[f"acc_{name}"], metrics[f"count_{name}"] = float(point[f"acc_{name}"]), int(in_group[index] @ n)
    for key in ("acc_wg", "acc_wc", "acc_group_balanced", "acc_class_balanced"):
        metrics[key] = float(point[key])
    if train_counts is not None:
        total = sum(train_counts.values())
        missing = sorted(set(train_counts) - set(groups), key=str)
        if missing:
            raise ValueError(f"groups {missing} occur in training but have no test predictions")
        metrics["acc_train_adjusted"] = sum(
            float(point[f"acc_{_group_name(fields, g, names)}"]) * count / total for g, count in train_counts.items())
    if bootstrap:
        draws = summarise(np.random.default_rng(seed).binomial(n.astype(np.int64), k / n, size=(bootstrap, len(n))))
        tail = (1 - confidence) / 2
        for key, values in draws.items():
            low, high = np.quantile(values, [tail, 1 - tail])
            metrics[f"ci_low_{key}"], metrics[f"ci_high_{key}"] = float(low), float(high)
        metrics["ci_confidence"], metrics["ci_resamples"] = confidence, bootstrap
    return metrics


_LETTER_ALONE = re.compile(r"^[(\[]?\s*([A-Da-d])\s*[)\]]?[.:)]?$")
_LEADING_LETTER = re.compile(r"^(?:[(\[]([A-Da-d])[)\]]|([A-D])[.):]|([a-d])[.):](?=\s|$))")
_ANNOUNCED_LETTER = re.compile(r"(?i:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*"
                               r"(?:[(\[]([A-Da-d])[)\]]|([A-D])\b|([a-d])(?=[.):]|\s*$))")
_CHOICE_LABEL = re.compile(r"^\s*[A-D][.)]\s*")


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def parse_choice(text: Any, choices: Sequence[str] = ()) -> str | None:
    """The letter (A-D) a free-text answer picks, or None when it names none.

    Read in this order: the text of one choice exactly; a letter alone (``"b"``, ``"(B)"``,
    ``"B."``); a leading label (``"B. round shape"``, ``"(B) ..."``); an announced letter
    (``"Answer: B"``, ``"the answer is (B)"``, ``"option B"``); the text of exactly one choice
    inside the answer. A capital ``A`` starting a sentence ("A dog ...") is not read as a letter.

    >>> choices = ["A. compact design", "B. round shape", "C. marble table", "D. shiny surface"]
    >>> [parse_choice(t, choices) for t in ("B", "(b)", "B.", "Answer: B", "The answer is B.", "round shape",
    ...                                     "It is the marble table.", "A dog", None)]
    ['B', 'B', 'B', 'B', 'B', 'B', 'C', None, None]
    """
    if text is None:
        return None
    text = str(text).strip()
    texts = [_plain(_CHOICE_LABEL.sub("", choice)) for choice in choices]
    plain = _plain(text)
    if plain and plain in texts:
        return LETTERS[texts.index(plain)]
    for pattern, search in ((_LETTER_ALONE, False), (_LEADING_LETTER, False), (_ANNOUNCED_LETTER, True)):
        found = pattern.search(text) if search else pattern.match(text)
        if found:
            return next(group for group in found.groups() if group).upper()
    inside = [LETTERS[i] for i, choice in enumerate(texts) if choice and re.search(rf"\b{re.escape(choice)}\b", plain)]
    return inside[0] if len(inside) == 1 else None


def mcq_metrics(frame: pl.DataFrame, answer: str = "answer", prediction: str = "prediction",
                types: str = "spurious_correlation_type", choices: str = "choices") -> Metrics:
    """MM-SpuBench-style multiple choice: accuracy overall and per taxonomy type (an item counts
    for each of its types). Answers are read with ``parse_choice`` (using the ``choices`` column
    when there is one); a missing or unreadable answer is wrong and counted. Type and choice lists
    may be lists or Python-literal strings, as in the released MM-SpuBench files.

    >>> frame = pl.DataFrame({"answer": ["A", "B"], "prediction": ["Answer: A", None],
    ...                       "spurious_correlation_type": ["['Background', 'Shape']", "['Background', 'Color']"]})
    >>> m = mcq_metrics(frame)
    >>> m["acc_type:Background"], m["acc_type:Shape"], m["missing_predictions"]
    (0.5, 1.0, 1)
    """
    if frame.is_empty():
        raise ValueError("no predictions to evaluate")
    correct, type_lists, unread = [], [], 0
    has_choices = choices in frame.columns
    for row in frame.iter_rows(named=True):
        options = literal_list(row[choices]) if has_choices and row[choices] is not None else []
        truth = parse_choice(row[answer], options)
        if truth is None:
            raise ValueError(f"answer {row[answer]!r} names none of the choices {options or 'A-D'}")
        picked = parse_choice(row[prediction], options)
        unread += row[prediction] is not None and picked is None
        correct.append(float(picked == truth))
        try:
            type_lists.append(literal_list(row[types]))
        except ValueError as problem:
            raise ValueError(f"{types} {problem}") from None
    scored = pl.DataFrame({"_correct": correct, "_types": type_lists},
                          schema={"_correct": pl.Float64, "_types": pl.List(pl.String)})
    metrics: Metrics = {"acc_avg": float(np.mean(correct)), "count": scored.height,
                        "missing_predictions": int(frame[prediction].null_count()), "unread_predictions": unread}
    per_type = scored.explode("_types").drop_nulls("_types").group_by("_types").agg(
        pl.col("_correct").mean().alias("acc"), pl.len().alias("n")).sort("_types")
    for row in per_type.iter_rows(named=True):
        metrics[f"acc_type:{row['_types']}"], metrics[f"count_type:{row['_types']}"] = float(row["acc"]), int(row["n"])
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
    scored = frame.with_columns(pl.col(correct).cast(pl.Float64).fill_null(0.0))  # no answer is wrong
    # ignored below (arg-type): polars types mean() as a wide union; a numeric column's is a float
    metrics: Metrics = {"acc_avg": float(scored[correct].mean()), "count": scored.height,  # type: ignore[arg-type]
                        "missing_predictions": int(frame[correct].null_count())}
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
            # ignored below (arg-type): polars types mean() as a wide union; a numeric column's is a float
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


def episode_metrics(frame: pl.DataFrame, episode: str = "episode", truth: str = "way", pred: str = "pred",
                    confidence: float = 0.95) -> Metrics:
    """Few-shot accuracy over episodes (query rows only; a missing prediction is wrong):
    ``acc_episode_mean`` (the mean of per-episode accuracies), ``ci_low_`` / ``ci_high_acc_episode_mean``
    (the normal interval ``mean +- z * sd / sqrt(episodes)`` few-shot papers report), ``acc_episode_worst``,
    ``acc_avg`` (over all query rows), ``count_episodes``, ``count`` and ``missing_predictions``.

    >>> frame = pl.DataFrame({"episode": [0, 0, 1, 1], "way": [0, 1, 0, 1], "pred": [0, 1, 1, None]})
    >>> m = episode_metrics(frame)
    >>> m["acc_episode_mean"], m["acc_episode_worst"], m["missing_predictions"]
    (0.5, 0.0, 1)
    """
    from statistics import NormalDist

    if frame.is_empty():
        raise ValueError("no query rows to evaluate")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is in (0, 1), not {confidence}")
    scored = frame.with_columns((pl.col(pred) == pl.col(truth)).fill_null(False).cast(pl.Float64).alias("_correct"))
    per_episode = scored.group_by(episode).agg(pl.col("_correct").mean())["_correct"].to_numpy()
    mean = float(per_episode.mean())
    half = (NormalDist().inv_cdf(0.5 + confidence / 2) * float(per_episode.std(ddof=1)) / np.sqrt(per_episode.size)
            if per_episode.size > 1 else 0.0)
    return {"acc_episode_mean": mean, "ci_low_acc_episode_mean": mean - half,
            "ci_high_acc_episode_mean": mean + half, "ci_confidence": confidence,
            # ignored below (arg-type): polars types mean() as a wide union; a numeric column's is a float
            "acc_episode_worst": float(per_episode.min()), "acc_avg": float(scored["_correct"].mean()),  # type: ignore[arg-type]
            "count_episodes": int(per_episode.size), "count": scored.height,
            "missing_predictions": int(frame[pred].null_count())}


def spurious_only_metrics(frame: pl.DataFrame, label: str = "class_label", score: str = "score", kind: str = "kind",
                          pred: str | None = None) -> Metrics:
    """Spurious ImageNet's spurious score per class k: positives are k's real test images
    (``kind == "real"``), negatives k's spurious-only images (``kind == "spurious"``), ranked by the
    model's probability of k (``score``). ``ap_class:<k>`` (average precision, what the public code
    computes) and ``roc_auc_class:<k>`` (what its README names), their unweighted means over classes,
    and with ``pred`` (the predicted class name) ``predicted_as_class:<k>``: the share of k's
    spurious-only images predicted as k, and its mean. A missing score ranks on the wrong side
    (below every real image's score when real, above every spurious one's when spurious); a missing
    prediction counts as predicted k; ``missing_predictions`` counts both.

    >>> frame = pl.DataFrame({"class_label": ["k"] * 4, "score": [0.9, 0.8, 0.1, 0.85],
    ...                       "kind": ["real", "real", "spurious", "spurious"], "pred": ["k", "k", "j", "k"]})
    >>> m = spurious_only_metrics(frame, pred="pred")
    >>> m["roc_auc_class:k"], m["predicted_as_class:k"], m["count_spurious_class:k"]
    (0.75, 0.5, 2)
    """
    if frame.is_empty():
        raise ValueError("no predictions to evaluate")
    missing = int(frame[score].null_count())
    # ignored below (operator): polars types min()/max() as any literal; the score column is numeric
    low, high = (frame[score].min() or 0.0) - 1, (frame[score].max() or 0.0) + 1  # type: ignore[operator]
    frame = frame.with_columns(pl.col(score).fill_null(pl.when(pl.col(kind) == "real").then(low).otherwise(high)))
    metrics: Metrics = {}
    per_class: dict[str, list[float]] = {"ap": [], "roc_auc": [], "predicted_as_class": []}
    for (name,), rows in frame.group_by([label], maintain_order=True):
        spurious = rows.filter(pl.col(kind) == "spurious")
        real = rows.filter(pl.col(kind) == "real")[score].to_list()
        if not real or spurious.is_empty():
            raise ValueError(f"class {name!r} has {len(real)} real and {spurious.height} spurious-only rows; "
                             "each class needs both")
        result = spurious_score(real, spurious[score].to_list())
        metrics[f"ap_class:{name}"], metrics[f"roc_auc_class:{name}"] = result["ap"], result["roc_auc"]
        metrics[f"count_real_class:{name}"] = result["n_positive"]
        metrics[f"count_spurious_class:{name}"] = result["n_negative"]
        per_class["ap"].append(result["ap"])
        per_class["roc_auc"].append(result["roc_auc"])
        if pred:
            missing += int(spurious[pred].null_count())
            # ignored below (arg-type): polars types mean() as a wide union; a numeric column's is a float
            fooled = float((spurious[pred].cast(pl.String) == str(name)).fill_null(True).mean())  # type: ignore[arg-type]
            metrics[f"predicted_as_class:{name}"] = fooled
            per_class["predicted_as_class"].append(fooled)
    for key, values in per_class.items():
        if values:
            metrics[f"{key}_mean"] = float(np.mean(values))
    metrics["missing_predictions"] = missing
    return metrics
