"""``context-shift``: concepts in contexts and few-shot episodes whose query contexts differ from the
support contexts (after MetaCoCo, Zhang et al., ICLR 2024).

Every image carries one (concept, context) pair. The concept is the item's class label; the context
comes from one of two places:

- ``context_column``: a metadata column of the item's source (a manifest's or a group table's extra column);
- otherwise human verdicts (``resolved_verdicts`` of ``verdict_round``): the attribute verified
  present on the image, among ``context_attributes`` (None: any attribute). An image with no
  verified context, or with several, is left out and counted.

Episodes are N-way (``ways``), K-shot (``shots``) with ``queries`` query images per concept, drawn
from a generator seeded by ``seed``. Per concept and episode a policy (``EPISODE_POLICIES``) splits
the concept's contexts into support and query contexts, never sharing one:

- ``disjoint``: a random split (a new one each episode) with at least K support and Q query images;
- ``shifted``: the query contexts are the concept's least frequent ones (the fewest that hold Q
  images), the support contexts the rest.

A concept whose contexts cannot be split so is a clear error, or left out with ``skip_unfit``.

Tables: ``images`` (one row per image: ``item_id``, ``file_name``, ``concept``, ``context``, ``y``
and ``a`` indexes into ``y_names`` / ``a_names``), ``episodes`` (``episode``, ``way``, ``role``
support / query, ``item_id``, ``file_name``, ``concept``, ``context``: what few-shot loaders read)
and ``contexts`` (images per concept x context, and how often each pair is used as support and as
query); ``episodes.json`` holds the same episodes as lists of ``[file_name, way]``. With
``measure_model``, CLIP scores every image and ``shift`` holds our context-shift measure per concept
(``curate.analyze.context_shift``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from curate.builders.base import Builder, BuildError, Release, image_name, register_builder
from curate.registry import Registry
from curate.verdicts import PRESENT, resolved_verdicts
from curate.workspace import Workspace

ContextSplit = tuple[list[str], list[str]]
"""A concept's support contexts and query contexts for one episode."""


