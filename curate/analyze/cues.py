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
from collections.abc import Iterable, Iterator

import numpy as np
import polars as pl

from curate.records import NEGATIVE_OF, Evidence, EvidenceRole, Item, Verdict
from curate.verdicts import ABSENT, PRESENT
from curate.workspace.evidence import evidence_frame

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


PRESENCE_SCHEMA = {"item_id": pl.String, "class_label": pl.String, "attribute": pl.String, "taxonomy_type": pl.String,
                   "score": pl.Float64, "present": pl.Boolean, "own": pl.Boolean}


def labels_frame(items: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """``item_id, class_label`` of the labelled items of an items frame (``Catalog.items_frame``)."""
    return items.lazy().filter(pl.col("label").is_not_null()).select("item_id", pl.col("label").alias("class_label"))


def presence_scan(evidence: pl.LazyFrame, labels: pl.LazyFrame, threshold: float) -> pl.LazyFrame:
    """``PRESENCE_SCHEMA`` rows from an evidence scan (``Catalog.evidence_scan``) about labelled items
    (``labels_frame``): evidence about the class object itself (role ``core``) is left out, ``own``
    is false for rows scored only as negatives for another class's cue. Where several runs or
    proposers scored one (item, cue), the row of the first run (by id) counts."""
    rows = (evidence.filter(pl.col("role") != EvidenceRole.CORE.value)
            .join(labels, on="item_id", how="inner")
            .select("item_id", "class_label", "attribute", "taxonomy_type", "run_id", "source",
                    score=pl.col("score").fill_null(0.0),
                    own=pl.col("extra").str.json_path_match(f"$.{NEGATIVE_OF}").is_null()))
    if rows.select(pl.struct("run_id", "source").n_unique()).collect().item() > 1:
        rows = rows.sort("run_id", "source", maintain_order=True).unique(["item_id", "attribute"], keep="first",
                                                                          maintain_order=True)
    return rows.with_columns(present=pl.col("score") >= threshold).select(*PRESENCE_SCHEMA)


def presence_from_evidence(evidence: Iterable[Evidence], items: dict[str, Item], threshold: float) -> pl.DataFrame:
    """``presence_scan`` of evidence records about ``items``, as one frame in (item, attribute) order."""
    labels = pl.DataFrame({"item_id": list(items), "label": [item.label for item in items.values()]},
                          schema={"item_id": pl.String, "label": pl.String})
    return (presence_scan(evidence_frame(evidence).lazy(), labels_frame(labels), threshold)
            .sort("item_id", "attribute").collect())


def presence_from_verdicts(verdicts: Iterable[Verdict], labels: pl.LazyFrame) -> pl.DataFrame:
    """The same table from human verdicts about labelled items (``labels_frame``); ``unsure`` and
    unknown values are left out."""
    rows = [(v.item_id, v.attribute, v.taxonomy_type, VERDICT_PRESENT[v.value])
            for v in verdicts if v.value in VERDICT_PRESENT]
    frame = pl.DataFrame(rows, schema={"item_id": pl.String, "attribute": pl.String, "taxonomy_type": pl.String,
                                       "present": pl.Boolean}, orient="row").with_row_index("order")
    return (frame.lazy().join(labels, on="item_id", how="inner").sort("order")
            .with_columns(score=pl.col("present").cast(pl.Float64), own=pl.lit(True))
            .select(*PRESENCE_SCHEMA).unique(["item_id", "attribute"], keep="first", maintain_order=True).collect())


def predictivity(scores: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """(accuracy of out-of-fold Gaussian naive Bayes predictions from one score, majority-class accuracy).

    >>> acc, base = predictivity(np.r_[np.zeros(10), np.ones(10)], np.array(["a"] * 10 + ["b"] * 10))
    >>> acc, base
    (1.0, 0.5)
    """
    values, counts = np.unique(labels, return_counts=True)
    majority = float(counts.max() / counts.sum())
    n_splits = min(folds, int(counts.min()))
    if len(values) < 2 or n_splits < 2:
        return majority, majority
    x, correct = scores.reshape(-1, 1), 0
    assigned = stratified_folds(labels, n_splits, seed)
    for fold in range(n_splits):
        train, test = np.flatnonzero(assigned != fold), np.flatnonzero(assigned == fold)
        if np.ptp(x[train]) == 0:  # a constant score has no variance to fit: predict the fold's majority
            seen, seen_counts = np.unique(labels[train], return_counts=True)
            predicted = np.full(len(test), seen[seen_counts.argmax()])
        else:
            predicted = gaussian_nb_predictions(x[train], labels[train], x[test])
        correct += int((predicted == labels[test]).sum())
    return correct / len(labels), majority


def stratified_folds(labels: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """The test fold of each row, as ``sklearn.model_selection.StratifiedKFold(n_splits, shuffle=True,
    random_state=seed)`` assigns them (its algorithm, so the same folds), without importing
    scikit-learn (seconds of every analysis).

    >>> stratified_folds(np.array(["a", "b"] * 4), 2, 0).tolist()
    [1, 0, 1, 1, 0, 0, 0, 1]
    """
    rng = np.random.RandomState(seed)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    _, by_appearance = np.unique(first, return_inverse=True)  # classes numbered in order of appearance
    encoded = by_appearance[inverse.reshape(-1)]
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::n_splits], minlength=len(first)) for i in range(n_splits)])
    assigned = np.empty(len(labels), dtype=np.int64)
    for k in range(len(first)):
        for_class = np.arange(n_splits).repeat(allocation[:, k])
        rng.shuffle(for_class)
        assigned[encoded == k] = for_class
    return assigned


