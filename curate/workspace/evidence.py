"""Machine evidence as zstd parquet shards beside the catalogue, registered in it.

A shard is ``evidence/run=<run>/<shard id>-<token>.parquet``: the rows one write stored for one run.
It is written to a locked temporary name and renamed inside the SQLite transaction that registers it
(``evidence_shards``) together with the run's counts, so a crash leaves either a registered whole
shard or an unregistered leftover that ``sweep`` removes. Readers see registered shards only.

A row scored only as a negative for another class's cue names that class in the ``negative_of``
column (``Evidence.extra[NEGATIVE_OF]`` in a record), so readers that tell the two apart read one
short column, not every row's JSON. Shards written before that column existed keep it inside
``extra``; the scan reads it from there for them.

The same key (item, attribute, source, run) written twice keeps the latest row: a run of one shard
holds each key once; a run of several is de-duplicated when read, and compacted into one shard when
it finishes (``compact``), and its trailing small shards are merged as they pile up, so small
batches never leave a file each.

>>> import tempfile
>>> from curate.workspace import Workspace
>>> from curate.records import Evidence
>>> ws = Workspace.init(tempfile.mkdtemp())
>>> ws.catalog.add_evidence([Evidence("i1", "grass", "clip", "r1", score=0.7)])
1
>>> ws.evidence.scan(source="clip").select("item_id", "score").collect().rows()
[('i1', 0.7)]
"""

from __future__ import annotations

import functools
import io
import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from itertools import groupby
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl

from curate.records import NEGATIVE_OF, Evidence, EvidenceRole
from curate.workspace._sql import (
    atomic_write_bytes,
    dumps,
    locked_temporary,
    now,
    remove_orphaned_temporaries,
)

Connect = Callable[[], sqlite3.Connection]
Transaction = Callable[[], AbstractContextManager[sqlite3.Connection]]
AddCounts = Callable[[sqlite3.Connection, str, Mapping[str, int]], None]

EVIDENCE_FOLDER = "evidence"
KEY = ("item_id", "attribute", "source", "run_id")
LEGACY_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(), "attribute": pl.String(), "source": pl.String(), "run_id": pl.String(),
    "role": pl.String(), "taxonomy_type": pl.String(), "score": pl.Float64(),
    "boxes": pl.List(pl.List(pl.Float64())), "model": pl.String(), "model_version": pl.String(),
    "extra": pl.String(),
}
"""Shards written before ``negative_of`` was a column of its own."""
SCHEMA: dict[str, pl.DataType] = {**LEGACY_SCHEMA, NEGATIVE_OF: pl.String()}
SMALL_SHARD_ROWS = 100_000  # shards below this are merged once ``MERGE_AFTER`` of them trail a run
MERGE_AFTER = 64


def evidence_frame(rows: Iterable[Evidence]) -> pl.DataFrame:
    """Evidence records as a frame of the stored schema (``extra`` as canonical JSON text, its
    ``negative_of`` as a column).

    >>> evidence_frame([Evidence("i1", "grass", "clip", "r1", extra={"negative_of": "dog", "rank": 2})]).select(
    ...     "extra", "negative_of").rows()
    [('{"rank":2}', 'dog')]
    """
    return pl.DataFrame(
        [(e.item_id, e.attribute, e.source, e.run_id, str(e.role), e.taxonomy_type,
          None if e.score is None else float(e.score), [[float(v) for v in box] for box in e.boxes],
          e.model, e.model_version, *_split_extra(e.extra)) for e in rows],
        schema=SCHEMA, orient="row",
    )


def _split_extra(extra: Mapping[str, Any]) -> tuple[str, str | None]:
    """``extra`` as JSON text without ``negative_of``, and ``negative_of`` as text (None where it is
    absent or null, as ``extra_field`` reads it).

    >>> _split_extra({"negative_of": "dog", "n": 1}), _split_extra({"negative_of": None})
    (('{"n":1}', 'dog'), ('{}', None))
    """
    negative = extra.get(NEGATIVE_OF)
    rest = dumps({k: v for k, v in extra.items() if k != NEGATIVE_OF})
    return rest, None if negative is None else negative if isinstance(negative, str) else dumps(negative)


