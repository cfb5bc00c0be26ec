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
  scores are constant predicts its majority class. An item's fold follows from its id (``fold_key``:
  5 folds, fewer when a class has fewer images), the same for every cue and every run, so the
  models are made from per-fold sums in one aggregation, not from a shuffle of each cue's rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curate.item_keys import item_key
from curate.records import NEGATIVE_OF, EvidenceRole, Verdict
from curate.verdicts import ABSENT, PRESENT
from curate.workspace import Workspace

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


PRESENCE_SCHEMA = {"item": pl.UInt32, "class_label": pl.Categorical, "fold_key": pl.UInt8,
                   "attribute": pl.Categorical, "taxonomy_type": pl.Categorical, "score": pl.Float64,
                   "present": pl.Boolean, "own": pl.Boolean}
"""Presence rows: ``item`` is the item's position in its labels frame (``labels_frame``), and the
texts are categories, so that 10M rows are narrow to write, read and group (ids were most of a
row's bytes, and string keys doubled the memory of a streamed join or group-by)."""

ID_HASHES = (pl.col("item_id").hash(0).alias("id_hash"), pl.col("item_id").hash(1).alias("id_check"))
"""Two independent 64-bit hashes of an item id: evidence meets its labels on the first and keeps the
rows whose second agrees too (a false match needs both to collide: about 2^-68 with a billion ids
on each side), which spares the join a table of the ids themselves."""


def labels_frame(items: pl.DataFrame | pl.LazyFrame, offset: int = 0) -> pl.LazyFrame:
    """``item_id, item, class_label, fold_key, id_hash, id_check`` of the labelled items of an items
    frame (``Catalog.items_frame``): ``item`` numbers them in the frame's order from ``offset``, and
    each item's fold key and ``ID_HASHES`` are worked out once here, not on each of its evidence rows.

    >>> labels = labels_frame(pl.DataFrame({"item_id": ["0a", "0b", "3d"], "label": ["dog", None, "cat"]}))
    >>> labels.select("item_id", "item", "class_label", "fold_key").collect().rows()
    [('0a', 0, 'dog', 27), ('3d', 1, 'cat', 50)]
    """
    return (items.lazy().filter(pl.col("label").is_not_null() & pl.col("item_id").is_not_null())  # a null id
            # would hash to a value a null evidence id meets
            .with_row_index("item", offset)
            .select("item_id", "item", pl.col("label").alias("class_label"), fold_key(), *ID_HASHES))


LABEL_BATCH = 65_536  # items read and labelled at a time (``labels_file``)


def labels_file(workspace: Workspace, scratch: Path) -> pl.LazyFrame:
    """The workspace's labelled items (``labels_frame``) written to the folder ``scratch/labels`` a
    batch at a time, scanned from there: what joins the evidence and gives ids back, with no copy of
    every id held, neither while they are read nor while the evidence streams (at 500k items a frame
    of them all took 120 MiB to make, which the evidence's join could not reuse).

    >>> import tempfile
    >>> labels_file(Workspace.init(tempfile.mkdtemp()), Path(tempfile.mkdtemp())).collect().height
    0
    """
    folder, written = scratch / "labels", 0
    folder.mkdir()
    batches = workspace.catalog.item_batches(columns=["label"], batch_size=LABEL_BATCH)
    for number, items in enumerate(itertools.chain(batches, [pl.DataFrame(schema={"item_id": pl.String,
                                                                                   "label": pl.String})])):
        labels = labels_frame(items, offset=written).collect()  # the last is empty: a scan needs one file
        labels.write_parquet(folder / f"{number:08d}.parquet", compression="uncompressed")
        written += labels.height
    return pl.scan_parquet(folder / "*.parquet")


