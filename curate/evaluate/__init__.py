"""Evaluate: metrics of a model's predictions on a benchmark, as recorded runs.

Evaluators are a registry (``groups``, ``mcq``, ``focus``, ``spurious-imagenet``, ``few-shot``); each reads a
predictions table and returns named metrics (see ``curate.evaluate.metrics``). Every evaluation is
an ``evaluate`` run whose metrics are kept in the ``evaluations`` side table.

>>> sorted(EVALUATORS)
['few-shot', 'focus', 'groups', 'mcq', 'spurious-imagenet']
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from curate.evaluate.metrics import (
    Metrics,
    episode_metrics,
    focus_metrics,
    group_metrics,
    mcq_metrics,
    spurious_only_metrics,
)
from curate.options import check_options
from curate.records import Run
from curate.registry import Registry
from curate.tabular import read_table
from curate.workspace import Workspace

EVALUATIONS_TABLE = "evaluations"
Missing = Literal["error", "wrong"]


class EvaluateError(ValueError):
    """The predictions cannot be evaluated as asked (missing column, empty split ...)."""


Evaluator = Callable[..., Metrics]
EVALUATORS: Registry[Evaluator] = Registry("evaluation", EvaluateError)
register_evaluator = EVALUATORS.register


def _require(frame: pl.DataFrame, *columns: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EvaluateError(f"the predictions have no column {', '.join(missing)}; columns: {', '.join(frame.columns)}")


def _check_missing(frame: pl.DataFrame, column: str, missing: Missing) -> None:
    """A row without a prediction is an error unless ``missing="wrong"`` counts it as wrong."""
    count = frame[column].null_count()
    if count and missing == "error":
        raise EvaluateError(f"{count} of {frame.height} rows have no {column}; give every prediction, or set "
                            f"missing=wrong to count them as wrong")


@register_evaluator("groups")
def evaluate_groups(frame: pl.DataFrame, y: str = "y", pred: str = "pred", group_fields: tuple[str, ...] = ("y", "a"),
                    split_column: str = "split", eval_split: str = "test", train_split: str = "train",
                    missing: Missing = "error", bootstrap: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> Metrics:
    """Group metrics on the ``eval_split`` rows; training-group counts from the ``train_split`` rows
    (those rows need no predictions). Without a split column every row is evaluated. Rows without a
    prediction are an error (``missing="wrong"``: wrong, and counted). Accuracies come with
    ``confidence`` percentile-bootstrap intervals over ``bootstrap`` resamples within each group,
    seeded by ``seed`` (``curate.evaluate.metrics.group_metrics``)."""
    _require(frame, y, *group_fields)
    train_counts = None
    if split_column in frame.columns:
        splits = frame[split_column].cast(pl.String)
        train = frame.filter(splits == train_split)
        if train.height:
            train_counts = {tuple(k): n for *k, n in train.group_by(list(group_fields)).len().iter_rows()}
        frame = frame.filter(splits == eval_split)
        if frame.is_empty():
            raise EvaluateError(f"no rows with {split_column} == {eval_split!r}")
    _require(frame, pred)
    _check_missing(frame, pred, missing)
    try:
        return group_metrics(frame, y, pred, group_fields, train_counts, bootstrap=bootstrap, confidence=confidence,
                             seed=seed)
    except ValueError as problem:
        raise EvaluateError(str(problem)) from None


@register_evaluator("mcq")
def evaluate_mcq(frame: pl.DataFrame, answer: str = "answer", prediction: str = "prediction",
                 types: str = "spurious_correlation_type", choices: str = "choices",
                 missing: Missing = "error") -> Metrics:
    """Accuracy of multiple-choice answers, overall and per taxonomy type; answers are read from
    free text (``curate.evaluate.metrics.parse_choice``). A null prediction is an error unless
    ``missing="wrong"``; an answer that names no choice is wrong (``unread_predictions``)."""
    _require(frame, answer, prediction, types)
    _check_missing(frame, prediction, missing)
    try:
        return mcq_metrics(frame, answer, prediction, types, choices)
    except ValueError as problem:
        raise EvaluateError(str(problem)) from None


@register_evaluator("focus")
def evaluate_focus(frame: pl.DataFrame, correct: str = "correct", n_uncommon: str = "n_uncommon",
                   missing: Missing = "error") -> Metrics:
    """Accuracy per number of uncommon attributes and the gap per attribute."""
    _require(frame, correct, n_uncommon)
    _check_missing(frame, correct, missing)
    return focus_metrics(frame, correct, n_uncommon)


@register_evaluator("spurious-imagenet")
def evaluate_spurious_imagenet(frame: pl.DataFrame, label: str = "class_label", score: str = "score",
                               kind: str = "kind", pred: str | None = None, missing: Missing = "error") -> Metrics:
    """Per class k: AP and ROC AUC separating its real test images (``kind == "real"``, positives) from
    its spurious-only images (``kind == "spurious"``, negatives) by the model's probability of k
    (``score``); their means over classes; and, given ``pred`` (the predicted class name), the share of
    spurious-only images predicted as k (``curate.evaluate.metrics.spurious_only_metrics``). With
    ``missing="wrong"`` a missing score ranks on the wrong side (below every real image's score when
    real, above every spurious one's when spurious) and a missing prediction counts as predicted k."""
    _require(frame, label, score, kind, *([pred] if pred else []))
    _check_missing(frame, score, missing)
    if pred:
        _check_missing(frame.filter(pl.col(kind) == "spurious"), pred, missing)
    unknown = sorted(set(frame[kind].drop_nulls().unique()) - {"real", "spurious"})
    if unknown or frame[kind].null_count():
        raise EvaluateError(f"{kind} is 'real' (a class's test image) or 'spurious' (a spurious-only image), "
                            f"not {unknown or [None]}")
    try:
        return spurious_only_metrics(frame, label, score, kind, pred)
    except ValueError as problem:
        raise EvaluateError(str(problem)) from None


@register_evaluator("few-shot")
def evaluate_few_shot(frame: pl.DataFrame, truth: str = "way", pred: str = "pred", episode: str = "episode",
                      role: str = "role", missing: Missing = "error", confidence: float = 0.95) -> Metrics:
    """Few-shot episodes (the context-shift release's ``episodes`` table): the query rows (all rows
    without a ``role`` column) are scored, ``pred`` against ``truth`` (the way, or the concept with
    ``truth=concept``); accuracy per episode and its mean with a normal interval
    (``curate.evaluate.metrics.episode_metrics``). Support rows need no prediction."""
    _require(frame, truth, pred, episode)
    if role in frame.columns:
        frame = frame.filter(pl.col(role) == "query")
    _check_missing(frame, pred, missing)
    try:
        return episode_metrics(frame, episode, truth, pred, confidence)
    except ValueError as problem:
        raise EvaluateError(str(problem)) from None


@dataclass(frozen=True, slots=True)
class EvaluateResult:
    """The metrics of one evaluation and its stored run."""

    run: Run
    metrics: Metrics
    seconds: float

    def summary(self) -> str:
        """One line for the end of a command."""
        headline = ("acc_avg", "acc_wg", "ap_mean", "roc_auc_mean", "predicted_as_class_mean")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in self.metrics.items()
                          if k.startswith(headline) and isinstance(v, float))
        missing = self.metrics.get("missing_predictions", 0)
        counted = f", {missing} missing predictions counted wrong" if missing else ""
        return f"evaluate {self.run.config['kind']}: {shown}{counted} [run {self.run.run_id}]"