def gaussian_nb_predictions(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """What ``sklearn.naive_bayes.GaussianNB().fit(x_train, y_train).predict(x_test)`` predicts, in its
    arithmetic (so the same numbers) without its per-fit overhead, for (n, 1) arrays of one score.

    >>> gaussian_nb_predictions(np.array([[0.0], [0.1], [0.9], [1.0]]), np.array(["a", "a", "b", "b"]),
    ...                         np.array([[0.2], [0.8]])).tolist()
    ['a', 'b']
    """
    classes, counts = np.unique(y_train, return_counts=True)
    epsilon = 1e-9 * np.var(x_train, axis=0).max()
    prior = counts.astype(np.float64) / counts.astype(np.float64).sum()
    joint = []
    for k, label in enumerate(classes):
        own = x_train[y_train == label]
        mean = np.average(own, axis=0)
        var = np.average((own - mean) ** 2, axis=0) + epsilon
        log_likelihood = -0.5 * np.sum(np.log(2.0 * np.pi * var))
        log_likelihood -= 0.5 * np.sum(((x_test - mean) ** 2) / var, 1)
        joint.append(np.log(prior[k]) + log_likelihood)
    return classes[np.argmax(np.array(joint).T, axis=1)]


def cue_statistics(presence: pl.DataFrame | pl.LazyFrame, evidence_kind: str) -> pl.DataFrame:
    """One row per (class, cue) with the statistics above, ranked within each class by lift, then
    P(cue | class). Undefined values (a cue never present: no P(class | cue), no lift) are null.
    Without an ``own`` column every class scored gets a row.

    Counts are polars aggregations over the (lazy) presence table; predictivity reads the scores of
    as many cues at a time as fit in ``ROWS_PER_PASS`` rows, so memory is bounded whatever the
    table's size and a table of many cues is read in few passes.
    """
    scan = presence.lazy().with_row_index("order")
    if "own" not in scan.collect_schema():
        scan = scan.with_columns(own=pl.lit(True))
    pairs = scan.group_by("attribute", "class_label").agg(
        n_class=pl.len(), n_both=pl.col("present").sum(), listed=pl.col("own").any(),
        taxonomy_type=pl.col("taxonomy_type").sort_by("order").first(), first=pl.col("order").min(),
    ).collect(engine="streaming")
    rows = []
    cues = [(str(attribute), scored.sort("class_label"))
            for (attribute,), scored in pairs.sort("first").group_by(["attribute"], maintain_order=True)]
    scores = _cue_scores(scan, [(attribute, int(scored["n_class"].sum())) for attribute, scored in cues])
    for attribute, scored in cues:
        n_scored, n_cue, n_classes = int(scored["n_class"].sum()), int(scored["n_both"].sum()), scored.height
        acc, majority = predictivity(*next(scores))
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


ROWS_PER_PASS = 250_000
"""How many presence rows predictivity reads in one pass (about 20 MB): the cues of a pass are read
together, a cue larger than this alone."""


def _cue_scores(scan: pl.LazyFrame, sizes: list[tuple[str, int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(scores, class codes in the classes' sorted order) of each cue of ``sizes`` (cue, rows), in
    that order, each in ``item_id`` order (a scan's row order can change from one run to the next);
    cues read together while they fit in ``ROWS_PER_PASS`` rows."""
    batch: list[str] = []
    rows = 0
    for index, (attribute, size) in enumerate(sizes):
        batch.append(attribute)
        rows += size
        if index + 1 < len(sizes) and rows + sizes[index + 1][1] <= ROWS_PER_PASS:
            continue
        frame = (scan.filter(pl.col("attribute").is_in(pl.Series(batch, dtype=pl.String).implode()))
                 .select("attribute", "item_id", "score",
                         code=pl.col("class_label").rank("dense").over("attribute").cast(pl.Int64))
                 .collect(engine="streaming").sort("item_id"))  # a stable order: the folds depend on it
        parts = frame.partition_by("attribute", as_dict=True)  # rows keep their order in each part
        for name in batch:
            yield parts[(name,)]["score"].to_numpy(), parts[(name,)]["code"].to_numpy()
        batch, rows = [], 0


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
