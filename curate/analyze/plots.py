"""PNG pictures for analysis reports and dataset cards (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from PIL import Image

DPI = 120


def _save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG. Figures are made without pyplot, so importing curate never changes
    matplotlib's backend (a notebook keeps its inline plots) and no window ever opens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def lift_heatmap(stats: pl.DataFrame, path: Path, top: int = 12) -> Path:
    """Class x cue heatmap of log2 lift (PMI) for each class's ``top`` ranked cues."""
    chosen = stats.filter(pl.col("rank") <= top)
    classes = sorted(chosen["class_label"].unique().to_list())
    cues = list(dict.fromkeys(chosen.sort(["class_label", "rank"])["attribute"].to_list()))
    grid = np.full((len(classes), len(cues)), np.nan)
    for row in stats.filter(pl.col("attribute").is_in(cues)).iter_rows(named=True):
        if row["class_label"] in classes:
            value = row["pmi"]
            grid[classes.index(row["class_label"]), cues.index(row["attribute"])] = math.nan if value is None else value
    figure = Figure(figsize=(max(4, 0.45 * len(cues) + 2), max(2.5, 0.45 * len(classes) + 1.5)))
    axes = figure.subplots()
    limit = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    shown = axes.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(len(cues)), cues, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(classes)), classes, fontsize=8)
    axes.set_title(f"cue lift per class (log2), evidence: {stats['evidence'][0] if stats.height else '-'}")
    figure.colorbar(shown, ax=axes, label="PMI (log2 lift)")
    return _save(figure, path)


def group_sizes(counts: Mapping[str, int], path: Path, title: str = "items per group") -> Path:
    """Bar chart of group sizes (e.g. ``{"y:landbird_a:water": 184, ...}``)."""
    figure = Figure(figsize=(max(4, 0.6 * len(counts) + 2), 3))
    axes = figure.subplots()
    axes.bar(range(len(counts)), list(counts.values()), color="#4c72b0")
    axes.set_xticks(range(len(counts)), list(counts), rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("items")
    axes.set_title(title)
    return _save(figure, path)


def accuracy_per_group(metrics: Mapping[str, float | int], path: Path) -> Path:
    """Bar chart of the ``acc_<group>`` metrics, with ``acc_avg`` as a line."""
    groups = {k.removeprefix("acc_"): float(v) for k, v in metrics.items()
              if k.startswith("acc_") and ":" in k}
    figure = Figure(figsize=(max(4, 0.6 * len(groups) + 2), 3))
    axes = figure.subplots()
    axes.bar(range(len(groups)), list(groups.values()), color="#55a868")
    if "acc_avg" in metrics:
        axes.axhline(float(metrics["acc_avg"]), color="black", linestyle="--", label="acc_avg")
        axes.legend(loc="lower right")
    axes.set_xticks(range(len(groups)), list(groups), rotation=45, ha="right", fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("accuracy")
    axes.set_title("accuracy per group")
    return _save(figure, path)


def image_strips(top: Sequence[Image.Image], bottom: Sequence[Image.Image], path: Path, title: str) -> Path:
    """Two rows of thumbnails: the images scoring highest and lowest for a cue."""
    columns = max(len(top), len(bottom), 1)
    figure = Figure(figsize=(max(4.0, 1.6 * columns), 3.6))
    axes = figure.subplots(2, columns, squeeze=False)
    for row, (name, images) in enumerate((("top", top), ("bottom", bottom))):
        for column in range(columns):
            axis = axes[row][column]
            axis.axis("off")
            if column < len(images):
                axis.imshow(images[column])
        axes[row][0].set_title(f"{name} {len(images)}", loc="left", fontsize=8)
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)
