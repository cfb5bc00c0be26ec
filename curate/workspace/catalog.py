"""The catalogue tables: sources, items, their source references, quarantine, evidence, verdicts."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curate.records import Cue, Evidence, EvidenceRole, Item, Quarantined, SourceRef, Verdict
from curate.spill import Spill, regroup, route
from curate.workspace._sql import digest, dumps, now
from curate.workspace.evidence import EvidenceStore, evidence_records
from curate.workspace.runs import RunLog

Connect = Callable[[], sqlite3.Connection]
Transaction = Callable[[], AbstractContextManager[sqlite3.Connection]]
RunCounts = tuple[str, Mapping[str, int]]


@dataclass(frozen=True, slots=True)
class Source:
    """A registered source: its kind, canonical location and the options it was read with."""

    source_id: str
    kind: str
    location: str
    options: dict[str, Any]

    @staticmethod
    def make_id(kind: str, location: str) -> str:
        """Sources are identified by kind and location, so re-ingesting finds the same source."""
        return f"{kind}-{digest([kind, location])[:12]}"


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """Counts for one source."""

    source: Source
    references: int
    quarantined: int


@dataclass(frozen=True, slots=True)
class WorkspaceStatus:
    """What a workspace holds: items per class and source, quarantine, and runs per stage."""

    items: int
    per_class: dict[str, int]
    sources: list[SourceStatus]
    quarantined: int
    quarantine_reasons: dict[str, int]
    label_conflicts: int
    runs_per_stage: dict[str, dict[str, int]]
    evidence: int
    verdicts: int
    cache_entries: int
    side_tables: list[str] = field(default_factory=list)


def _where(**filters: str | None) -> tuple[str, list[str]]:
    """A ``WHERE`` clause (or nothing) and its arguments for the filters that are set."""
    chosen = {column: value for column, value in filters.items() if value is not None}
    clause = " AND ".join(f"{column} = ?" for column in chosen)
    return (f"WHERE {clause}" if clause else ""), list(chosen.values())


ITEM_COLUMNS: dict[str, pl.DataType] = {
    "item_id": pl.String(), "uri": pl.String(), "label": pl.String(), "width": pl.Int64(), "height": pl.Int64(),
    "mode": pl.String(), "format": pl.String(), "size_bytes": pl.Int64(), "orientation": pl.Int64(),
    "n_frames": pl.Int64(), "license": pl.String(), "metadata": pl.String(), "run_id": pl.String(),
    "created_at": pl.String(),
}


def _item_schema(columns: Sequence[str]) -> dict[str, pl.DataType]:
    """``item_id`` and ``columns`` with their types."""
    return {name: ITEM_COLUMNS[name] for name in ("item_id", *(c for c in columns if c != "item_id"))}


def _item_filters(label: str | None, source_id: str | None) -> tuple[str, list[str]]:
    """`` AND ...`` conditions (or nothing) and their arguments for items of a class and/or a source."""
    where, args = [], []
    if label is not None:
        where.append("label = ?")
        args.append(label)
    if source_id is not None:
        where.append("item_id IN (SELECT item_id FROM item_sources WHERE source_id = ?)")
        args.append(source_id)
    return (f" AND {' AND '.join(where)}" if where else ""), args


def _item_from_row(row: sqlite3.Row) -> Item:
    return Item(
        item_id=row["item_id"], uri=row["uri"], label=row["label"], width=row["width"],
        height=row["height"], mode=row["mode"], format=row["format"], size_bytes=row["size_bytes"],
        orientation=row["orientation"], n_frames=row["n_frames"], license=row["license"],
        metadata=json.loads(row["metadata"]),
    )


GROUP_TABLE_COLUMNS = ("id", "filename", "split", "y", "a", "item_id", "quarantine_reason")


class Catalog:
    """Reads and writes of the catalogue tables. Writes happen in whole transactions."""

    def __init__(self, connect: Connect, transaction: Transaction, runs: RunLog, evidence: EvidenceStore) -> None:
        self._connect = connect
        self._transaction = transaction
        self._runs = runs
        self._evidence = evidence

    # sources ------------------------------------------------------------------------------
    def register_source(self, kind: str, location: str, options: dict[str, Any]) -> Source:
        """Add a source, or update the options of the one with this kind and location."""
        source = Source(Source.make_id(kind, location), kind, location, options)
        stamp = now()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO sources (source_id, kind, location, options, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(source_id) DO UPDATE SET options = excluded.options, "
                "updated_at = excluded.updated_at",
                (source.source_id, kind, location, dumps(options), stamp, stamp),
            )
        return source

    def sources(self) -> list[Source]:
        """All registered sources, oldest first."""
        rows = self._connect().execute("SELECT * FROM sources ORDER BY created_at").fetchall()
        return [Source(r["source_id"], r["kind"], r["location"], json.loads(r["options"])) for r in rows]

    def source(self, source_id: str) -> Source:
        """One source by id."""
        for source in self.sources():
            if source.source_id == source_id:
                return source
        raise KeyError(f"no source {source_id!r}")

    def known_locators(self, source_id: str, locators: Sequence[str]) -> dict[str, tuple[str, str]]:
        """locator -> (fingerprint, run id that stored it) of those of ``locators`` (a batch: each
        is looked up in the primary key) that a source already ingested or quarantined."""
        conn = self._connect()
        known: dict[str, tuple[str, str]] = {}
        marks = ", ".join("?" * len(locators))
        for table in ("quarantine", "item_sources"):  # an entry is in one of them; the item wins
            known.update((row[0], (row[1], row[2])) for row in conn.execute(
                f"SELECT locator, fingerprint, run_id FROM {table} "  # noqa: S608 - fixed names, bound values
                f"WHERE source_id = ? AND locator IN ({marks})", (source_id, *locators)))
        return known

    # ingest -------------------------------------------------------------------------------
    def record_ingest_batch(self, run_id: str, found: Sequence[tuple[Item, SourceRef]],
                            quarantined: Sequence[Quarantined], unchanged: int = 0) -> Counter[str]:
        """Store one batch of ingest results and the run's counts in a single transaction.

        Returns the counts added: ``new_items``, ``duplicates`` (bytes already known, new
        reference), ``quarantined`` and ``quarantined:<reason>``, ``unchanged``.
        """
        counts: Counter[str] = Counter(unchanged=unchanged)
        stamp = now()
        with self._transaction() as conn:
            for item, ref in found:
                known = conn.execute("SELECT 1 FROM items WHERE item_id = ?", (item.item_id,)).fetchone()
                if known:  # the same bytes again: fill what the first source did not know
                    conn.execute("UPDATE items SET label = COALESCE(label, ?), license = COALESCE(license, ?) "
                                 "WHERE item_id = ?", (item.label, item.license, item.item_id))
                else:
                    conn.execute(
                        "INSERT INTO items (item_id, uri, label, width, height, mode, format, size_bytes, "
                        "orientation, n_frames, license, metadata, run_id, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (item.item_id, item.uri, item.label, item.width, item.height, item.mode, item.format,
                         item.size_bytes, item.orientation, item.n_frames, item.license, dumps(item.metadata),
                         run_id, stamp),
                    )
                counts["duplicates" if known else "new_items"] += 1
                conn.execute(
                    "INSERT INTO item_sources (source_id, locator, item_id, fingerprint, label, split, "
                    "metadata, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(source_id, locator) "
                    "DO UPDATE SET item_id = excluded.item_id, fingerprint = excluded.fingerprint, "
                    "label = excluded.label, split = excluded.split, metadata = excluded.metadata, "
                    "run_id = excluded.run_id",
                    (ref.source_id, ref.locator, ref.item_id, ref.fingerprint, ref.label, ref.split,
                     dumps(ref.metadata), run_id),
                )
                conn.execute("DELETE FROM quarantine WHERE source_id = ? AND locator = ?",
                             (ref.source_id, ref.locator))
            for entry in quarantined:
                conn.execute(
                    "INSERT OR REPLACE INTO quarantine (source_id, locator, fingerprint, reason, detail, "
                    "label, split, metadata, run_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.source_id, entry.locator, entry.fingerprint, entry.reason, entry.detail,
                     entry.label, entry.split, dumps(entry.metadata), run_id, stamp),
                )
                conn.execute("DELETE FROM item_sources WHERE source_id = ? AND locator = ?",
                             (entry.source_id, entry.locator))
                counts["quarantined"] += 1
                counts[f"quarantined:{entry.reason}"] += 1
            self._runs.add_counts(conn, run_id, {k: v for k, v in counts.items() if v})
        return counts

    # items --------------------------------------------------------------------------------
    def item(self, item_id: str) -> Item:
        """One item by id."""
        row = self._connect().execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(f"no item {item_id!r}")
        return _item_from_row(row)

    def items(self, label: str | None = None, source_id: str | None = None,
              batch_size: int = 1000) -> Iterator[Item]:
        """Stream items (optionally of one class or one source) in ``item_id`` order."""
        clause, args = _item_filters(label, source_id)
        last = ""
        conn = self._connect()
        while True:
            rows = conn.execute(f"SELECT * FROM items WHERE item_id > ?{clause} ORDER BY item_id LIMIT ?",
                                (last, *args, batch_size)).fetchall()
            if not rows:
                return
            yield from (_item_from_row(row) for row in rows)
            last = rows[-1]["item_id"]

    def item_batches(self, label: str | None = None, source_id: str | None = None, batch_size: int = 100_000,
                     columns: Sequence[str] = tuple(ITEM_COLUMNS)) -> Iterator[pl.DataFrame]:
        """Items as polars frames of ``columns`` (of ``ITEM_COLUMNS``; ``metadata`` as JSON text),
        ``batch_size`` rows at a time in storage order, not id order: a walk through the id index
        fetches each row from a random page, four times the time at a million items
        (``curate.spill.item_chunks`` puts them in id order in bounded memory). One statement, read
        while the frames are taken. What bulk readers stream instead of ``Item`` records.

        >>> import tempfile
        >>> from curate.workspace import Workspace
        >>> list(Workspace.init(tempfile.mkdtemp()).catalog.item_batches(columns=["label"]))
        []
        """
        where, args = _item_filters(label, source_id)
        schema = _item_schema(columns)
        yield from self._frames(f"SELECT {', '.join(schema)} FROM items WHERE 1{where}", args, schema, batch_size)

    def item_bounds(self, every: int) -> list[str]:
        """Every ``every``-th item id in id order, from the first: the lower bounds of ranges of
        ``every`` ids each, read from the id index alone (never a row).

        >>> import tempfile
        >>> from curate.workspace import Workspace
        >>> Workspace.init(tempfile.mkdtemp()).catalog.item_bounds(1000)
        []
        """
        conn = self._connect()
        bounds = [row[0] for row in conn.execute("SELECT MIN(item_id) FROM items") if row[0] is not None]
        while bounds and (row := conn.execute("SELECT item_id FROM items WHERE item_id > ? ORDER BY item_id "
                                              "LIMIT 1 OFFSET ?", (bounds[-1], every - 1)).fetchone()):
            bounds.append(row[0])
        return bounds

    def items_frame(self, label: str | None = None, source_id: str | None = None,
                    columns: Sequence[str] = tuple(ITEM_COLUMNS), *, by_id: bool = True) -> pl.DataFrame:
        """All (matching) items as one polars frame of ``columns`` (see ``item_batches``), in id order,
        or in storage order without ``by_id`` (for a join: sorting a million ids doubles the peak).

        >>> import tempfile
        >>> from curate.workspace import Workspace
        >>> Workspace.init(tempfile.mkdtemp()).catalog.items_frame(columns=["label"]).columns
        ['item_id', 'label']
        """
        where, args = _item_filters(label, source_id)
        schema = _item_schema(columns)
        frame = self._frame(f"SELECT {', '.join(schema)} FROM items WHERE 1{where}", args, schema)  # noqa: S608
        return frame.sort("item_id") if by_id else frame

    def labels(self) -> list[str]:
        """The class labels items carry, sorted."""
        rows = self._connect().execute("SELECT DISTINCT label FROM items WHERE label IS NOT NULL ORDER BY label")
        return [row[0] for row in rows]

    def references(self, item_id: str | None = None, source_id: str | None = None) -> list[SourceRef]:
        """Where items were found (all places of one item, or all entries of one source)."""
        clause, args = _where(item_id=item_id, source_id=source_id)
        rows = self._connect().execute(f"SELECT * FROM item_sources {clause} ORDER BY source_id, locator",
                                       args).fetchall()
        return [SourceRef(r["source_id"], r["locator"], r["item_id"], r["fingerprint"], r["label"],
                          r["split"], json.loads(r["metadata"])) for r in rows]

    def quarantined(self, source_id: str | None = None, limit: int | None = None) -> list[Quarantined]:
        """Entries that did not become items, with their reasons (the first ``limit`` of them)."""
        clause, args = _where(source_id=source_id)
        rows = self._connect().execute(f"SELECT * FROM quarantine {clause} ORDER BY source_id, locator LIMIT ?",
                                       [*args, -1 if limit is None else limit]).fetchall()
        return [Quarantined(r["source_id"], r["locator"], r["reason"], r["detail"], r["fingerprint"],
                            r["label"], r["split"], json.loads(r["metadata"])) for r in rows]

    def count_quarantined(self, source_id: str | None = None) -> int:
        """How many entries are quarantined (of one source, or in all)."""
        clause, args = _where(source_id=source_id)
        return self._connect().execute(f"SELECT COUNT(*) FROM quarantine {clause}", args).fetchone()[0]

    def group_table(self, source_id: str) -> pl.DataFrame:
        """The group table of an ingested ``groups`` source: every row, in id order.

        Columns: ``id, filename, split, y, a`` as in the original table (split as originally coded),
        plus ``item_id`` (null for rows whose image was quarantined) and ``quarantine_reason``.
        """
        source = self.source(source_id)
        if source.kind != "groups":
            raise ValueError(f"source {source_id} is a {source.kind!r} source, not a group table")

        def row(metadata: dict[str, Any], item_id: str | None, reason: str | None) -> dict[str, Any]:
            return {"id": metadata["group_id"], "filename": metadata["filename"], "split": metadata["split_code"],
                    "y": metadata["y"], "a": metadata["a"], "item_id": item_id, "quarantine_reason": reason}

        rows = [row(ref.metadata, ref.item_id, None) for ref in self.references(source_id=source_id)] + [
            row(held.metadata, None, held.reason) for held in self.quarantined(source_id=source_id)
            if "group_id" in held.metadata]
        if not rows:
            return pl.DataFrame({column: [] for column in GROUP_TABLE_COLUMNS})
        return pl.DataFrame(rows, infer_schema_length=None).sort("id")

    # evidence, cues and verdicts ----------------------------------------------------------
    def _count(self, conn: sqlite3.Connection, counts: RunCounts | None) -> None:
        if counts is not None:
            self._runs.add_counts(conn, *counts)

    def add_evidence(self, rows: Iterable[Evidence], counts: RunCounts | None = None) -> int:
        """Store evidence rows (parquet shards, see ``curate.workspace.evidence``); the same key twice
        keeps the latest. Returns rows written.

        ``counts`` (run id, counts) are added to that run in the same transaction.
        """
        return self._evidence.write(rows, counts)

    def evidence_scan(self, *, run_id: str | None = None, source: str | None = None,
                      class_label: str | None = None, attribute: str | None = None,
                      model_version: str | None = None, item_id: str | None = None) -> pl.LazyFrame:
        """Evidence as a lazy polars frame (``curate.workspace.evidence.SCHEMA``), filters in the scan;
        ``class_label`` keeps rows about items of that class.

        >>> import tempfile
        >>> from curate.workspace import Workspace
        >>> Workspace.init(tempfile.mkdtemp()).catalog.evidence_scan(source="clip").collect().height
        0
        """
        scan = self._evidence.scan(run_id=run_id, source=source, attribute=attribute,
                                   model_version=model_version, item_id=item_id)
        if class_label is not None:
            scan = scan.join(self.items_frame(label=class_label).lazy().select("item_id"), on="item_id", how="semi",
                             build_side="force_right")  # the class's items: the streaming join sampled 10M rows first
        return scan

    def evidence(self, item_id: str | None = None, source: str | None = None,
                 run_id: str | None = None) -> list[Evidence]:
        """Evidence records, filtered by item, proposer or run, sorted by key: for small reads only
        (tests, a notebook), since it holds every matching row as a record; stages read
        ``evidence_scan`` and make records of the rows they keep (``evidence_records``)."""
        frame = self.evidence_scan(item_id=item_id, source=source, run_id=run_id).sort(
            ["item_id", "attribute", "source", "run_id"]).collect()
        return list(evidence_records(frame))

    def add_cues(self, rows: Iterable[Cue], counts: RunCounts | None = None, *,
                 replacing: tuple[str, str, str] | None = None) -> int:
        """Store class-level candidate cues; the same key twice keeps the latest (see ``add_evidence``).

        With ``replacing`` (class, proposer, run id) the cues stored before for that class, proposer
        and run are removed in the same transaction.
        """
        with self._transaction() as conn:
            if replacing is not None:
                conn.execute("DELETE FROM cues WHERE class_label = ? AND source = ? AND run_id = ?", replacing)
            self._count(conn, counts)
            return sum(conn.execute(
                "INSERT OR REPLACE INTO cues (class_label, attribute, source, run_id, taxonomy_type, role, extra) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (c.class_label, c.attribute, c.source, c.run_id, c.taxonomy_type, c.role, dumps(c.extra)),
            ).rowcount for c in rows)

    def cues(self, class_label: str | None = None, source: str | None = None,
             run_id: str | None = None) -> list[Cue]:
        """Candidate cues, filtered by class, proposer or run."""
        clause, args = _where(class_label=class_label, source=source, run_id=run_id)
        rows = self._connect().execute(f"SELECT * FROM cues {clause} ORDER BY class_label, attribute, source",
                                       args).fetchall()
        return [Cue(r["class_label"], r["attribute"], r["source"], r["run_id"], r["taxonomy_type"],
                    EvidenceRole(r["role"]), json.loads(r["extra"])) for r in rows]

    def evidence_runs(self, item_ids: pl.Series) -> set[str]:
        """The runs that stored evidence on any of ``item_ids`` (what fed a release of them)."""
        scan = self._evidence.scan(item_ids=item_ids)
        return set(scan.select("run_id").unique().collect()["run_id"])

    def add_verdicts(self, rows: Iterable[Verdict]) -> int:
        """Store verdicts; a verdict with the same key (item, attribute, annotator, round) replaces it."""
        stamp = now()
        with self._transaction() as conn:
            return sum(conn.execute(
                "INSERT OR REPLACE INTO verdicts (item_id, attribute, annotator, round, value, taxonomy_type, "
                "extra, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (v.item_id, v.attribute, v.annotator, v.round, v.value, v.taxonomy_type, dumps(v.extra), stamp),
            ).rowcount for v in rows)

    def replace_verdicts(self, round: str, rows: Iterable[Verdict]) -> tuple[int, int]:
        """Make ``rows`` the whole of a round's verdicts (what a pull reads is the server's current
        state: answers deleted there go here too). Returns (stored, removed)."""
        rows = list(rows)
        if any(v.round != round for v in rows):
            raise ValueError(f"replace_verdicts({round!r}) got verdicts of another round")
        keys = {(v.item_id, v.attribute, v.annotator) for v in rows}
        with self._transaction() as conn:
            stale = [(r["item_id"], r["attribute"], r["annotator"]) for r in conn.execute(
                "SELECT item_id, attribute, annotator FROM verdicts WHERE round = ?", (round,))
                if (r["item_id"], r["attribute"], r["annotator"]) not in keys]
            conn.executemany("DELETE FROM verdicts WHERE item_id = ? AND attribute = ? AND annotator = ? "
                             "AND round = ?", [(*key, round) for key in stale])
            return self.add_verdicts(rows), len(stale)

    def verdicts(self, round: str | None = None) -> list[Verdict]:
        """Verdicts, optionally of one round."""
        clause, args = _where(round=round)
        rows = self._connect().execute(f"SELECT * FROM verdicts {clause} ORDER BY item_id, attribute",
                                       args).fetchall()
        return [Verdict(r["item_id"], r["attribute"], r["annotator"], r["round"], r["value"],
                        r["taxonomy_type"], json.loads(r["extra"])) for r in rows]

    # status -------------------------------------------------------------------------------
    def status(self, cache_entries: int, side_tables: list[str]) -> WorkspaceStatus:
        """Counts per class, per source, quarantined and runs per stage (items per class and source and
        label conflicts come from the counts the catalogue's triggers keep: no scan of the items)."""
        conn = self._connect()

        def scalar(query: str) -> int:
            return conn.execute(query).fetchone()[0]

        per_class = {(r[1] if r[0] == "class" else "<unlabelled>"): r[2] for r in conn.execute(
            "SELECT kind, key, n FROM counts WHERE kind IN ('class', 'unlabelled') AND n > 0 "
            "ORDER BY kind = 'class', key")}
        refs = dict(conn.execute("SELECT key, n FROM counts WHERE kind = 'source'").fetchall())
        held = dict(conn.execute("SELECT source_id, COUNT(*) FROM quarantine GROUP BY source_id").fetchall())
        sources = [SourceStatus(s, refs.get(s.source_id, 0), held.get(s.source_id, 0)) for s in self.sources()]
        reasons = dict(conn.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason"))
        stages: dict[str, dict[str, int]] = {}
        for run in self._runs.list():
            stages.setdefault(run.stage, Counter())[run.status.value] += 1
        return WorkspaceStatus(
            items=scalar("SELECT COALESCE(SUM(n), 0) FROM counts WHERE kind IN ('class', 'unlabelled')"),
            per_class=per_class, sources=sources,
            quarantined=sum(held.values()), quarantine_reasons=reasons,
            label_conflicts=scalar("SELECT COUNT(*) FROM label_conflicts"),
            runs_per_stage={stage: dict(counts) for stage, counts in stages.items()},
            evidence=self._evidence.count(), verdicts=scalar("SELECT COUNT(*) FROM verdicts"),
            cache_entries=cache_entries, side_tables=side_tables,
        )

    def export_rows(self, table: str, batch_size: int = 10_000,
                    **filters: str | None) -> Iterator[list[dict[str, Any]]]:
        """Raw rows of ``cues`` in batches by rowid, for bulk exports (items: ``item_export``)."""
        clause, args = _where(**filters)
        query = _EXPORT_QUERIES[table].format(where=f"{clause} AND" if clause else "WHERE")
        conn = self._connect()
        last = 0
        while True:
            rows = conn.execute(query, (*args, last, batch_size)).fetchall()
            if not rows:
                return
            yield [{k: v for k, v in dict(row).items() if k != "row_number"} for row in rows]
            last = rows[-1]["row_number"]

    def item_export(self, filters: Mapping[str, str | None] | None = None,
                    batch_size: int = 10_000) -> Iterator[pl.DataFrame]:
        """Items (``filters``: column values) with their first source (``source_id:locator``, the
        first by source and locator) and number of sources, in storage (rowid) order, ``batch_size``
        rows a frame: what an items export writes.

        Looking up each item's references through an index reads random pages (16 times the time at
        10 times the items). Instead the references (read in storage order) and the items' rowids
        (from the id index alone) go to a spill table per range of ids, each range's references
        are counted by rowid and go to a spill table per range of rowids, and each range of items
        is read in storage order and takes its counts from its table.

        >>> import tempfile
        >>> from curate.workspace import Workspace
        >>> list(Workspace.init(tempfile.mkdtemp()).catalog.item_export())
        []
        """
        clause, args = _where(**(filters or {}))
        ids = pl.Series(self.item_bounds(EXPORT_RANGE), dtype=pl.String)
        low, high = self._connect().execute("SELECT MIN(rowid), MAX(rowid) FROM items").fetchone()
        rowids = list(range(low or 0, (high or -1) + 1, EXPORT_RANGE))
        text = pl.String()
        spill = Spill()
        try:
            route(spill, "refs-", self._frames("SELECT item_id, source_id, locator FROM item_sources", [],
                                               {"item_id": text, "source_id": text, "locator": text}), "item_id", ids)
            rowid_of = {"item_id": text, "rowid": pl.Int64()}

            def counted() -> Iterator[pl.DataFrame]:  # ``rowid, first_source, n_sources``, a range of ids at a time
                for number in range(len(ids)):
                    if spill.parts(f"refs-{number}"):  # the range's items by id: from the id index alone
                        limits = [ids[number] if number else "", *ids[number + 1:number + 2]]  # ids below the
                        rowids_here = self._frame(  # first bound go with the first range
                            "SELECT item_id, rowid FROM items WHERE item_id >= ?"
                            + " AND item_id < ?" * (len(limits) - 1), limits, rowid_of)
                        yield (spill.scan(f"refs-{number}").sort("item_id", "source_id", "locator")
                               .group_by("item_id", maintain_order=True)
                               .agg(first_source=pl.format("{}:{}", pl.first("source_id"), pl.first("locator")),
                                    n_sources=pl.len().cast(pl.Int64))
                               .join(rowids_here.lazy(), on="item_id").drop("item_id").collect())

            route(spill, "counts-", counted(), "rowid", pl.Series(rowids, dtype=pl.Int64))
            condition = f" AND {clause.removeprefix('WHERE ')}" if clause else ""
            selected = (f"SELECT rowid, {', '.join(ITEM_COLUMNS)} FROM items "  # noqa: S608
                        f"WHERE rowid >= ? AND rowid < ?{condition} ORDER BY rowid")
            schema = {"rowid": pl.Int64(), **ITEM_COLUMNS}
            empty = pl.DataFrame(schema={"first_source": text, "n_sources": pl.Int64(), "rowid": pl.Int64()})

            def ranges() -> Iterator[pl.DataFrame]:  # items in storage order with their counts, a read at a time
                for number, start in enumerate(rowids):
                    counted = spill.scan(f"counts-{number}").collect() if spill.parts(f"counts-{number}") else empty
                    end = start + EXPORT_RANGE
                    for low in range(start, end, READ_RANGE):
                        yield from (frame.join(counted, on="rowid", how="left", maintain_order="left")
                                    .with_columns(pl.col("n_sources").fill_null(0)).drop("rowid") for frame in
                                    self._frames(selected, [low, min(low + READ_RANGE, end), *args], schema))

            yield from regroup(ranges(), batch_size)
        finally:
            spill.close()

    def _frames(self, query: str, args: Sequence[Any], schema: Mapping[str, pl.DataType],
                rows: int = 8192) -> Iterator[pl.DataFrame]:
        """The rows of one ``query`` as frames of ``schema``, ``rows`` at a time."""
        cursor = self._connect().cursor()
        cursor.row_factory = None  # plain tuples
        cursor.execute(query, args)
        while batch := cursor.fetchmany(rows):
            yield pl.DataFrame(batch, schema=dict(schema), orient="row")

    def _frame(self, query: str, args: Sequence[Any], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
        """The rows of one ``query`` as one frame of ``schema``."""
        frames = list(self._frames(query, args, schema))
        return pl.concat(frames) if frames else pl.DataFrame(schema=dict(schema))

    def items_by_id(self, item_ids: Sequence[str]) -> list[Item]:
        """The items of ``item_ids`` (a batch: one query), in that order; ids not in the catalogue are
        left out. What a reader holding only ids (a scoring pass) makes its records from."""
        rows = self._connect().execute("SELECT * FROM items WHERE item_id IN (SELECT value FROM json_each(?))",
                                       (json.dumps(list(item_ids)),)).fetchall()
        found = {row["item_id"]: _item_from_row(row) for row in rows}
        return [found[item_id] for item_id in item_ids if item_id in found]


_EXPORT_QUERIES = {
    "cues": "SELECT rowid AS row_number, * FROM cues {where} rowid > ? ORDER BY rowid LIMIT ?",
}
EXPORT_RANGE = 65_536  # items (ids, then rowids) an items export matches to their references at a time
READ_RANGE = 8192  # rowids of the items an items export reads at a time