def evidence_records(frame: pl.DataFrame) -> Iterator[Evidence]:
    """Stored rows back as records (``negative_of`` back inside ``extra``)."""
    for r in frame.select(list(SCHEMA)).iter_rows(named=True):
        extra = json.loads(r["extra"])
        if r[NEGATIVE_OF] is not None:
            extra[NEGATIVE_OF] = r[NEGATIVE_OF]
        yield Evidence(r["item_id"], r["attribute"], r["source"], r["run_id"], EvidenceRole(r["role"]),
                       r["taxonomy_type"], r["score"], [list(box) for box in r["boxes"] or []], r["model"],
                       r["model_version"], extra)


def frame_from_sql(rows: Sequence[sqlite3.Row]) -> pl.DataFrame:
    """Rows of the schema-v2 ``evidence`` table (JSON text boxes) as a frame of ``SCHEMA``."""
    return pl.DataFrame(
        [(r["item_id"], r["attribute"], r["source"], r["run_id"], r["role"], r["taxonomy_type"],
          None if r["score"] is None else float(r["score"]),
          [[float(v) for v in box] for box in json.loads(r["boxes"])], r["model"], r["model_version"],
          *_split_extra(json.loads(r["extra"]))) for r in rows],
        schema=SCHEMA, orient="row",
    )


def _parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    return buffer.getvalue()


def shard_path(run_id: str, shard_id: int) -> str:
    """Where a shard lives, relative to the workspace.

    >>> shard_path("propose-1", 7).startswith("evidence/run=propose-1/0000000007-")
    True
    """
    return f"{EVIDENCE_FOLDER}/run={quote(run_id, safe='')}/{shard_id:010d}-{secrets.token_hex(4)}.parquet"


