"""``groups``: group-annotated splits, class y x spurious attribute a (Waterbirds, SubpopBench style).

Two ways in:

- ``group_source``: an ingested group table (``curate ingest groups``) is reproduced exactly: its
  ids, splits, y and a (rows whose image was quarantined are left out and counted);
- ``attribute``: a is whether the attribute is present, from human verdicts (the round's majority;
  ties and "unsure" leave the item out). Machine evidence fills in only with ``allow_machine``, and
  the release records how many labels came from it. Splits are then made: validation and test
  balanced (within each class by default, like Waterbirds; or across all groups), and training at
  ``train_correlation`` (the share of each class's training items in its majority group).

Encoding (documented in the release): ``g = n_a * y + a`` as in group_DRO and SubpopBench, with y
and a published as explicit columns beside g.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from curate.builders.base import Builder, BuildError, Release, image_name, register_builder
from curate.builders.near_duplicates import MAX_LEVEL, clusters, fingerprint
from curate.images import open_image
from curate.progress import progress_bar
from curate.verdicts import ABSENT, PRESENT, resolved_verdicts
from curate.workspace import Source, Workspace
from curate.workspace.tables import embeddings_table

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
ENCODING = "g = n_a * y + a (group_DRO / SubpopBench); y and a are explicit columns"
WRITE_BATCH = 100_000  # rows of an export turned into text at a time


def train_sizes(n_major: int, n_minor: int, correlation: float) -> tuple[int, int]:
    """How many of a class's ``n_major`` majority-group and ``n_minor`` minority-group items go
    into training so that the majority group's share is ``correlation`` (at most, rounding down
    the minority): every majority item and ``floor(n_major * (1 - p) / p)`` minority items, or, when
    minority items are scarce, every minority item and ``floor(n_minor * p / (1 - p))`` majority
    items. Exact arithmetic: ``p`` is read as the decimal it was written as (0.9 is 9/10).

    >>> train_sizes(9, 100, 0.9), train_sizes(90, 100, 0.9), train_sizes(100, 1, 0.9), train_sizes(5, 5, 1.0)
    ((9, 1), (90, 10), (9, 1), (5, 0))
    """
    p = Fraction(str(correlation))
    if not 0 < p <= 1:
        raise BuildError(f"train_correlation is a share in (0, 1], not {correlation}")
    if p == 1:
        return n_major, 0
    wanted_minor = math.floor(n_major * (1 - p) / p)
    if n_minor >= wanted_minor:  # enough minority items: keep every majority item
        return n_major, wanted_minor
    return min(n_major, math.floor(n_minor * p / (1 - p))), n_minor  # fewer majority items keep the share


def _exports(rows: pl.DataFrame, y_names: list[str], a_names: list[str]) -> dict[str, Callable[[Path], object]]:
    """SubpopBench's metadata table and WILDS-style metadata, as file writers."""

    def subpopbench(path: Path) -> None:
        rows.select(pl.col("id"), pl.col("filename"), pl.col("split").replace_strict(SPLIT_CODES, default=None),
                    pl.col("y"), pl.col("a")).sort("id").write_csv(path)

    def wilds(path: Path) -> None:  # json.dumps of the whole object, written a batch of rows at a time
        ordered = rows.sort("id").select("a", "y", "item_id")
        grouper = "CombinatorialGrouper(['a', 'y']): the first field is fastest, group = a + n_a * y"
        with path.open("w") as out:
            out.write(json.dumps({"metadata_fields": ["a", "y"], "metadata_map": {"a": a_names, "y": y_names}})[:-1])
            for key, line in (("metadata_array", lambda a, y, _: f"[{a}, {y}]"),
                              ("item_id", lambda a, y, item_id: json.dumps(item_id))):
                out.write(f', "{key}": [')
                for number, batch in enumerate(ordered.iter_slices(WRITE_BATCH)):
                    out.write((", " if number else "") + ", ".join(line(*row) for row in batch.iter_rows()))
                out.write("]")
            out.write(f', "grouper": {json.dumps(grouper)}}}')

    return {"metadata.csv": subpopbench, "wilds_metadata.json": wilds}