class EpisodePolicy:
    """How a concept's contexts are split into support and query contexts; made once per concept
    (a concept that cannot be split is a ``BuildError`` naming it), then ``draw`` per episode."""

    name: ClassVar[str]

    def __init__(self, concept: str, counts: dict[str, int], shots: int, queries: int) -> None:
        self.concept, self.counts, self.shots, self.queries = concept, counts, shots, queries
        if len(counts) < 2:
            raise BuildError(f"concept {concept!r} has {len(counts)} context ({', '.join(counts)}); the {self.name} "
                             f"policy needs support and query contexts that differ, so at least 2")

    def unfit(self, why: str) -> BuildError:
        """The error for a concept whose contexts cannot give ``shots`` support and ``queries`` query images."""
        sizes = ", ".join(f"{c}: {n}" for c, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return BuildError(f"concept {self.concept!r} cannot give {self.shots} support and {self.queries} query images "
                          f"under the {self.name} policy: {why} (images per context: {sizes})")

    def draw(self, rng: np.random.Generator) -> ContextSplit:
        """The support and query contexts of one episode."""
        raise NotImplementedError


EPISODE_POLICIES: Registry[type[EpisodePolicy]] = Registry("episode policy", BuildError, attribute="name")


@EPISODE_POLICIES.register("disjoint")
class Disjoint(EpisodePolicy):
    """A random split of the contexts each episode: any split whose support contexts hold at least
    ``shots`` images and whose query contexts hold at least ``queries``.

    The split is drawn exactly (no retries): the sums of images that subsets of contexts reach
    are kept as bitsets, a reachable support size in range is drawn, and contexts are picked back
    to reach it.

    >>> policy = Disjoint("dog", {"grass": 3, "snow": 3, "beach": 4}, shots=6, queries=4)
    >>> support, query = policy.draw(np.random.default_rng(0))
    >>> sorted(support), query
    (['grass', 'snow'], ['beach'])
    """

    def __init__(self, concept: str, counts: dict[str, int], shots: int, queries: int) -> None:
        super().__init__(concept, counts, shots, queries)
        self.contexts = sorted(counts)
        self.reach = [1]  # reach[i]: bit s set when some subset of the first i contexts holds s images
        for context in self.contexts:
            self.reach.append(self.reach[-1] | (self.reach[-1] << counts[context]))
        total = sum(counts.values())
        window = self.reach[-1] >> shots & ((1 << max(0, total - queries - shots + 1)) - 1)
        self.sizes = [shots + i for i, bit in enumerate(reversed(bin(window)[2:])) if bit == "1"] if window else []
        if not self.sizes:
            raise self.unfit("no split of its contexts has enough images on both sides")

    def draw(self, rng: np.random.Generator) -> ContextSplit:
        target = self.sizes[int(rng.integers(len(self.sizes)))]
        support = []
        for i in range(len(self.contexts), 0, -1):
            context, n = self.contexts[i - 1], self.counts[self.contexts[i - 1]]
            can_skip = self.reach[i - 1] >> target & 1
            can_take = target >= n and self.reach[i - 1] >> (target - n) & 1
            if can_take and (not can_skip or rng.random() < 0.5):
                support.append(context)
                target -= n
        return sorted(support), [c for c in self.contexts if c not in support]


@EPISODE_POLICIES.register("shifted")
class Shifted(EpisodePolicy):
    """Query contexts are the concept's least frequent ones (the fewest, rarest first, that hold
    ``queries`` images; ties by name), support contexts all the others; the same every episode.

    >>> policy = Shifted("dog", {"grass": 30, "snow": 2, "beach": 4, "sofa": 2}, shots=5, queries=5)
    >>> policy.draw(np.random.default_rng(0))
    (['grass'], ['beach', 'snow', 'sofa'])
    """

    def __init__(self, concept: str, counts: dict[str, int], shots: int, queries: int) -> None:
        super().__init__(concept, counts, shots, queries)
        rarest = sorted(counts, key=lambda c: (counts[c], c))
        held = 0
        for n, context in enumerate(rarest):
            held += counts[context]
            if held >= queries:
                self.split = sorted(rarest[n + 1:]), sorted(rarest[:n + 1])
                break
        else:
            raise self.unfit("its contexts hold too few images for the queries")
        if sum(counts[c] for c in self.split[0]) < shots:
            raise self.unfit(f"the contexts left for support after the rarest ({', '.join(self.split[1])}) "
                             f"hold too few images")

    def draw(self, rng: np.random.Generator) -> ContextSplit:
        return self.split


def _episode_lists(episodes: pl.DataFrame, path: Path) -> None:
    """``episodes.json``: one object per episode, ``concepts`` in way order and its ``support`` and
    ``query`` as ``[file_name, way]`` pairs (files of the release folder), for loaders that read lists."""
    listed = []
    for (number,), rows in episodes.group_by(["episode"], maintain_order=True):
        ways = rows.group_by("way").agg(pl.col("concept").first()).sort("way")
        listed.append({"episode": number, "concepts": ways["concept"].to_list(),
                       **{role: rows.filter(pl.col("role") == role).select("file_name", "way").rows()
                          for role in ("support", "query")}})
    path.write_text(json.dumps(listed))


@register_builder("context-shift")
@dataclass
class ContextShiftBuilder(Builder):
    """Concept-in-context images and few-shot episodes whose support and query contexts differ."""

    context_column: str | None = None  # a metadata column holding each image's context
    context_attributes: tuple[str, ...] | None = None  # verdict attributes that are contexts (None: any)
    verdict_round: str | None = None
    classes: tuple[str, ...] | None = None
    policy: str = "disjoint"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    episodes: int = 100
    seed: int = 0
    skip_unfit: bool = False
    measure_model: str | None = None  # a CLIP model for our context-shift measure (None: not measured)
    measure_weights: str | None = None
    measure_device: str = "cpu"
    common_contexts: int = 1
    bootstrap: int = 1000

    def defining_attributes(self) -> list[str] | None:
        if self.context_column:
            return []
        return list(self.context_attributes) if self.context_attributes else None

    # (concept, context) per image ----------------------------------------------------------------
    def _from_metadata(self, workspace: Workspace, item_ids: set[str]) -> tuple[dict[str, str], Counter[str]]:
        values: dict[str, set[str]] = {}
        for ref in workspace.catalog.references():
            value = ref.metadata.get(str(self.context_column))
            if ref.item_id in item_ids and value is not None and str(value).strip():
                values.setdefault(ref.item_id, set()).add(str(value).strip())
        counted = Counter(none=len(item_ids - set(values)), several=sum(len(v) > 1 for v in values.values()))
        if not values:
            raise BuildError(f"no item has a {self.context_column!r} metadata column; ingest a manifest or group "
                             f"table with that column, or name another with context_column")
        return {i: next(iter(v)) for i, v in values.items() if len(v) == 1}, counted

    def _from_verdicts(self, workspace: Workspace, item_ids: set[str]) -> tuple[dict[str, str], Counter[str]]:
        wanted = set(self.context_attributes) if self.context_attributes else None
        values: dict[str, set[str]] = {}
        for verdict in resolved_verdicts(workspace, self.verdict_round):
            if verdict.item_id in item_ids and verdict.value in PRESENT and (wanted is None
                                                                            or verdict.attribute in wanted):
                values.setdefault(verdict.item_id, set()).add(verdict.attribute)
        counted = Counter(none=len(item_ids - set(values)), several=sum(len(v) > 1 for v in values.values()))
        if not values:
            raise BuildError("no item has a context verified present"
                             + (f" among {', '.join(sorted(wanted))}" if wanted else "")
                             + "; verify contexts in a round first, or give context_column (metadata)")
        return {i: next(iter(v)) for i, v in values.items() if len(v) == 1}, counted

    def _images(self, workspace: Workspace) -> tuple[pl.DataFrame, dict[str, Any]]:
        items = [i for i in workspace.catalog.items() if i.label is not None
                 and (self.classes is None or i.label in self.classes)]
        if not items:
            raise BuildError("no labelled items" + (f" of the classes {', '.join(self.classes)}"
                                                    if self.classes else ""))
        ids = {i.item_id for i in items}
        found = self._from_metadata if self.context_column else self._from_verdicts
        contexts, left_out = found(workspace, ids)
        rows = [{"item_id": i.item_id, "uri": i.uri, "file_name": image_name(i.item_id, i.uri),
                 "concept": i.label, "context": contexts[i.item_id]}
                for i in sorted(items, key=lambda i: i.item_id) if i.item_id in contexts]
        if not rows:
            raise BuildError(f"no image has exactly one context ({left_out['several']} have several, "
                             f"{left_out['none']} none)")
        how = {"context_column": self.context_column} if self.context_column else {
            "verdict_round": self.verdict_round or "all rounds",
            "context_attributes": sorted(self.context_attributes) if self.context_attributes else "any"}
        return pl.DataFrame(rows), {**how, "images_with_a_context": len(rows),
                                    "left_out_no_context": left_out["none"],
                                    "left_out_several_contexts": left_out["several"]}

    # episodes ----------------------------------------------------------------------------------
    def _policies(self, images: pl.DataFrame) -> tuple[dict[str, EpisodePolicy], dict[str, str]]:
        kind = EPISODE_POLICIES[self.policy]
        fit, unfit = {}, {}
        for concept in sorted(images["concept"].unique().to_list()):
            mine = images.filter(pl.col("concept") == concept)
            counts = dict(mine.group_by("context").len().iter_rows())
            try:
                fit[concept] = kind(concept, counts, self.shots, self.queries)
            except BuildError as error:
                if not self.skip_unfit:
                    raise BuildError(f"{error}; skip_unfit=true leaves such concepts out") from error
                unfit[concept] = str(error)
        if len(fit) < self.ways:
            raise BuildError(f"{self.ways}-way episodes need {self.ways} concepts that fit the {self.policy} policy; "
                             f"{len(fit)} do ({', '.join(fit) or 'none'})")
        return fit, unfit

    def _episodes(self, images: pl.DataFrame, policies: dict[str, EpisodePolicy]) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng(self.seed)
        pools = {(c, x): ids for c, x, ids in
                 images.group_by(["concept", "context"]).agg(pl.col("item_id").sort()).iter_rows()}
        files = dict(zip(images["item_id"], images["file_name"], strict=True))
        contexts = dict(zip(images["item_id"], images["context"], strict=True))
        concepts = sorted(policies)
        for episode in range(self.episodes):
            for way, index in enumerate(rng.choice(len(concepts), self.ways, replace=False)):
                concept = concepts[int(index)]
                split = policies[concept].draw(rng)
                for role, chosen, n in zip(("support", "query"), split, (self.shots, self.queries), strict=True):
                    pool = [i for context in chosen for i in pools[(concept, context)]]
                    for item_id in (pool[int(k)] for k in rng.choice(len(pool), n, replace=False)):
                        yield {"episode": episode, "way": way, "role": role, "item_id": item_id,
                               "file_name": files[item_id], "concept": concept, "context": contexts[item_id]}

    def build(self, workspace: Workspace) -> Release:
        if min(self.ways, self.shots, self.queries, self.episodes, self.common_contexts) < 1 or self.bootstrap < 0:
            raise BuildError(f"ways, shots, queries, episodes and common_contexts are counts of at least 1 and "
                             f"bootstrap at least 0; got {self.ways}, {self.shots}, {self.queries}, {self.episodes}, "
                             f"{self.common_contexts} and {self.bootstrap}")
        if self.context_column and (self.verdict_round or self.context_attributes):
            raise BuildError("give either context_column (contexts from metadata) or verdict_round / "
                             "context_attributes (contexts from verdicts), not both")
        images, labels_from = self._images(workspace)
        policies, unfit = self._policies(images)
        images = images.filter(pl.col("concept").is_in(list(policies)))
        y_names = sorted(policies)
        a_names = sorted(images["context"].unique().to_list())
        images = images.with_columns(pl.col("concept").replace_strict(y_names, list(range(len(y_names)))).alias("y"),
                                     pl.col("context").replace_strict(a_names, list(range(len(a_names)))).alias("a"))
        episodes = pl.DataFrame(list(self._episodes(images, policies)))
        used = episodes.group_by(["concept", "context", "role"]).len()
        contexts = images.group_by(["concept", "context"]).len("images").join(
            used.pivot("role", index=["concept", "context"], values="len"), on=["concept", "context"], how="left")
        contexts = contexts.select("concept", "context", "images", *(
            pl.col(role).fill_null(0).alias(f"as_{role}") if role in contexts.columns else pl.lit(0).alias(f"as_{role}")
            for role in ("support", "query"))).sort("concept", "context")
        tables = {"images": images, "episodes": episodes, "contexts": contexts}
        metadata: dict[str, Any] = {
            "labels_from": labels_from, "y_names": y_names, "a_names": a_names,
            "episode_policy": {"name": self.policy,
                               "rule": " ".join((EPISODE_POLICIES[self.policy].__doc__ or "").split("\n\n")[0].split())
                               .replace("``", "`")},
            "episode_shape": {"ways": self.ways, "shots": self.shots, "queries": self.queries,
                              "episodes": self.episodes, "seed": self.seed},
            "concepts_left_out": unfit,
            "context_counts": {c: {x: n for _, x, n, *_ in contexts.filter(pl.col("concept") == c).iter_rows()}
                               for c in y_names}}
        if self.measure_model:
            tables["images"], tables["shift"], metadata["context_shift"] = self._measure(workspace, images, episodes)
        return Release(self.name, tables, metadata, {"episodes.json": lambda path: _episode_lists(episodes, path)},
                       images.select(pl.col("file_name").alias("name"), "uri"))

    def _measure(self, workspace: Workspace, images: pl.DataFrame,
                 episodes: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
        """CLIP scores on every image, and our context-shift measure per concept."""
        from curate.analyze.context_shift import PROMPT, clip_scores, context_shift

        by_id = {item.item_id: item for item in workspace.catalog.items()}
        concepts = sorted(images["concept"].unique().to_list())
        scores, model = clip_scores(workspace, [by_id[i] for i in images["item_id"]], concepts,
                                    str(self.measure_model), self.measure_weights, self.measure_device)
        images = images.join(scores, on="item_id", how="left")
        shift = context_shift(images, episodes, self.common_contexts, self.bootstrap, self.seed)
        means = {f"mean_{name}": shift[name].mean() for name in ("acc_drop", "sim_drop")}  # nulls left out
        return images, shift, {
            "model": model, "prompt": PROMPT, "common_contexts": self.common_contexts, "bootstrap": self.bootstrap,
            "unscored_images": int(images["clip_similarity"].null_count()), **means, "per_concept": shift.to_dicts()}