class EvidenceStore:
    """Write, scan, compact and clean the evidence shards of one workspace."""

    def __init__(self, root: Path, connect: Connect, transaction: Transaction, add_counts: AddCounts) -> None:
        self.root = root
        self._connect = connect
        self._transaction = transaction
        self._add_counts = add_counts

    # writing ------------------------------------------------------------------------------
    def write(self, rows: Iterable[Evidence], counts: tuple[str, Mapping[str, int]] | None = None) -> int:
        """Store rows (one shard per run they belong to) and ``counts`` in one transaction; return
        how many rows were given."""
        return self.write_frame(evidence_frame(rows), counts)

    def write_frame(self, frame: pl.DataFrame, counts: tuple[str, Mapping[str, int]] | None = None) -> int:
        """``write`` for rows already in a frame of ``SCHEMA``."""
        runs = frame["run_id"].unique(maintain_order=True).to_list()
        payloads = []
        for run_id in runs:
            part = frame.filter(pl.col("run_id") == run_id).unique(list(KEY), keep="last", maintain_order=True)
            payloads.append((run_id, _parquet(part), part.height))
        written: list[Path] = []
        try:
            with self._transaction() as conn:
                if counts is not None:
                    self._add_counts(conn, *counts)
                for run_id, data, height in payloads:
                    # ignored below (misc): the default argument binds each shard's bytes to its own lambda
                    written.append(self._register(conn, run_id, height, lambda target, d=data:  # type: ignore[misc]
                                                  atomic_write_bytes(target, d)))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        for run_id in runs:
            self.compact(run_id, whole=False)
        return frame.height

    def _register(self, conn: sqlite3.Connection, run_id: str, rows: int, put: Callable[[Path], None],
                  shard_id: int | None = None) -> Path:
        """Register a shard (a new id, or ``shard_id``) and put its file in place, in ``conn``'s transaction."""
        if shard_id is None:
            shard_id = conn.execute("INSERT INTO evidence_shards (run_id, path, rows, created_at) "
                                    "VALUES (?, '', ?, ?)", (run_id, rows, now())).lastrowid
        else:
            conn.execute("INSERT INTO evidence_shards (shard_id, run_id, path, rows, created_at) "
                         "VALUES (?, ?, '', ?, ?)", (shard_id, run_id, rows, now()))
        # ignored below (arg-type): lastrowid is set after an INSERT
        relative = shard_path(run_id, int(shard_id))  # type: ignore[arg-type]
        conn.execute("UPDATE evidence_shards SET path = ? WHERE shard_id = ?", (relative, shard_id))
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        put(target)
        return target

    def compact(self, run_id: str, *, whole: bool = True) -> bool:
        """Merge a run's shards into one (``whole``), or only its trailing small shards once
        ``MERGE_AFTER`` of them pile up; the latest row of a key wins. Returns whether it merged.

        The merged shard takes the id of the last one it replaces, so rows a concurrent writer adds
        meanwhile still count as newer; replaced files are deleted after the commit (a crash in
        between leaves unregistered files for ``sweep``).
        """
        shards = self._shards(run_id)
        if not whole:
            trailing: list[sqlite3.Row] = []
            for shard in reversed(shards):
                if shard["rows"] >= SMALL_SHARD_ROWS:
                    break
                trailing.append(shard)
            shards = trailing[::-1] if len(trailing) >= MERGE_AFTER else []
        if len(shards) < 2:
            return False
        merged = _deduplicated([self.root / s["path"] for s in shards])
        handle, tmp = locked_temporary(self.root / shards[-1]["path"])
        try:
            with handle:
                merged.sink_parquet(tmp, compression="zstd")
                rows = pl.scan_parquet(tmp).select(pl.len()).collect().item()
                ids = [s["shard_id"] for s in shards]
                with self._transaction() as conn:
                    still = conn.execute(f"SELECT COUNT(*) FROM evidence_shards WHERE shard_id IN "  # noqa: S608
                                         f"({', '.join('?' * len(ids))})", ids).fetchone()[0]
                    if still != len(ids):  # another process compacted them meanwhile
                        return False
                    conn.executemany("DELETE FROM evidence_shards WHERE shard_id = ?", [(i,) for i in ids])
                    self._register(conn, run_id, rows, lambda target: os.replace(tmp, target), shard_id=ids[-1])
        finally:
            tmp.unlink(missing_ok=True)
        for shard in shards:
            (self.root / shard["path"]).unlink(missing_ok=True)
        return True

    def sweep(self) -> int:
        """Delete shard files no registration names and temporaries no live writer holds (what a
        killed writer or compaction left); return how many files went."""
        folder = self.root / EVIDENCE_FOLDER
        if not folder.is_dir():
            return 0
        removed = remove_orphaned_temporaries(folder)

        def unregistered(conn: sqlite3.Connection) -> list[Path]:
            known = {row[0] for row in conn.execute("SELECT path FROM evidence_shards")}
            return [p for p in folder.rglob("*.parquet") if not p.name.startswith(".")
                    and p.relative_to(self.root).as_posix() not in known]

        if not unregistered(self._connect()):
            return removed
        with self._transaction() as conn:  # writers rename and register under this lock: no race
            for path in unregistered(conn):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # reading ------------------------------------------------------------------------------
    def _shards(self, run_id: str | None = None) -> list[sqlite3.Row]:
        clause, args = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
        return self._connect().execute(f"SELECT shard_id, run_id, path, rows FROM evidence_shards {clause} "  # noqa: S608
                                       "ORDER BY shard_id", args).fetchall()

    def scan(self, *, run_id: str | None = None, source: str | None = None, item_id: str | None = None,
             attribute: str | None = None, model_version: str | None = None,
             item_ids: Sequence[str] | pl.Series | None = None) -> pl.LazyFrame:
        """A lazy frame of the stored evidence (``SCHEMA``), each key once, filtered in the scan."""
        by_run: dict[str, list[Path]] = {}
        for shard in self._shards(run_id):
            by_run.setdefault(shard["run_id"], []).append(self.root / shard["path"])
        single = [paths[0] for paths in by_run.values() if len(paths) == 1]
        frames = [_deduplicated(paths) for paths in by_run.values() if len(paths) > 1]
        if single:
            frames.insert(0, _scan_shards(single))
        if not frames:
            return pl.LazyFrame(schema=SCHEMA)
        scan = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
        for column, value in (("source", source), ("item_id", item_id), ("attribute", attribute),
                              ("model_version", model_version)):
            if value is not None:
                scan = scan.filter(pl.col(column) == value)
        if item_ids is not None:
            scan = scan.filter(pl.col("item_id").is_in(pl.Series(item_ids, dtype=pl.String).implode()))
        return scan

    def run_ids(self) -> list[str]:
        """The runs that stored evidence, by id (from the registry: no shard is read).

        >>> import tempfile
        >>> from curate.workspace import Workspace
        >>> Workspace.init(tempfile.mkdtemp()).evidence.run_ids()
        []
        """
        return [row[0] for row in self._connect().execute(
            "SELECT DISTINCT run_id FROM evidence_shards ORDER BY run_id")]

    def count(self) -> int:
        """How many rows the scan holds (registered counts, de-duplicated only where a run has several shards)."""
        conn = self._connect()
        rows = conn.execute("SELECT COALESCE(SUM(rows), 0) FROM evidence_shards WHERE run_id IN "
                            "(SELECT run_id FROM evidence_shards GROUP BY run_id HAVING COUNT(*) = 1)").fetchone()[0]
        several = [r[0] for r in conn.execute("SELECT run_id FROM evidence_shards GROUP BY run_id HAVING COUNT(*) > 1")]
        return int(rows) + sum(self.scan(run_id=run).select(pl.len()).collect().item() for run in several)

    def disk_bytes(self) -> int:
        """Bytes the registered shards take."""
        return sum((self.root / s["path"]).stat().st_size for s in self._shards())