@register_builder("groups")
@dataclass
class GroupsBuilder(Builder):
    """Group splits from an ingested group table, or from verdicts on one spurious attribute."""

    group_source: str | None = None  # a groups source id, or its table's path or file name
    attribute: str | None = None
    verdict_round: str | None = None
    allow_machine: bool = False
    evidence_source: str = "detector"
    threshold: float = 0.05
    classes: tuple[str, ...] | None = None
    majority: tuple[int, ...] | None = None
    train_correlation: float = 0.95
    eval_fraction: float = 0.2
    val_per_group: int | None = None
    test_per_group: int | None = None
    balance: Literal["within_class", "all"] = "within_class"
    min_group_size: int = 1
    seed: int = 0
    near_duplicates: Literal["together", "drop", "ignore"] = "together"
    near_duplicate_bits: int = 6
    near_duplicate_model: str | None = None  # a CLIP model whose stored image embeddings also find them
    near_duplicate_similarity: float = 0.95

    def defining_attributes(self) -> list[str]:
        return [self.attribute] if self.attribute else []

    def build(self, workspace: Workspace) -> Release:
        if (self.group_source is None) == (self.attribute is None):
            raise BuildError("give either group_source (an ingested group table) or attribute (a spurious attribute)")
        return self._from_table(workspace) if self.group_source else self._from_attribute(workspace)

    # an ingested group table, reproduced ------------------------------------------------------
    def _source(self, workspace: Workspace) -> Source:
        """The group source named by id, or by the path or file name of its table."""
        sources = [s for s in workspace.catalog.sources() if s.kind == "groups"]
        for source in sources:
            if self.group_source in (source.source_id, source.location, Path(source.location).name):
                return source
        known = ", ".join(f"{s.source_id} ({Path(s.location).name})" for s in sources) or "none"
        raise BuildError(f"no ingested group table {self.group_source!r}; group tables here: {known}")

    def _from_table(self, workspace: Workspace) -> Release:
        source = self._source(workspace)
        table = workspace.catalog.group_table(source.source_id)
        kept = table.filter(pl.col("item_id").is_not_null())
        options = source.options
        split_names = list(options.get("split_names") or SPLIT_CODES)
        y_values = sorted(kept["y"].unique().to_list())
        a_values = sorted(kept["a"].unique().to_list())
        y_names = list(options.get("y_names") or [str(v) for v in range(max(y_values) + 1)])
        a_names = list(options.get("a_names") or [str(v) for v in range(max(a_values) + 1)])
        uris = workspace.catalog.items_frame(source_id=source.source_id, columns=["uri"])
        rows = kept.with_columns(
            pl.col("split").map_elements(lambda s: split_names[int(s)] if str(s).isdigit() else str(s),
                                         return_dtype=pl.String),
            pl.col("item_id").replace_strict(uris["item_id"], uris["uri"], default=None).alias("uri"),
        )
        return self._release(rows, y_names, a_names, {
            "labels_from": f"group table {Path(source.location).name} ({source.source_id})",
            "quarantined_rows_left_out": table.height - kept.height,
            "near_duplicates": {"policy": "ignore", "summary": "near-duplicates were not looked for: the splits "
                                                               "are the group table's own"}})

    # verdicts on an attribute, split by us ------------------------------------------------------
    def _presence(self, workspace: Workspace, items: pl.DataFrame) -> tuple[pl.DataFrame, Counter[str]]:
        """``item_id, a`` of the decided items (people's first, then machine evidence's), and where
        the labels came from."""
        votes: dict[str, Counter[str]] = {}
        verdicts = [v for v in resolved_verdicts(workspace, self.verdict_round) if v.attribute == self.attribute]
        known = set(items.filter(pl.col("item_id").is_in(pl.Series([v.item_id for v in verdicts],
                                                                    dtype=pl.String).implode()))["item_id"])
        for verdict in verdicts:
            if verdict.item_id in known:
                votes.setdefault(verdict.item_id, Counter())[verdict.value] += 1
        human: dict[str, int] = {}
        sources: Counter[str] = Counter()
        for item_id, counts in votes.items():
            present = sum(n for v, n in counts.items() if v in PRESENT)
            absent = sum(n for v, n in counts.items() if v in ABSENT)
            if present != absent:
                human[item_id] = int(present > absent)
                sources["human"] += 1
            else:
                sources["undecided"] += 1
        presence = pl.DataFrame({"item_id": list(human), "a": list(human.values())},
                                schema={"item_id": pl.String, "a": pl.Int64})
        if self.allow_machine:
            # the attribute's rows (three columns) are collected first: sorted in memory, not in the lazy engine,
            # they take a third of the peak memory
            machine = (workspace.catalog.evidence_scan(source=self.evidence_source, attribute=self.attribute)
                       .select("item_id", "run_id", "score").collect()
                       .join(items.select("item_id"), on="item_id", how="semi")
                       .filter(~pl.col("item_id").is_in(pl.Series(list(votes), dtype=pl.String).implode()))
                       .sort("item_id", "run_id").unique("item_id", keep="first", maintain_order=True)
                       .select("item_id", a=(pl.col("score").fill_null(0.0) >= self.threshold).cast(pl.Int64)))
            presence = pl.concat([presence, machine])
            sources["machine"] += machine.height
        return presence, sources

    def _from_attribute(self, workspace: Workspace) -> Release:
        items = workspace.catalog.items_frame(columns=["uri", "label"]).filter(pl.col("label").is_not_null())
        y_names = list(self.classes or sorted(items["label"].unique().to_list()))
        items = items.filter(pl.col("label").is_in(pl.Series(y_names, dtype=pl.String).implode()))
        presence, sources = self._presence(workspace, items)
        if not presence.height:
            raise BuildError(f"no item has a verdict on {self.attribute!r}"
                             + ("" if self.allow_machine else " (allow_machine uses machine evidence)"))
        decided = presence.join(items, on="item_id", maintain_order="left").select(
            "item_id", "uri", "a",
            y=pl.col("label").replace_strict(y_names, range(len(y_names)), return_dtype=pl.Int64))
        a_names = [f"no {self.attribute}", str(self.attribute)]
        majority = list(self.majority or [min(y, 1) for y in range(len(y_names))])
        if len(majority) != len(y_names) or not set(majority) <= {0, 1}:
            raise BuildError(f"majority gives the majority a (0 or 1) of each of the {len(y_names)} classes "
                             f"{', '.join(y_names)}; got {tuple(majority)}")
        found, near_duplicates = self._near_duplicates(workspace, decided.select("item_id", "uri"))
        followers = pl.DataFrame([(member, cluster[0]) for cluster in found for member in cluster[1:]],
                                 schema={"item_id": pl.String, "first": pl.String}, orient="row")
        rng = np.random.default_rng(self.seed)
        pools: dict[tuple[int, int], pl.Series] = {}
        leaders = decided.join(followers, on="item_id", how="anti").sort("item_id")  # one image per cluster is split
        for (y, a), pool in leaders.group_by("y", "a", maintain_order=True):
            pools[(int(y), int(a))] = pool["item_id"].gather(rng.permutation(pool.height))
        assigned = self._split(pools, len(y_names), majority)
        if self.near_duplicates == "together":  # the rest of a cluster joins its first image's split
            split_of = assigned.select(pl.col("item_id").alias("first"), "split")
            joined = (followers.sort("item_id").join(split_of, on="first", maintain_order="left")
                      .join(decided.select("item_id", "y", "a"), on="item_id", maintain_order="left"))
            assigned = pl.concat([assigned, joined.select(assigned.columns)])
        if not assigned.height:
            per_group = {f"{y_names[y]}|{a_names[a]}": len(ids) for (y, a), ids in sorted(pools.items())}
            raise BuildError(f"no item can be placed at train_correlation {self.train_correlation}: each class needs "
                             f"items with and without {self.attribute!r} (decided items per class|group: {per_group})")
        present = {(split, y, a): n for split, y, a, n in assigned.group_by("split", "y", "a").len().iter_rows()}
        for split in SPLIT_CODES:
            for y in range(len(y_names)):
                for a in (0, 1):
                    if present.get((split, y, a), 0) < self.min_group_size:
                        raise BuildError(f"group {split}|y={y_names[y]}|a={a_names[a]} has "
                                         f"{present.get((split, y, a), 0)} items, fewer than min_group_size "
                                         f"{self.min_group_size}")
        rows = (assigned.with_row_index("id", offset=1).with_columns(pl.col("id").cast(pl.Int64))
                .join(decided.select("item_id", "uri"), on="item_id", maintain_order="left")
                .select("id", "item_id", "uri", "y", "a", "split",
                        filename=pl.struct("item_id", "uri").map_elements(
                            lambda row: image_name(row["item_id"], row["uri"]), return_dtype=pl.String)))
        return self._release(rows, y_names, a_names, {
            "labels_from": {"attribute": self.attribute, "verdict_round": self.verdict_round or "all rounds",
                            "human": sources["human"], "machine": sources["machine"],
                            "undecided_left_out": sources["undecided"],
                            "machine_evidence": f"{self.evidence_source} score >= {self.threshold}"
                            if self.allow_machine else "not used"},
            "train_correlation": self.train_correlation, "balance": self.balance, "seed": self.seed,
            "near_duplicates": near_duplicates})

    def _near_duplicates(self, workspace: Workspace, items: pl.DataFrame) -> tuple[list[list[str]], dict[str, Any]]:
        """Clusters of near-duplicates among the items to split (``item_id, uri``), and what
        release.json says of them."""
        if self.near_duplicates == "ignore":
            return [], {"policy": "ignore", "summary": "near-duplicates were not looked for (near_duplicates=ignore)"}
        uris = dict(items.iter_rows())
        prints = {}
        with progress_bar("near-duplicates: hashing images", len(uris)) as advance:
            for item_id, uri in uris.items():
                prints[item_id] = fingerprint(open_image(workspace.resolve_uri(uri)))
                advance()
        method = (f"dHash within {self.near_duplicate_bits} of 64 bits and 8x8 thumbnails within {MAX_LEVEL:g} grey "
                  f"levels")
        embeddings: dict[str, np.ndarray] = {}
        if self.near_duplicate_model:
            table = embeddings_table(self.near_duplicate_model)
            if table in workspace.tables.names():
                frame = workspace.tables.read(table).filter(pl.col("item_id").is_in(list(uris)))
                embeddings = dict(zip(frame["item_id"], (np.asarray(v) for v in frame["embedding"]), strict=True))
                method += (f"; cosine of stored {self.near_duplicate_model} embeddings >= "
                           f"{self.near_duplicate_similarity}")
            else:
                method += f" (no stored {self.near_duplicate_model} embeddings: perceptual hash only)"
        found = clusters(prints, self.near_duplicate_bits, embeddings=embeddings,
                         min_similarity=self.near_duplicate_similarity)
        members = sum(len(cluster) for cluster in found)
        kept = "kept in one split each" if self.near_duplicates == "together" else "one image kept, the rest left out"
        return found, {"policy": self.near_duplicates, "method": method, "clusters": len(found),
                       "images_in_clusters": members, "left_out": members - len(found)
                       if self.near_duplicates == "drop" else 0, "cluster_items": found[:100],
                       "summary": f"{len(found)} near-duplicate clusters ({members} images) found before splitting, "
                                  f"{kept} ({method})"}

    def _split(self, pools: dict[tuple[int, int], pl.Series], n_classes: int, majority: list[int]) -> pl.DataFrame:
        """``item_id, y, a, split`` of the pools' items placed: validation and test from each group
        (each pool is left with the rest), then training at ``train_correlation``."""
        groups = [(y, a) for y in range(n_classes) for a in (0, 1)]
        sizes = {g: len(pools.get(g, [])) for g in groups}
        assigned: list[pl.DataFrame] = []

        def placed(ids: pl.Series, y: int, a: int, split: str) -> pl.DataFrame:
            return ids.to_frame("item_id").with_columns(y=pl.lit(y, pl.Int64), a=pl.lit(a, pl.Int64),
                                                         split=pl.lit(split))
        per_group: dict[tuple[int, int], int] = {}
        for y, a in groups:
            scope = groups if self.balance == "all" else [(y, b) for b in (0, 1)]
            smallest = min(sizes[g] for g in scope)
            per_group[(y, a)] = math.floor(smallest * self.eval_fraction / 2)
        for (y, a), pool in sorted(pools.items()):
            val = self.val_per_group if self.val_per_group is not None else per_group[(y, a)]
            test = self.test_per_group if self.test_per_group is not None else per_group[(y, a)]
            if val + test > len(pool):
                raise BuildError(f"group y={y}, a={a} has {len(pool)} items, fewer than val {val} + test {test}")
            assigned += [placed(pool[:val], y, a, "val"), placed(pool[val:val + test], y, a, "test")]
            pools[(y, a)] = pool[val + test:]
        empty = pl.Series("item_id", [], dtype=pl.String)
        for y in range(n_classes):
            major, minor = pools.get((y, majority[y]), empty), pools.get((y, 1 - majority[y]), empty)
            n_major, n_minor = train_sizes(len(major), len(minor), self.train_correlation)
            assigned += [placed(major[:n_major], y, majority[y], "train"),
                         placed(minor[:n_minor], y, 1 - majority[y], "train")]
        return pl.concat(assigned) if assigned else placed(empty, 0, 0, "train")

    def _release(self, rows: pl.DataFrame, y_names: list[str], a_names: list[str], how: dict[str, object]) -> Release:
        n_a = len(a_names)
        rows = rows.with_columns((pl.col("y") * n_a + pl.col("a")).alias("g"),
                                 pl.col("y").map_elements(lambda v: y_names[v], return_dtype=pl.String).alias("y_name"),
                                 pl.col("a").map_elements(lambda v: a_names[v], return_dtype=pl.String).alias("a_name"))
        counts = {f"{split}|y={y}|a={a}": n for split, y, a, n in
                  rows.group_by(["split", "y", "a"]).len().sort(["split", "y", "a"]).iter_rows()}
        for key, n in counts.items():
            if n < self.min_group_size:
                raise BuildError(f"group {key} has {n} items, fewer than min_group_size {self.min_group_size}")
        columns = ["id", "item_id", "uri", "filename", "y", "y_name", "a", "a_name", "g", "split"]
        tables = {split: rows.filter(pl.col("split") == split).select(columns).sort("id")
                  for split in sorted(rows["split"].unique().to_list(), key=lambda s: SPLIT_CODES.get(s, 9))}
        metadata = {"encoding": ENCODING, "y_names": y_names, "a_names": a_names, "group_counts": counts, **how}
        images = dict(zip(rows["filename"], rows["uri"], strict=True))  # every name in metadata.csv, written
        return Release(self.name, tables, metadata, _exports(rows, y_names, a_names), images)
