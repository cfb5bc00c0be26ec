"""PNG pictures for analysis reports and dataset cards (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, ImageOps

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


STRIP_CELL = 160  # a thumbnail's square, in pixels (analysis thumbnails are 160 on their long side)
STRIP_TEXT = 14


def image_strips(top: Sequence[Image.Image], bottom: Sequence[Image.Image], path: Path, title: str) -> Path:
    """Two rows of thumbnails: the images scoring highest and lowest for a cue, under ``title``.
    Drawn with PIL, not matplotlib (milliseconds, not a third of a second: an analysis of 1,000
    classes draws 1,000 strips).

    >>> import tempfile
    >>> tile = Image.new("RGB", (40, 20), "red")
    >>> Image.open(image_strips([tile] * 3, [tile], Path(tempfile.mkdtemp()) / "s.png", "dog: grass")).size
    (500, 394)
    """
    columns = max(len(top), len(bottom), 1)
    font = ImageFont.load_default(size=STRIP_TEXT)
    line = STRIP_TEXT + 8
    width = max(columns * (STRIP_CELL + 4) + 8, int(font.getlength(title)) + 8)
    canvas = Image.new("RGB", (width, 2 * (STRIP_CELL + line) + line + 8), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black", font=font)
    for row, (name, images) in enumerate((("top", top), ("bottom", bottom))):
        y = line + row * (STRIP_CELL + line)
        draw.text((4, y + 2), f"{name} {len(images)}", fill="dimgray", font=font)
        for column, image in enumerate(images):
            thumbnail = ImageOps.contain(image.convert("RGB"), (STRIP_CELL, STRIP_CELL))
            x = 4 + column * (STRIP_CELL + 4) + (STRIP_CELL - thumbnail.width) // 2
            canvas.paste(thumbnail, (x, y + line + (STRIP_CELL - thumbnail.height) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
