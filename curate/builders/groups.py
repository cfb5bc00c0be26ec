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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from curate.builders.base import Builder, BuildError, Release, image_names, register_builder
from curate.builders.near_duplicates import MAX_LEVEL, clusters, fingerprint
from curate.images import open_image
from curate.progress import progress_bar
from curate.spill import Spill, batches, item_chunks, item_ranges, route
from curate.verdicts import ABSENT, PRESENT, resolved_verdicts
from curate.workspace import Source, Workspace
from curate.workspace.tables import embeddings_table

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
ENCODING = "g = n_a * y + a (group_DRO / SubpopBench); y and a are explicit columns"
WRITE_BATCH = 100_000  # rows of an export turned into text at a time
ROUTE_BATCH = 65_536  # evidence rows routed to their batch of items at a time
ID_BATCH = 65_536  # placed rows put in id order at a time
BY_ID = ["id", "item_id", "uri", "y", "a", "split"]  # a placed row, routed to its id's batch
PLACED = ["id", "item_id", "uri", "y", "a", "split", "filename"]  # a placed row, before its names and g


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


def _exports(rows: pl.LazyFrame, y_names: list[str], a_names: list[str]) -> dict[str, Callable[[Path], object]]:
    """SubpopBench's metadata table and WILDS-style metadata, as file writers (``rows`` in id order,
    read a batch at a time)."""

    def subpopbench(path: Path) -> None:
        rows.select(pl.col("id"), pl.col("filename"), pl.col("split").replace_strict(SPLIT_CODES, default=None),
                    pl.col("y"), pl.col("a")).sink_csv(path)

    def wilds(path: Path) -> None:  # json.dumps of the whole object, written a batch of rows at a time
        ordered = rows.select("a", "y", "item_id")
        grouper = "CombinatorialGrouper(['a', 'y']): the first field is fastest, group = a + n_a * y"
        with path.open("w") as out:
            out.write(json.dumps({"metadata_fields": ["a", "y"], "metadata_map": {"a": a_names, "y": y_names}})[:-1])
            for key, line in (("metadata_array", lambda a, y, _: f"[{a}, {y}]"),
                              ("item_id", lambda a, y, item_id: json.dumps(item_id))):
                out.write(f', "{key}": [')
                for number, batch in enumerate(batches(ordered, WRITE_BATCH)):
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
        spill = Spill()
        try:
            return (self._from_table if self.group_source else self._from_attribute)(workspace, spill)
        except BaseException:
            spill.close()  # nothing will read it
            raise

    # an ingested group table, reproduced ------------------------------------------------------
    def _source(self, workspace: Workspace) -> Source:
        """The group source named by id, or by the path or file name of its table."""
        sources = [s for s in workspace.catalog.sources() if s.kind == "groups"]
        for source in sources:
            if self.group_source in (source.source_id, source.location, Path(source.location).name):
                return source
        known = ", ".join(f"{s.source_id} ({Path(s.location).name})" for s in sources) or "none"
        raise BuildError(f"no ingested group table {self.group_source!r}; group tables here: {known}")

    def _from_table(self, workspace: Workspace, spill: Spill) -> Release:
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
        spill.write("placed", rows.sort("id").select(PLACED))
        return self._release(spill, y_names, a_names, {
            "labels_from": f"group table {Path(source.location).name} ({source.source_id})",
            "quarantined_rows_left_out": table.height - kept.height,
            "near_duplicates": {"policy": "ignore", "summary": "near-duplicates were not looked for: the splits "
                                                               "are the group table's own"}})

    # verdicts on an attribute, split by us ------------------------------------------------------
    def _votes(self, workspace: Workspace) -> pl.DataFrame:
        """``item_id, a`` of every item people answered about the attribute: 1 or 0 by the majority
        of its resolved verdicts, null when they tie."""
        votes: dict[str, Counter[str]] = {}
        for verdict in resolved_verdicts(workspace, self.verdict_round):
            if verdict.attribute == self.attribute:
                votes.setdefault(verdict.item_id, Counter())[verdict.value] += 1
        decided: list[int | None] = []
        for counts in votes.values():
            present = sum(n for v, n in counts.items() if v in PRESENT)
            absent = sum(n for v, n in counts.items() if v in ABSENT)
            decided.append(int(present > absent) if present != absent else None)
        return pl.DataFrame({"item_id": list(votes), "a": decided}, schema={"item_id": pl.String, "a": pl.Int64})

    def _decide(self, workspace: Workspace, spill: Spill, y_names: list[str]) -> Counter[str]:
        """Write ``decided`` (``item_id, uri, y, a`` in item_id order) to the spill, a batch of items at
        a time: people's labels first, then machine evidence's; return where the labels came from.

        The attribute's machine evidence is first routed to the range of ids (``item_ranges``, those
        ``item_chunks`` sorts whole) its row is about: one pass over the scan, a part per read and
        range. Each range is read once, for the batches in it, and sorted in memory a batch at a
        time, not in the lazy engine."""
        wanted = pl.Series(y_names, dtype=pl.String).implode()
        ranges = item_ranges(workspace)
        if self.allow_machine and len(ranges):
            evidence = spill.root / "evidence.parquet"  # read once: not compressed (zstd took 3 of 13 s at 1M rows)
            (workspace.catalog.evidence_scan(source=self.evidence_source, attribute=self.attribute)
             .select("item_id", "run_id", "score")
             .sink_parquet(evidence, row_group_size=ROUTE_BATCH, compression="uncompressed"))
            # rows about ids below the first range's go with it and find no item there
            route(spill, "evidence-", batches(pl.scan_parquet(evidence), ROUTE_BATCH), "item_id", ranges)
        voted = self._votes(workspace)
        sources: Counter[str] = Counter()
        ranged, ranged_number = pl.DataFrame(), -1  # the evidence of the range of ids the batch lies in
        for items in item_chunks(workspace, ["uri", "label"], ranges):
            items = items.filter(pl.col("label").is_in(wanted))
            if not items.height:
                continue
            mine = voted.join(items.select("item_id"), on="item_id", how="semi")
            human = mine.filter(pl.col("a").is_not_null())
            sources["human"] += human.height
            sources["undecided"] += mine.height - human.height
            presence = [human]
            number = max(ranges.search_sorted(items["item_id"][0], side="right") - 1, 0)
            if self.allow_machine and number != ranged_number:
                table = f"evidence-{number}"
                ranged, ranged_number = spill.scan(table).collect() if spill.parts(table) else pl.DataFrame(), number
            if ranged.height:
                machine = (ranged.join(items.select("item_id"), on="item_id", how="semi")
                           .join(mine.select("item_id"), on="item_id", how="anti")
                           .sort("item_id", "run_id").unique("item_id", keep="first", maintain_order=True)
                           .select("item_id", a=(pl.col("score").fill_null(0.0) >= self.threshold).cast(pl.Int64)))
                presence.append(machine)
                sources["machine"] += machine.height
            spill.write("decided", pl.concat(presence).join(items, on="item_id").sort("item_id").select(
                "item_id", "uri", "a",
                y=pl.col("label").replace_strict(y_names, range(len(y_names)), return_dtype=pl.Int64)))
        return sources

    def _from_attribute(self, workspace: Workspace, spill: Spill) -> Release:
        y_names = list(self.classes or workspace.catalog.labels())
        sources = self._decide(workspace, spill, y_names)
        if not spill.rows("decided"):
            raise BuildError(f"no item has a verdict on {self.attribute!r}"
                             + ("" if self.allow_machine else " (allow_machine uses machine evidence)"))
        decided = spill.scan("decided")
        a_names = [f"no {self.attribute}", str(self.attribute)]
        majority = list(self.majority or [min(y, 1) for y in range(len(y_names))])
        if len(majority) != len(y_names) or not set(majority) <= {0, 1}:
            raise BuildError(f"majority gives the majority a (0 or 1) of each of the {len(y_names)} classes "
                             f"{', '.join(y_names)}; got {tuple(majority)}")
        found, near_duplicates = self._near_duplicates(workspace, decided.select("item_id", "uri"))
        followers = pl.DataFrame([(member, cluster[0]) for cluster in found for member in cluster[1:]],
                                 schema={"item_id": pl.String, "first": pl.String}, orient="row")
        placed, pools = self._place(spill, followers, len(y_names), majority)
        if not placed:
            sizes = {(int(y), int(a)): n for y, a, n, _ in pools.iter_rows()}
            per_group = {f"{y_names[y]}|{a_names[a]}": n for (y, a), n in sorted(sizes.items())}
            raise BuildError(f"no item can be placed at train_correlation {self.train_correlation}: each class needs "
                             f"items with and without {self.attribute!r} (decided items per class|group: {per_group})")
        for number in range((placed + ID_BATCH - 1) // ID_BATCH):  # the placed rows in id order
            ordered = spill.scan(f"by-id-{number}").collect().sort("id")
            spill.write("placed", ordered.with_columns(filename=image_names(pl.col("item_id"), pl.col("uri")))
                        .select(PLACED))
        present = {(split, y, a): n for split, y, a, n in
                   spill.scan("placed").group_by("split", "y", "a").len().collect().iter_rows()}
        for split in SPLIT_CODES:
            for y in range(len(y_names)):
                for a in (0, 1):
                    if present.get((split, y, a), 0) < self.min_group_size:
                        raise BuildError(f"group {split}|y={y_names[y]}|a={a_names[a]} has "
                                         f"{present.get((split, y, a), 0)} items, fewer than min_group_size "
                                         f"{self.min_group_size}")
        return self._release(spill, y_names, a_names, {
            "labels_from": {"attribute": self.attribute, "verdict_round": self.verdict_round or "all rounds",
                            "human": sources["human"], "machine": sources["machine"],
                            "undecided_left_out": sources["undecided"],
                            "machine_evidence": f"{self.evidence_source} score >= {self.threshold}"
                            if self.allow_machine else "not used"},
            "train_correlation": self.train_correlation, "balance": self.balance, "seed": self.seed,
            "near_duplicates": near_duplicates})

    def _place(self, spill: Spill, followers: pl.DataFrame, n_classes: int,
               majority: list[int]) -> tuple[int, pl.DataFrame]:
        """Give the spill's ``decided`` items their ids and splits, written to ``by-id-<n>``; return
        how many were placed and each group's pool size (``y, a, len, first``).

        Each group's pool is its leaders (one image per near-duplicate cluster) in item_id order,
        shuffled; only the shuffle (one number per item) is held, and each batch of decided items
        finds its ids by its items' ranks in their pools."""
        leader = ~pl.col("item_id").is_in(followers["item_id"].implode())
        pools = (spill.scan("decided").filter(leader).group_by("y", "a")
                 .agg(pl.len(), pl.col("item_id").min().alias("first")).sort("first").collect())
        rng = np.random.default_rng(self.seed)
        shuffled = {(int(y), int(a)): rng.permutation(n) for y, a, n, _ in pools.iter_rows()}
        chunks = self._split({group: order.size for group, order in shuffled.items()}, n_classes, majority)
        # the id each leader gets, by its rank in its pool (0: not placed); ids count chunk by chunk
        by_rank = {group: np.zeros(order.size, dtype=np.int64) for group, order in shuffled.items()}
        starts, splits, placed = [], [], 0
        for group, split, begin, end in chunks:
            if end > begin:
                by_rank[group][shuffled[group][begin:end]] = np.arange(placed + 1, placed + 1 + end - begin)
            starts.append(placed + 1)
            splits.append(split)
            placed += end - begin
        del shuffled
        split_of = pl.Series(splits, dtype=pl.String)
        firsts = followers["first"].unique().implode()
        seen: dict[str, list[pl.DataFrame]] = {"firsts": [], "followers": []}
        taken = dict.fromkeys(by_rank, 0)
        # the first id of each batch of ID_BATCH ids, the followers' (numbered after the leaders) included
        batch_starts = pl.Series(range(1, placed + followers.height + 1, ID_BATCH), dtype=pl.Int64)

        def leaders() -> Iterator[pl.DataFrame]:  # the placed leaders, a decided part at a time
            for part in spill.parts("decided"):
                frame = pl.read_parquet(part)
                seen["followers"].append(frame.filter(~leader).select("item_id", "uri", "y", "a"))
                frame = frame.filter(leader)
                codes = (frame["y"] * 2 + frame["a"]).to_numpy()
                ids = np.zeros(frame.height, dtype=np.int64)
                for code in np.unique(codes):
                    where, group = np.flatnonzero(codes == code), (int(code) // 2, int(code) % 2)
                    ids[where] = by_rank[group][taken[group]:taken[group] + where.size]
                    taken[group] += where.size
                rows = frame.with_columns(id=pl.Series(ids)).filter(pl.col("id") > 0).with_columns(
                    split=split_of.gather(np.searchsorted(starts, ids[ids > 0], side="right") - 1))
                seen["firsts"].append(rows.filter(pl.col("item_id").is_in(firsts)).select(
                    pl.col("item_id").alias("first"), "split"))
                yield rows.select(BY_ID)

        # to the spill tables ``by-id-<n>`` of their id's batch, so each batch can be put in id order on its own
        route(spill, "by-id-", leaders(), "id", batch_starts)
        if self.near_duplicates == "together":  # the rest of a cluster joins its first image's split
            joined = (followers.sort("item_id").join(pl.concat(seen["firsts"]), on="first", maintain_order="left")
                      .join(pl.concat(seen["followers"]), on="item_id", maintain_order="left"))
            route(spill, "by-id-", [joined.with_row_index("id", offset=placed + 1)
                                    .with_columns(pl.col("id").cast(pl.Int64)).select(BY_ID)], "id", batch_starts)
            placed += joined.height
        return placed, pools

    def _near_duplicates(self, workspace: Workspace, items: pl.LazyFrame) -> tuple[list[list[str]], dict[str, Any]]:
        """Clusters of near-duplicates among the items to split (``item_id, uri``), and what
        release.json says of them."""
        if self.near_duplicates == "ignore":
            return [], {"policy": "ignore", "summary": "near-duplicates were not looked for (near_duplicates=ignore)"}
        uris = dict(items.collect().iter_rows())
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

    def _split(self, sizes: dict[tuple[int, int], int], n_classes: int,
               majority: list[int]) -> list[tuple[tuple[int, int], str, int, int]]:
        """How each group's shuffled pool (of ``sizes[(y, a)]`` items) is cut, in the order ids are
        given: ``(group, split, begin, end)`` positions. Validation and test from each group (each pool
        is left with the rest), then training at ``train_correlation``."""
        groups = [(y, a) for y in range(n_classes) for a in (0, 1)]
        per_group: dict[tuple[int, int], int] = {}
        for y, a in groups:
            scope = groups if self.balance == "all" else [(y, b) for b in (0, 1)]
            smallest = min(sizes.get(g, 0) for g in scope)
            per_group[(y, a)] = math.floor(smallest * self.eval_fraction / 2)
        chunks: list[tuple[tuple[int, int], str, int, int]] = []
        used: dict[tuple[int, int], int] = {}
        for (y, a), size in sorted(sizes.items()):
            val = self.val_per_group if self.val_per_group is not None else per_group[(y, a)]
            test = self.test_per_group if self.test_per_group is not None else per_group[(y, a)]
            if val + test > size:
                raise BuildError(f"group y={y}, a={a} has {size} items, fewer than val {val} + test {test}")
            chunks += [((y, a), "val", 0, val), ((y, a), "test", val, val + test)]
            used[(y, a)] = val + test
        for y in range(n_classes):
            major, minor = (y, majority[y]), (y, 1 - majority[y])
            n_major, n_minor = train_sizes(sizes.get(major, 0) - used.get(major, 0),
                                           sizes.get(minor, 0) - used.get(minor, 0), self.train_correlation)
            for group, n in ((major, n_major), (minor, n_minor)):
                chunks.append((group, "train", used.get(group, 0), used.get(group, 0) + n))
        return chunks

    def _release(self, spill: Spill, y_names: list[str], a_names: list[str], how: dict[str, object]) -> Release:
        """The release of the spill's ``placed`` rows (``PLACED``, in id order): one lazy table per split."""
        n_a = len(a_names)
        rows = spill.scan("placed").with_columns(
            (pl.col("y") * n_a + pl.col("a")).alias("g"),
            pl.col("y").replace_strict(range(len(y_names)), y_names, return_dtype=pl.String).alias("y_name"),
            pl.col("a").replace_strict(range(n_a), a_names, return_dtype=pl.String).alias("a_name"))
        groups = rows.group_by(["split", "y", "a"]).len().sort(["split", "y", "a"]).collect()
        counts = {f"{split}|y={y}|a={a}": n for split, y, a, n in groups.iter_rows()}
        for key, n in counts.items():
            if n < self.min_group_size:
                raise BuildError(f"group {key} has {n} items, fewer than min_group_size {self.min_group_size}")
        columns = ["id", "item_id", "uri", "filename", "y", "y_name", "a", "a_name", "g", "split"]
        tables = {split: rows.filter(pl.col("split") == split).select(columns)
                  for split in sorted(groups["split"].unique().to_list(), key=lambda s: SPLIT_CODES.get(s, 9))}
        present = set(groups.select("y", "a").iter_rows())
        empty = [f"y={y_name}, a={a_name}" for y, y_name in enumerate(y_names) for a, a_name in enumerate(a_names)
                 if (y, a) not in present]  # in no split: worst-group accuracy cannot see them
        metadata = {"encoding": ENCODING, "y_names": y_names, "a_names": a_names, "group_counts": counts,
                    "empty_groups": empty, **how}
        images = rows.select(pl.col("filename").alias("name"), "uri")  # every name in metadata.csv, written
        return Release(self.name, tables, metadata, _exports(rows, y_names, a_names), images, spill=spill)
