"""Our CLIP context-shift measure: how much worse CLIP sees a concept in the contexts a few-shot
episode queries it in than in the contexts it is usually seen in.

This is *our* measure, not MetaCoCo's: MetaCoCo measures the shift with CLIP image / text
similarities too, but its formula is not published. Ours, per concept ``c``:

- every image of ``c`` is scored by a CLIP model: ``correct`` (zero-shot over all the release's
  concepts, prompt ``"a photo of a {concept}."``, the winner is ``c``) and ``similarity`` (cosine
  between the image and the prompt of ``c``);
- *common* images: those of ``c``'s ``common_contexts`` most frequent contexts (ties by name);
  *query* images: the distinct images of ``c`` that some episode asks as queries;
- ``acc_drop = mean(correct | common) - mean(correct | query)`` and
  ``sim_drop = mean(similarity | common) - mean(similarity | query)``: positive when CLIP sees the
  concept less well in the query contexts;
- 95% percentile bootstrap intervals: the common and the query images are resampled with
  replacement, each on its own, ``bootstrap`` times, from a generator seeded by the seed and the concept.

The models come through ``ClipZeroShot`` (``curate.analyze.gap``), the one interface analysis has to CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from curate.analyze import cue_seed
from curate.executors.local import image_batches
from curate.progress import progress_bar
from curate.records import Item
from curate.workspace import Workspace

PROMPT = "a photo of a {label}."
SHIFT_COLUMNS = ("concept", "common_contexts", "query_contexts", "n_common", "n_query", "acc_common", "acc_query",
                 "acc_drop", "acc_drop_low", "acc_drop_high", "sim_common", "sim_query", "sim_drop", "sim_drop_low",
                 "sim_drop_high")


def clip_scores(workspace: Workspace, items: Sequence[Item], concepts: Sequence[str], model: str,
                weights: str | None = None, device: str = "cpu", batch_size: int = 32) -> tuple[pl.DataFrame, str]:
    """Per item (its ``label`` is its concept): ``clip_prediction`` (the zero-shot winner among
    ``concepts``), ``clip_correct`` and ``clip_similarity`` (cosine to its own concept's prompt);
    nulls for an image that no longer opens. Also the model as the card names it (``name (version)``)."""
    import torch

    from curate.analyze.gap import ClipZeroShot

    clip = ClipZeroShot(model, weights, device, template=PROMPT).clip
    texts = clip.encode_texts([PROMPT.format(label=c) for c in concepts])
    index = {c: n for n, c in enumerate(concepts)}
    rows = []
    with progress_bar(f"context shift ({model})", len(items)) as advance:
        for batch in image_batches(workspace, items, batch_size, transform=clip.preprocess_image):
            if batch.items:
                similarities = clip.encode_images(torch.stack(batch.transformed)) @ texts.T
                for item, row in zip(batch.items, similarities, strict=True):
                    winner = concepts[int(row.argmax())]
                    rows.append({"item_id": item.item_id, "clip_prediction": winner,
                                 "clip_correct": winner == item.label,
                                 "clip_similarity": float(row[index[str(item.label)]])})
            rows += [{"item_id": item.item_id, "clip_prediction": None, "clip_correct": None, "clip_similarity": None}
                     for item, _ in batch.failures]
            advance(len(batch.items) + len(batch.failures))
    schema = {"item_id": pl.String, "clip_prediction": pl.String, "clip_correct": pl.Boolean,
              "clip_similarity": pl.Float64}
    return pl.DataFrame(rows, schema=schema), f"{model} ({clip.version})"


def drop_interval(common: np.ndarray, query: np.ndarray, draws: int, seed: list[int]) -> tuple[float, float, float]:
    """``mean(common) - mean(query)`` and its 95% percentile bootstrap interval (each side resampled
    with replacement on its own, ``draws`` times; 0 draws: the point for both ends).

    >>> drop_interval(np.array([1.0, 1.0]), np.array([0.0, 0.0, 0.0]), 100, [0])
    (1.0, 1.0, 1.0)
    """
    point = float(common.mean() - query.mean())
    if not draws:
        return point, point, point
    rng = np.random.default_rng(seed)
    drops = (rng.choice(common, (draws, common.size)).mean(axis=1)
             - rng.choice(query, (draws, query.size)).mean(axis=1))
    low, high = np.percentile(drops, [2.5, 97.5])
    return point, float(low), float(high)


def context_shift(images: pl.DataFrame, episodes: pl.DataFrame, common_contexts: int = 1, bootstrap: int = 1000,
                  seed: int = 0) -> pl.DataFrame:
    """The measure per concept (``SHIFT_COLUMNS``), from the per-image table (``item_id``,
    ``concept``, ``context``, ``clip_correct``, ``clip_similarity``) and the episodes (``item_id``,
    ``concept``, ``role``). Images without scores are left out; a concept without scored common or
    query images gets nulls."""
    scored = images.filter(pl.col("clip_similarity").is_not_null())
    queried = episodes.filter(pl.col("role") == "query")
    rows = []
    for concept in sorted(episodes["concept"].unique().to_list()):
        mine = images.filter(pl.col("concept") == concept)
        ranked = mine.group_by("context").len().sort(["len", "context"], descending=[True, False])
        common = ranked["context"].head(common_contexts).to_list()
        query_ids = set(queried.filter(pl.col("concept") == concept)["item_id"].to_list())
        sides = {"common": scored.filter((pl.col("concept") == concept) & pl.col("context").is_in(common)),
                 "query": scored.filter(pl.col("item_id").is_in(list(query_ids)))}
        row: dict[str, object] = {
            "concept": concept, "common_contexts": common,
            "query_contexts": sorted(set(mine.filter(pl.col("item_id").is_in(list(query_ids)))["context"])),
            "n_common": sides["common"].height, "n_query": sides["query"].height}
        for name, column in (("acc", "clip_correct"), ("sim", "clip_similarity")):
            values = {side: frame[column].cast(pl.Float64).to_numpy() for side, frame in sides.items()}
            empty = not (values["common"].size and values["query"].size)
            point, low, high = (None, None, None) if empty else drop_interval(
                values["common"], values["query"], bootstrap, cue_seed(seed, concept, name))
            row |= {f"{name}_common": float(values["common"].mean()) if values["common"].size else None,
                    f"{name}_query": float(values["query"].mean()) if values["query"].size else None,
                    f"{name}_drop": point, f"{name}_drop_low": low, f"{name}_drop_high": high}
        rows.append(row)
    return pl.DataFrame(rows, schema={c: (pl.List(pl.String) if c.endswith("_contexts") else pl.String
                                          if c == "concept" else pl.Int64 if c.startswith("n_") else pl.Float64)
                                      for c in SHIFT_COLUMNS})