def presence_scan(evidence: pl.LazyFrame, labels: pl.LazyFrame, threshold: float,
                  one_run: bool = False) -> pl.LazyFrame:
    """``PRESENCE_SCHEMA`` rows from an evidence scan (``Catalog.evidence_scan``) about labelled items
    (``labels_frame``): evidence about the class object itself (role ``core``) is left out, ``own``
    is false for rows scored only as negatives for another class's cue. Where several runs or
    proposers scored one (item, cue), the row of the first run (by id) counts; ``one_run`` says
    the caller knows the scan holds one run of one proposer (nothing to look for). Items meet
    their labels by ``ID_HASHES``."""
    evidence = evidence.filter(pl.col("role") != EvidenceRole.CORE.value)
    table = labels.select("id_hash", "id_check", *_typed("item", "class_label", "fold_key"))
    rows = (evidence.select(*ID_HASHES, *_typed("attribute", "taxonomy_type"), "run_id", "source",
                            score=pl.col("score").fill_null(0.0), own=pl.col(NEGATIVE_OF).is_null())
            .join(table, on="id_hash", how="inner", build_side="force_right")
            .filter(pl.col("id_check") == pl.col("id_check_right")))
    if not one_run and evidence.group_by("run_id", "source").len().collect(engine="streaming").height > 1:
        rows = rows.sort("run_id", "source", maintain_order=True).unique(["item", "attribute"], keep="first",
                                                                          maintain_order=True)
    return rows.with_columns(present=pl.col("score") >= threshold).select(*PRESENCE_SCHEMA)


def _typed(*columns: str) -> list[pl.Expr]:
    """``columns`` cast to their ``PRESENCE_SCHEMA`` types."""
    return [pl.col(column).cast(PRESENCE_SCHEMA[column]) for column in columns]


def presence_from_verdicts(verdicts: Iterable[Verdict], labels: pl.LazyFrame) -> pl.DataFrame:
    """The same table from human verdicts about labelled items (``labels_frame``); ``unsure`` and
    unknown values are left out."""
    rows = [(v.item_id, v.attribute, v.taxonomy_type, VERDICT_PRESENT[v.value])
            for v in verdicts if v.value in VERDICT_PRESENT]
    frame = pl.DataFrame(rows, schema={"item_id": pl.String, "attribute": pl.String, "taxonomy_type": pl.String,
                                       "present": pl.Boolean}, orient="row").with_row_index("order")
    return (frame.lazy().join(labels, on="item_id", how="inner").sort("order")
            .with_columns(score=pl.col("present").cast(pl.Float64), own=pl.lit(True))
            .select(*_typed(*PRESENCE_SCHEMA)).unique(["item", "attribute"], keep="first", maintain_order=True)
            .collect())


FOLDS = 5
FOLD_KEYS = 60
"""Every item has a fold key in [0, 60) (``fold_key``); with k folds (2 to 5, all dividing 60) its test
fold is its key mod k, so a cue's folds come from one aggregation by key whatever k it needs."""

def fold_key() -> pl.Expr:
    """Each row's fold key from its ``item_id``: its order key (``curate.item_keys``) mod 60, so the
    folds are the same everywhere and follow the items, not the rows.

    >>> pl.DataFrame({"item_id": ["ab" * 32, "cd" * 32]}).select(fold_key())["fold_key"].to_list()
    [22, 52]
    """
    return (item_key() % FOLD_KEYS).cast(pl.Int64).alias("fold_key")