def _deduplicated(paths: Sequence[Path]) -> pl.LazyFrame:
    """The shards of one run, in order, with the latest row of each key."""
    return _scan_shards(paths).unique(list(KEY), keep="last", maintain_order=True)


def _scan_shards(paths: Sequence[Path]) -> pl.LazyFrame:
    """Shards in order as one scan of ``SCHEMA``; a shard of ``LEGACY_SCHEMA`` gets its
    ``negative_of`` from its ``extra`` (which keeps it too: removing a key from JSON text is not
    exact in polars)."""
    scans = []
    for legacy, run in groupby(paths, key=_is_legacy):
        scan = pl.scan_parquet(list(run), schema=LEGACY_SCHEMA if legacy else SCHEMA, hive_partitioning=False)
        marked = pl.col("extra").str.contains(f'"{NEGATIVE_OF}"', literal=True)  # JSON parsed only where it may be
        scans.append(scan.with_columns(pl.when(marked).then(extra_field(NEGATIVE_OF)).alias(NEGATIVE_OF))
                     if legacy else scan)
    return pl.concat(scans, how="vertical") if len(scans) > 1 else scans[0]


def _is_legacy(path: Path) -> bool:
    """Whether a shard predates the ``negative_of`` column (its footer says; read once per file version)."""
    try:
        stat = path.stat()
    except FileNotFoundError:  # compacted away meanwhile: the scan says so when it reads
        return False
    return _footer_lacks_negative_of(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=65_536)
def _footer_lacks_negative_of(path: Path, size: int, modified_ns: int) -> bool:
    return NEGATIVE_OF not in pl.read_parquet_schema(path)



def extra_field(key: str) -> pl.Expr:
    """``extra[key]`` of each row of a scan as text (a string as itself, anything else as JSON),
    null where the key is absent: filters on ``extra`` that stay in polars.

    >>> frame = pl.DataFrame({"extra": ['{"class": "dog", "component": 2}', '{}']})
    >>> frame.select(extra_field("class"), extra_field("component")).rows()
    [('dog', '2'), (None, None)]
    """
    return pl.col("extra").str.json_path_match(f"$.{key}").alias(key)
