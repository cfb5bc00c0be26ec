"""Analyze: how spurious each cue is, from machine evidence or human verdicts, with pictures.

``analyze_cues`` is a recorded ``analyze`` run: its statistics go to the ``cue-stats`` side table
and its PNGs to ``reports/<run id>/`` in the workspace, where reports and dataset cards find them.
``measure_gaps`` is a recorded ``gap`` run: a model's spurious gaps go to the ``spurious-gaps``
side table.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from curate.analyze.cues import cue_statistics, labels_file, presence_from_verdicts, presence_scan
from curate.analyze.plots import image_strips, lift_heatmap
from curate.images import open_image
from curate.options import check_options
from curate.records import Run, Stage
from curate.verdicts import resolved_verdicts
from curate.workspace import Workspace

STATS_TABLE = "cue-stats"
DEFAULT_THRESHOLDS = {"detector": 0.05, "clip": 0.5}  # SpurLens' detector threshold; CLIP presence probability
RANKING_SEED = 0


def cue_seed(seed: int, *parts: str) -> list[int]:
    """A seed for ``numpy.random.default_rng`` from the run's seed and what it is for (class, cue, use),
    so every cue gets its own stream and a re-run the same one.

    >>> cue_seed(0, "dog", "grass") == cue_seed(0, "dog", "grass") != cue_seed(0, "dog", "sky")
    True
    """
    digest = hashlib.sha256("\n".join(parts).encode()).digest()
    return [seed, *(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))]


def rank_by_score(scores: dict[str, float], seed: int = RANKING_SEED, cue: Sequence[str] = ()) -> list[str]:
    """Item ids from the highest score to the lowest; ties broken by a shuffle seeded by ``seed`` and
    the ``cue`` (class, attribute), so cues that tie on most images do not share their extremes
    (SpurLens reshuffles per cue).

    >>> rank_by_score({"a": 0.2, "b": 0.9, "c": 0.2, "d": 0.0}, cue=("dog", "grass"))[0]
    'b'
    """
    ids = list(scores)
    return [ids[i] for i in score_order(np.fromiter(scores.values(), dtype=np.float64, count=len(ids)), seed, cue)]


def score_order(scores: np.ndarray, seed: int = RANKING_SEED, cue: Sequence[str] = ()) -> np.ndarray:
    """``rank_by_score`` as positions into ``scores`` (an array in the items' order), without a record
    per item: a stable sort by descending score of the seeded shuffle (a NaN score ranks last).

    >>> score_order(np.array([0.2, 0.9, 0.2, 0.0]), cue=("dog", "grass")).tolist()[0]
    1
    """
    shuffled = np.random.default_rng(cue_seed(seed, *cue)).permutation(len(scores))
    return shuffled[np.argsort(-scores[shuffled], kind="stable")]


@dataclass(frozen=True, slots=True)
class AnalyzeResult:
    """Cue statistics of one analysis, the pictures it drew, and its run."""

    run: Run
    stats: pl.DataFrame
    pictures: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the end of a command."""
        classes = self.stats["class_label"].n_unique() if self.stats.height else 0
        return (f"analyze {self.run.config['evidence']}: {self.stats.height} (class, cue) rows for {classes} classes, "
                f"{len(self.pictures)} pictures in {self.seconds:.1f}s [run {self.run.run_id}]")


def analyze_cues(workspace: Workspace, source: str = "detector", run_id: str | None = None,
                 threshold: float | None = None, verdict_round: str | None = None, use_verdicts: bool = False,
                 strip_k: int = 5, heatmap_top: int = 12) -> AnalyzeResult:
    """Cue statistics per (class, cue), a lift heatmap, and top-K / bottom-K strips of each class's
    highest-ranked cue. With ``use_verdicts`` presence comes from human verdicts (of
    ``verdict_round``, or all rounds) instead of ``source``'s evidence."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="curate-analyze-") as name:
        scratch = Path(name)
        labels = labels_file(workspace, scratch)
        presence: pl.LazyFrame | pl.DataFrame
        if use_verdicts:
            kind = f"human:{verdict_round or 'all rounds'}"
            presence = presence_from_verdicts(resolved_verdicts(workspace, verdict_round), labels)
            threshold = None
        else:
            threshold = DEFAULT_THRESHOLDS.get(source, 0.5) if threshold is None else threshold
            kind = f"machine:{source}"
            runs = [run_id] if run_id is not None else workspace.evidence.run_ids()
            one_run = len(runs) == 1  # then the scan is of that run (not of one a proposal registers meanwhile)
            presence = presence_scan(workspace.catalog.evidence_scan(source=source,
                                                                     run_id=runs[0] if one_run else None),
                                     labels, threshold, one_run)
        presence = _read_once(presence, scratch)
        if presence.lazy().head(1).collect().height == 0:
            raise ValueError(f"no {'verdicts' if use_verdicts else f'evidence from {source!r}'} to analyze"
                             + (f" in run {run_id}" if run_id else ""))
        config = {"evidence": kind, "evidence_run": run_id, "threshold": threshold, "strip_k": strip_k}
        with workspace.runs.track(Stage.ANALYZE, kind, config, extend_completed=True) as run:
            stats = cue_statistics(presence, kind)
            workspace.tables.write(STATS_TABLE, stats.with_columns(pl.lit(run.run_id).alias("run_id")), part=run.run_id)
            folder = workspace.root / "reports" / run.run_id
            pictures = [lift_heatmap(stats, folder / "lift-heatmap.png", top=heatmap_top),
                        *_strips(workspace, presence, labels, stats, folder, f"({kind})", strip_k)]
            workspace.runs.set_counts(run.run_id, {"rows": stats.height, "pictures": len(pictures)})
    return AnalyzeResult(workspace.runs.get(run.run_id), stats, pictures, time.perf_counter() - started)


def _strips(workspace: Workspace, presence: pl.LazyFrame | pl.DataFrame, labels: pl.LazyFrame, stats: pl.DataFrame,
            folder: Path, caption: str, strip_k: int) -> list[Path]:
    """The top-K / bottom-K strip of each class's highest-ranked cue (``rank_by_score``'s order, of
    its items in id order), from presence rows whose ``item`` is a position in ``labels``
    (``labels_frame``)."""
    keys = presence.lazy().collect_schema()
    tops = stats.filter(pl.col("rank") == 1).select(pl.col(c).cast(keys[c]) for c in ("class_label", "attribute"))
    scores = (presence.lazy().join(tops.lazy(), on=["class_label", "attribute"], how="semi")
              .select("class_label", "attribute", "item", "score").collect(engine="streaming")
              .partition_by("class_label", "attribute", as_dict=True))
    item_ids = labels.select("item_id").collect()["item_id"]
    pictures = []
    for row in tops.iter_rows(named=True):
        scored = scores.pop((row["class_label"], row["attribute"]))  # one class's copy at a time
        scored = pl.DataFrame({"item_id": item_ids.gather(scored["item"]), "score": scored["score"]}).sort("item_id")
        order = score_order(scored["score"].to_numpy(), cue=(row["class_label"], row["attribute"]))
        k = min(strip_k, len(order) // 2) or min(strip_k, len(order))
        ids = scored["item_id"]
        top, bottom = ids.gather(order[:k]).to_list(), ids.gather(order[::-1][:k]).to_list()
        thumbs = {i: _thumbnail(workspace, workspace.catalog.item(i).uri) for i in {*top, *bottom}}
        name = f"strip-{_slug(row['class_label'])}-{_slug(row['attribute'])}.png"
        pictures.append(image_strips([thumbs[i] for i in top], [thumbs[i] for i in bottom], folder / name,
                                     f"{row['class_label']}: '{row['attribute']}' {caption}"))
    return pictures


def _read_once(presence: pl.LazyFrame | pl.DataFrame, scratch: Path) -> pl.LazyFrame | pl.DataFrame:
    """A presence scan run once into a parquet file in ``scratch``, so that the statistics' two passes
    and the strips read the file, not the evidence and its labels join (a frame stays as it is).
    The first pass does not run with the sink: together they peaked higher (348-409 MiB against
    310-332 at 10M rows, and up to 643 with 200 cues) for no time saved."""
    if isinstance(presence, pl.DataFrame):
        return presence
    path = scratch / "presence.parquet"
    presence.sink_parquet(path, compression="lz4", maintain_order=False)  # nothing reads the file in order
    # (the strips sort by id), and an ordered sink holds back rows that arrive early
    return pl.scan_parquet(path)


def cue_runs(workspace: Workspace) -> list[Run]:
    """The cue analyses, newest first (gap runs recorded as ``analyze`` by earlier versions left out).

    >>> cue_runs(Workspace.init(__import__("tempfile").mkdtemp()))
    []
    """
    return [r for r in workspace.runs.list(Stage.ANALYZE) if "gap" not in r.config]


def gap_runs(workspace: Workspace) -> list[Run]:
    """The spurious-gap runs, newest first, including those earlier versions recorded as ``analyze``.

    >>> gap_runs(Workspace.init(__import__("tempfile").mkdtemp()))
    []
    """
    legacy = [r for r in workspace.runs.list(Stage.ANALYZE) if "gap" in r.config]
    return sorted(workspace.runs.list(Stage.GAP) + legacy, key=lambda r: r.started_at, reverse=True)


def pictures_of(workspace: Workspace, classes: set[str]) -> list[Path]:
    """The pictures of the cue analysis that covered ``classes`` (the newest covering them all, else
    the one covering most of them): each class's strip, and the lift heatmap when the analysis
    covered no other class (what a release of ``classes`` may show).

    >>> pictures_of(Workspace.init(__import__("tempfile").mkdtemp()), {"dog"})
    []
    """
    runs = cue_runs(workspace)
    if not runs or STATS_TABLE not in workspace.tables.names():
        return []
    stats_of = workspace.tables.scan(STATS_TABLE).filter(pl.col("run_id").is_in([r.run_id for r in runs])).collect()
    covered = {r.run_id: set(stats_of.filter(pl.col("run_id") == r.run_id)["class_label"].to_list()) for r in runs}
    run = max(runs, key=lambda r: len(covered[r.run_id] & classes))  # max keeps the first (newest) of equals
    if not covered[run.run_id] & classes:
        return []
    stats = stats_of.filter(pl.col("run_id") == run.run_id)
    folder = workspace.root / "reports" / run.run_id
    analysed = covered[run.run_id]
    pictures = [folder / "lift-heatmap.png"] if analysed <= classes else []
    pictures += [folder / f"strip-{_slug(row['class_label'])}-{_slug(row['attribute'])}.png"
                 for row in stats.filter((pl.col("rank") == 1) & pl.col("class_label").is_in(sorted(classes)))
                 .sort("class_label").iter_rows(named=True)]
    return [p for p in pictures if p.is_file()]


GAPS_TABLE = "spurious-gaps"


@dataclass(frozen=True, slots=True)
class GapResult:
    """The spurious gaps of one model under test, ranked within each class, and their ``gap`` run."""

    run: Run
    table: pl.DataFrame
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the end of a command."""
        return (f"gap {self.run.config['gap']}: {self.table.height} (class, cue) rows, "
                f"{self.run.counts.get('failed_answers', 0)} failed answers (counted wrong) "
                f"in {self.seconds:.1f}s [run {self.run.run_id}]")