@dataclass(frozen=True, slots=True)
class FoldModels:
    """The Gaussian naive Bayes model of each fold of one cue, made from its training folds' sufficient
    statistics: scikit-learn's ``GaussianNB().fit`` on the same rows (class priors from the counts,
    per-class mean and variance plus ``1e-9`` times the variance of all training scores), and, where
    a fold's training scores are constant, the majority class it predicts instead (-1 otherwise).
    Arrays are (fold, class) for the cue's classes in sorted order."""

    log_prior: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    constant: np.ndarray
    rows: int

    @classmethod
    def fit(cls, cells: np.ndarray, folds: int) -> FoldModels:
        """From ``cells`` (fold key, class, [n, sum, sum of squares, min, max] of the scores).

        >>> cells = np.zeros((FOLD_KEYS, 2, 5))
        >>> cells[:, 0] = [1, 0.2, 0.04, 0.2, 0.2]  # class 0 scores 0.2, class 1 0.8, one image a key
        >>> cells[:, 1] = [1, 0.8, 0.64, 0.8, 0.8]
        >>> FoldModels.fit(cells, 2).mean.round(3).tolist()
        [[0.2, 0.8], [0.2, 0.8]]
        """
        keys = np.arange(FOLD_KEYS) % folds
        sums = np.stack([cells[keys == fold, :, :3].sum(axis=0) for fold in range(folds)])
        lows = np.stack([cells[keys == fold, :, 3].min(axis=0) for fold in range(folds)])
        highs = np.stack([cells[keys == fold, :, 4].max(axis=0) for fold in range(folds)])
        train = sums.sum(axis=0) - sums  # (fold, class, [n, sum, squares]) of every other fold
        n, total, squares = train[..., 0], train[..., 1], train[..., 2]
        others = ~np.eye(folds, dtype=bool)
        low = np.array([lows[others[fold]].min() for fold in range(folds)])
        high = np.array([highs[others[fold]].max() for fold in range(folds)])
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(n > 0, total / n, 0.0)
            everything = train.sum(axis=1)  # each fold's training scores, all classes
            spread = np.maximum(everything[:, 2] / everything[:, 0] - (everything[:, 1] / everything[:, 0]) ** 2, 0)
            var = np.where(n > 0, np.maximum(squares / n - mean**2, 0.0), 1.0) + 1e-9 * spread[:, None]
            log_prior = np.log(n / n.sum(axis=1, keepdims=True))
        # a fold with no training rows (every image of a tiny cue in one fold) predicts the cue's majority
        majority = np.where(n.sum(axis=1) > 0, n.argmax(axis=1), cells[..., 0].sum(axis=0).argmax())
        constant = np.where((high == low) | (n.sum(axis=1) == 0), majority, -1)
        return cls(log_prior, mean, var, constant, int(cells[..., 0].sum()))