def evaluate(workspace: Workspace, kind: str, predictions: str | Path | pl.DataFrame, **options: Any
             ) -> EvaluateResult:
    """Evaluate predictions (a CSV, parquet or JSON-lines table, or a polars DataFrame) as a recorded
    ``evaluate`` run; the run's config holds the table's sha256 either way."""
    started = time.perf_counter()
    evaluator = EVALUATORS[kind]
    options = check_options(evaluator, options, f"evaluation {kind!r}", skip=("frame",), error=EvaluateError)
    if isinstance(predictions, pl.DataFrame):
        frame, buffer = predictions, io.BytesIO()
        predictions.write_parquet(buffer)
        where, digest = "a DataFrame", hashlib.sha256(buffer.getvalue()).hexdigest()
    else:
        path = Path(predictions).resolve()
        frame, where, digest = read_table(path), str(path), hashlib.sha256(path.read_bytes()).hexdigest()
    config = {"kind": kind, "predictions": where, "sha256": digest, "options": options}
    with workspace.runs.track("evaluate", kind, config, extend_completed=True) as run:
        metrics = evaluator(frame, **options)
        workspace.tables.write(EVALUATIONS_TABLE, pl.DataFrame(
            {"run_id": [run.run_id], "kind": [kind], "metrics": [json.dumps(metrics, sort_keys=True)]}),
            part=run.run_id)
    return EvaluateResult(workspace.runs.get(run.run_id), metrics, time.perf_counter() - started)


__all__ = ["EVALUATORS", "EvaluateError", "EvaluateResult", "Metrics", "evaluate", "register_evaluator"]