def measure_gaps(workspace: Workspace, kind: str, options: Mapping[str, object] | None = None,
                 source: str = "detector", run_id: str | None = None, k: int = 50, seed: int = RANKING_SEED,
                 classes: list[str] | None = None, mask: str = "object",
                 bootstrap: int | None = None) -> GapResult:
    """Spurious gaps of a model under test (``table``, ``clip`` or ``vlm`` with its ``options``), with
    bootstrap intervals and the random-ordering baseline (``bootstrap`` draws, 1000 by default), as a
    recorded ``gap`` run; the table goes to the ``spurious-gaps`` side table and the run counts
    the answers that failed (``failed_answers``)."""
    from curate.analyze.gap import BOOTSTRAP_DRAWS, MODELS_UNDER_TEST, VLMYesNo, spurious_gaps

    started = time.perf_counter()
    factory = MODELS_UNDER_TEST[kind]
    extra = {"workspace": workspace} if factory is VLMYesNo else {}
    options = check_options(factory, options or {}, f"model under test {kind!r}", skip=("workspace",))
    model = factory(**options, **extra)
    bootstrap = BOOTSTRAP_DRAWS if bootstrap is None else bootstrap
    config = {"gap": kind, "options": options or {}, "evidence": source, "evidence_run": run_id, "k": k, "seed": seed,
              "classes": classes, "mask": mask, "bootstrap": bootstrap}
    with workspace.runs.track(Stage.GAP, kind, config, extend_completed=True) as run:
        workspace.runs.set_models(run.run_id, {model.name: model.version})
        result = spurious_gaps(workspace, model, source, run_id, k, seed, classes, mask, bootstrap=bootstrap)
        workspace.tables.write(GAPS_TABLE, result.table.with_columns(pl.lit(run.run_id).alias("run_id")),
                               part=run.run_id)
        workspace.runs.set_counts(run.run_id, {"rows": result.table.height,
                                               "images_without_object_boxes": result.skipped_without_boxes,
                                               "failed_answers": result.failed_answers})
    return GapResult(workspace.runs.get(run.run_id), result.table, time.perf_counter() - started)


def _thumbnail(workspace: Workspace, uri: str, side: int = 160) -> Image.Image:
    image = open_image(workspace.resolve_uri(uri))
    image.thumbnail((side, side))
    return image


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40]


__all__ = ["GAPS_TABLE", "STATS_TABLE", "AnalyzeResult", "GapResult", "analyze_cues", "cue_runs", "cue_seed",
           "cue_statistics", "gap_runs", "measure_gaps", "rank_by_score", "score_order"]