def _joint(model: FoldModels, fold: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each row's joint log-likelihood of each class under its fold's model, in scikit-learn's
    arithmetic and order: log prior + (-1/2 log(2 pi var) - 1/2 (x - mean)^2 / var)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        half_log = -0.5 * np.log(2.0 * np.pi * model.var[fold])
        return model.log_prior[fold] + (half_log - 0.5 * ((x[:, None] - model.mean[fold]) ** 2) / model.var[fold])


def _predicted(model: FoldModels, fold: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The class each row's fold model predicts for score ``x`` (``GaussianNB.predict``)."""
    return np.where(model.constant[fold] >= 0, model.constant[fold], np.argmax(_joint(model, fold, x), axis=1))


Piece = tuple[float, float, int]


def _pieces(models: Sequence[tuple[FoldModels, int]]) -> list[list[Piece]]:
    """For each (model, fold), the intervals ``[low, high)`` of the real line on which that fold's
    model predicts one class (``(low, high, class)``, in order): the upper envelope of the classes'
    log-likelihood parabolas, swept from minus infinity, each step to the first point where another
    class overtakes. Folds with as many classes are swept together, one numpy step for all of them
    (one (cue, fold) at a time cost 0.5 ms with 2 classes and 6 ms with 300, in Python's overhead)."""
    found: list[list[Piece]] = [[] for _ in models]
    sweeping: dict[int, list[int]] = {}  # class count -> the models that need a sweep
    for n, (model, fold) in enumerate(models):
        if model.constant[fold] >= 0:
            found[n] = [(-math.inf, math.inf, int(model.constant[fold]))]
        else:
            sweeping.setdefault(model.mean.shape[1], []).append(n)
    for numbers in sweeping.values():
        var = np.stack([models[n][0].var[models[n][1]] for n in numbers])
        mean = np.stack([models[n][0].mean[models[n][1]] for n in numbers])
        log_prior = np.stack([models[n][0].log_prior[models[n][1]] for n in numbers])
        with np.errstate(divide="ignore", invalid="ignore"):
            a, b = -0.5 / var, mean / var  # each class's log-likelihood is a x^2 + b x + c
            c = log_prior - 0.5 * np.log(2.0 * np.pi * var) - 0.5 * mean * mean / var
        for n, pieces in zip(numbers, _sweep(a, b, c), strict=True):
            found[n] = pieces
    return found


def _first_best(candidates: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Per row, the first column among ``candidates`` with the largest first key, ties broken by the
    next key, and so on (``np.lexsort``'s last element, one row at a time)."""
    for key in keys:
        values = np.where(candidates, key, -np.inf)
        candidates = candidates & (values == values.max(axis=1, keepdims=True))
    return candidates.argmax(axis=1)


def _sweep(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> list[list[Piece]]:
    """``_pieces`` of models of as many classes, as (model, class) arrays of their parabolas."""
    live = np.isfinite(c)
    # the winner far to the left: the widest parabola, then the smallest slope, then the highest, then the first
    winner = _first_best(live, a, -b, c)
    low = np.full(len(a), -math.inf)
    pieces: list[list[Piece]] = [[] for _ in range(len(a))]
    going = np.arange(len(a))  # the models still sweeping
    while going.size:
        rows = np.arange(going.size)
        ga, gb, gc, won, start = a[going], b[going], c[going], winner[going], low[going][:, None]
        da, db, dc = ga - ga[rows, won][:, None], gb - gb[rows, won][:, None], gc - gc[rows, won][:, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            root = np.sqrt(np.maximum(db * db - 4 * da * dc, 0.0))
            q = -0.5 * (db + np.where(db >= 0, root, -root))  # the stable quadratic formula
            first, second = np.minimum(q / da, dc / q), np.maximum(q / da, dc / q)
            real = (da != 0) & (db * db - 4 * da * dc > 0)
            # where each class first rises above the winner after ``low``
            overtakes = np.where(real & (da > 0) & (second > start), second,  # np.select, at a tenth of its cost
                                 np.where(real & (da < 0) & (first > start), first,
                                          np.where((da == 0) & (db > 0) & (-dc / db > start), -dc / db, math.inf)))
        overtakes[rows, won] = math.inf
        overtakes[~live[going]] = math.inf
        at = overtakes.min(axis=1)
        for row, model in enumerate(going):
            pieces[model].append((float(low[model]), float(at[row]), int(won[row])))
        moving = np.isfinite(at)
        going, overtakes, at, ga, gb = going[moving], overtakes[moving], at[moving], ga[moving], gb[moving]
        tied = overtakes <= (at + 1e-12 * np.maximum(1.0, np.abs(at)))[:, None]
        # of those overtaking there, the one rising fastest, then the widest, then the first
        winner[going] = _first_best(tied, 2 * ga * at[:, None] + gb, ga)
        low[going] = at
    return pieces


BAND = 1e-7
"""Rows within this distance (relative, at least absolute) of a point where a model's prediction
changes are predicted by evaluating the model, not by the interval they fall in: the sweep's
arithmetic and the model's differ in the last bits there."""


def _bounds(pieces: list[Piece]) -> list[tuple[int, float, float, float, float]]:
    """Each interval of ``_pieces`` as (class, reach low, sure low, sure high, reach high): rows in
    ``[sure low, sure high)`` are predicted its class; rows in ``[reach low, reach high)`` but not
    sure are within ``BAND`` of an end and are evaluated. The reaches of one class's intervals never
    overlap (they meet halfway across a narrow gap), so no row is counted twice.

    >>> _bounds([(-math.inf, 0.5, 0), (0.5, math.inf, 1)])[0]
    (0, -inf, -inf, 0.4999999, 0.5000001)
    """
    band = [BAND * max(1.0, abs(end)) if math.isfinite(end) else 0.0 for _, end, _ in pieces]
    bounds = [[winner, low - (band[n - 1] if n else 0.0), low + (band[n - 1] if n else 0.0), high - band[n],
               high + band[n]] for n, (low, high, winner) in enumerate(pieces)]
    last: dict[int, int] = {}
    for n, (low, _, winner) in enumerate(pieces):
        if winner in last and bounds[last[winner]][4] > bounds[n][1]:  # the reaches overlap: meet halfway
            bounds[last[winner]][4] = bounds[n][1] = (pieces[last[winner]][1] + low) / 2
        last[winner] = n
    return [(int(winner), low, sure_low, sure_high, high) for winner, low, sure_low, sure_high, high in bounds]


def _predictivity(rows: pl.LazyFrame, cells: pl.DataFrame) -> dict[str, tuple[float, float]]:
    """Per cue, (accuracy of out-of-fold Gaussian naive Bayes predictions of the class from the
    score, majority-class accuracy), from ``cells`` (one row per cue, class and fold key) and one
    streamed pass over ``rows`` (``attribute, class_label, fold_key, score``).

    Each fold model's prediction is constant on intervals of the score (``_pieces``), so the pass
    only counts the rows inside an interval of their own class: a join and a filter in polars, with
    no per-row model arithmetic except for the few rows next to an interval's ends (``_bounds``)."""
    results: dict[str, tuple[float, float]] = {}
    models: dict[str, tuple[list[str], FoldModels, int]] = {}
    for (attribute,), part in cells.sort("attribute", "class_label", "fold_key").group_by(
            ["attribute"], maintain_order=True):
        classes = part["class_label"].unique(maintain_order=True).to_list()
        grid = np.zeros((FOLD_KEYS, len(classes), 5))
        grid[..., 3], grid[..., 4] = np.inf, -np.inf
        index = part.select(pl.col("class_label").rank("dense").cast(pl.Int64) - 1, "fold_key").to_numpy()
        grid[index[:, 1], index[:, 0]] = part.select("n", "total", "squares", "low", "high").to_numpy()
        counts = grid[..., 0].sum(axis=0)
        majority = float(counts.max() / counts.sum())
        folds = min(FOLDS, int(counts.min()))
        results[str(attribute)] = (majority, majority)
        if len(classes) >= 2 and folds >= 2:
            models[str(attribute)] = (classes, FoldModels.fit(grid, folds), folds)
    if not models:
        return results
    folds_of = [(attribute, fold) for attribute, (_, _, folds) in models.items() for fold in range(folds)]
    swept = _pieces([(models[attribute][1], fold) for attribute, fold in folds_of])
    intervals = [(attribute, models[attribute][0][winner], fold, *ends)
                 for (attribute, fold), pieces in zip(folds_of, swept, strict=True)
                 for winner, *ends in _bounds(pieces)]
    table = pl.DataFrame(intervals, orient="row", schema={
        "attribute": pl.String, "class_label": pl.String, "fold": pl.Int64, "reach_low": pl.Float64,
        "sure_low": pl.Float64, "sure_high": pl.Float64, "reach_high": pl.Float64}).lazy()
    fold_counts = pl.DataFrame({"attribute": list(models), "folds": [folds for _, _, folds in models.values()]}).lazy()
    keys = rows.collect_schema()  # the tables' texts typed as the rows' (strings or categories)
    table, fold_counts = (frame.with_columns(pl.col(c).cast(keys[c]) for c in frame.collect_schema() if c in keys
                                             and c != "fold") for frame in (table, fold_counts))
    score = pl.col("score")
    sure = (score >= pl.col("sure_low")) & (score < pl.col("sure_high"))
    inside = (rows.join(fold_counts, on="attribute", build_side="force_right")
              .with_columns(fold=pl.col("fold_key") % pl.col("folds"))
              .join(table, on=["attribute", "class_label", "fold"], build_side="force_right")
              .filter((score >= pl.col("reach_low")) & (score < pl.col("reach_high"))))
    # two streamed results of one pass: a list aggregation of the near rows per cue is not streamed
    # (polars gathered every joined row first: 476 MiB at 10M rows against 226 at 1M)
    counted, near_rows = pl.collect_all([inside.group_by("attribute").agg(sure=sure.sum()),
                                         inside.filter(~sure).select("attribute", "class_label", "fold", "score")],
                                        engine="streaming")
    near_of = near_rows.partition_by("attribute", as_dict=True, include_key=False)
    empty = near_rows.clear().drop("attribute")
    for attribute, inside_count in counted.iter_rows():
        classes, model, _ = models[attribute]
        near = near_of.get((attribute,), empty)
        code = {label: n for n, label in enumerate(classes)}
        truth = np.array([code[label] for label in near["class_label"]], dtype=np.int64)
        predicted = _predicted(model, near["fold"].to_numpy(), near["score"].to_numpy().astype(np.float64))
        results[attribute] = (float((inside_count + (predicted == truth).sum()) / model.rows), results[attribute][1])
    for attribute in set(models) - set(counted["attribute"]):  # no row inside an interval of its class
        results[attribute] = (0.0, results[attribute][1])
    return results


def _completed(presence: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Presence rows with the columns a table from elsewhere may lack: ``own`` (every row is its
    class's own) and ``fold_key`` (from ``item_id``)."""
    scan = presence.lazy()
    names = scan.collect_schema().names()
    if "own" not in names:
        scan = scan.with_columns(own=pl.lit(True))
    if "fold_key" not in names:
        scan = scan.with_columns(fold_key())
    return scan


def cue_statistics(presence: pl.DataFrame | pl.LazyFrame, evidence_kind: str) -> pl.DataFrame:
    """One row per (class, cue) with the statistics above, ranked within each class by lift, then
    P(cue | class). Undefined values (a cue never present: no P(class | cue), no lift) are null.
    Without an ``own`` column every class scored gets a row. A (class, cue)'s type is the one most
    of its rows carry (runs or annotators may differ; ties by name); cues tied in rank stay in
    alphabetical order.

    Two passes over the (lazy) presence table, whatever its size: one aggregation by (cue, class,
    fold key) gives the counts and the folds' sufficient statistics, and one streamed pass makes
    the out-of-fold predictions (``FoldModels``).

    >>> import hashlib
    >>> ids = [hashlib.sha256(bytes([n])).hexdigest() for n in range(8)]
    >>> presence = pl.DataFrame({"item_id": ids, "class_label": ["a", "b"] * 4,
    ...                          "attribute": "grass", "taxonomy_type": "Background",
    ...                          "score": [0.9, 0.1] * 4, "present": [True, False] * 4})
    >>> cue_statistics(presence, "machine:clip").select("class_label", "lift", "predictivity_gain").rows()
    [('a', 2.0, 0.5), ('b', 0.0, 0.5)]
    """
    scan = _completed(presence)
    text_keys = pl.col("attribute", "class_label", "taxonomy_type")  # grouped as categories: half the time and
    # memory of grouping strings
    by_type = scan.with_columns(text_keys.cast(pl.Categorical)).group_by(
        "attribute", "class_label", "fold_key", "taxonomy_type").agg(
        n=pl.len(), n_both=pl.col("present").sum(), listed=pl.col("own").any(),
        total=pl.col("score").sum(), squares=(pl.col("score") * pl.col("score")).sum(),
        low=pl.col("score").min(), high=pl.col("score").max(),
    ).collect(engine="streaming").with_columns(text_keys.cast(pl.String))
    cells = by_type.group_by("attribute", "class_label", "fold_key").agg(
        pl.col("n", "n_both", "total", "squares").sum(), pl.col("low").min(), pl.col("high").max())
    types = (by_type.group_by("attribute", "class_label", "taxonomy_type").agg(pl.col("n").sum())
             .sort(pl.col("taxonomy_type").is_null(), "n", "taxonomy_type", descending=[False, True, False])
             .group_by("attribute", "class_label", maintain_order=True).agg(pl.col("taxonomy_type").first()))
    pairs = (by_type.group_by("attribute", "class_label").agg(
        n_class=pl.col("n").sum(), n_both=pl.col("n_both").sum(), listed=pl.col("listed").any())
        .join(types, on=["attribute", "class_label"]).sort("attribute", "class_label"))
    accuracy = _predictivity(scan.select("attribute", "class_label", "fold_key", "score"), cells)
    rows = []
    for (attribute,), scored in pairs.group_by(["attribute"], maintain_order=True):
        n_scored, n_cue, n_classes = int(scored["n_class"].sum()), int(scored["n_both"].sum()), scored.height
        acc, majority = accuracy[str(attribute)]
        for row in scored.filter(pl.col("listed")).iter_rows(named=True):
            n_class, n_both = int(row["n_class"]), int(row["n_both"])
            p_class_given_cue = n_both / n_cue if n_cue else math.nan
            lift = p_class_given_cue / (n_class / n_scored) if n_cue else math.nan
            rows.append({
                "class_label": str(row["class_label"]), "attribute": str(attribute), "evidence": evidence_kind,
                "taxonomy_type": row["taxonomy_type"],
                "n_scored": n_scored, "n_class": n_class, "n_cue": n_cue, "n_both": n_both,
                "p_cue_given_class": n_both / n_class,
                **dict(zip(("p_cue_given_class_low", "p_cue_given_class_high"), wilson(n_both, n_class), strict=True)),
                "p_class_given_cue": p_class_given_cue,
                **dict(zip(("p_class_given_cue_low", "p_class_given_cue_high"), wilson(n_both, n_cue), strict=True)),
                "lift": lift, "pmi": math.log2(lift) if lift and not math.isnan(lift) else math.nan,
                "nmi": binary_nmi(n_scored, n_class, n_cue, n_both) if n_classes > 1 else math.nan,
                "predictivity_acc": acc, "majority_acc": majority, "predictivity_gain": acc - majority,
                "n_classes_scored": n_classes,
            })
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in STAT_COLUMNS})
    frame = pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col(pl.Float64).fill_nan(None))
    ranked = frame.sort(["class_label", "lift", "p_cue_given_class"], descending=[False, True, True],
                        nulls_last=True, maintain_order=True)
    return ranked.with_columns(pl.int_range(1, pl.len() + 1).over("class_label").alias("rank")).select(STAT_COLUMNS)


def binary_nmi(n: int, n_class: int, n_cue: int, n_both: int) -> float:
    """Normalised mutual information (arithmetic mean of the entropies, as scikit-learn's default)
    between "is this class" and "has this cue", from their 2x2 counts.

    >>> round(binary_nmi(8, 4, 4, 3), 4)
    0.1887
    """
    cells = np.array([[n_both, n_class - n_both], [n_cue - n_both, n - n_class - n_cue + n_both]], dtype=float)
    rows, cols = cells.sum(axis=1), cells.sum(axis=0)
    if (rows > 0).sum() == (cols > 0).sum() == 1:
        return 1.0  # neither splits the images: scikit-learn's convention

    def entropy(counts: np.ndarray) -> float:
        p = counts[counts > 0] / n
        return float(-(p * np.log(p)).sum())

    nonzero = cells > 0
    mutual = float((cells[nonzero] / n * np.log(cells[nonzero] * n / np.outer(rows, cols)[nonzero])).sum())
    mutual = max(mutual, 0.0)
    if mutual == 0.0:
        return 0.0
    return mutual / ((entropy(rows) + entropy(cols)) / 2)
