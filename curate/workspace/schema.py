"""The SQLite catalogue's schema, as an ordered list of migrations.

``PRAGMA user_version`` holds the schema version. A migration is appended, never edited: the
version of a workspace is the number of migrations applied to it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

_V1_CATALOGUE = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE sources (
    source_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    location TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE items (
    item_id TEXT PRIMARY KEY,
    uri TEXT NOT NULL,
    label TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    mode TEXT NOT NULL,
    format TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    orientation INTEGER NOT NULL DEFAULT 1,
    n_frames INTEGER NOT NULL DEFAULT 1,
    license TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    run_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX items_label ON items(label);
CREATE TABLE item_sources (
    source_id TEXT NOT NULL REFERENCES sources(source_id),
    locator TEXT NOT NULL,
    item_id TEXT NOT NULL REFERENCES items(item_id),
    fingerprint TEXT NOT NULL,
    label TEXT,
    split TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    run_id TEXT NOT NULL,
    PRIMARY KEY (source_id, locator)
);
CREATE INDEX item_sources_item ON item_sources(item_id);
CREATE TABLE quarantine (
    source_id TEXT NOT NULL REFERENCES sources(source_id),
    locator TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    label TEXT,
    split TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    run_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (source_id, locator)
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    code_version TEXT NOT NULL,
    models TEXT NOT NULL DEFAULT '{}',
    counts TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT,
    pid INTEGER,
    host TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    error TEXT
);
CREATE INDEX runs_stage_fingerprint ON runs(stage, fingerprint);
CREATE TABLE evidence (
    item_id TEXT NOT NULL REFERENCES items(item_id),
    attribute TEXT NOT NULL,
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    role TEXT NOT NULL,
    taxonomy_type TEXT,
    score REAL,
    boxes TEXT NOT NULL DEFAULT '[]',
    model TEXT,
    model_version TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (item_id, attribute, source, run_id)
);
CREATE TABLE verdicts (
    item_id TEXT NOT NULL REFERENCES items(item_id),
    attribute TEXT NOT NULL,
    annotator TEXT NOT NULL,
    round TEXT NOT NULL,
    value TEXT NOT NULL,
    taxonomy_type TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    PRIMARY KEY (item_id, attribute, annotator, round)
);
CREATE TABLE cache (
    key TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    value BLOB,
    path TEXT,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX cache_namespace ON cache(namespace, model);
"""

_V2_CUES = """
CREATE TABLE cues (
    class_label TEXT NOT NULL,
    attribute TEXT NOT NULL,
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    taxonomy_type TEXT,
    role TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (class_label, attribute, source, run_id)
);
CREATE INDEX evidence_run ON evidence(run_id);
"""

_V3_EVIDENCE_SHARDS = """
CREATE TABLE evidence_shards (
    shard_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    path TEXT NOT NULL,
    rows INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX evidence_shards_run ON evidence_shards(run_id)
"""
MIGRATION_CHUNK_ROWS = 500_000


def _v3_evidence_to_parquet(conn: sqlite3.Connection) -> None:
    """Evidence leaves SQLite for parquet shards (``curate.workspace.evidence``), one or more per run,
    registered in the same transaction that drops the table."""
    from curate.workspace.evidence import EvidenceStore, frame_from_sql

    for statement in _V3_EVIDENCE_SHARDS.split(";"):
        conn.execute(statement)
    # ignored below (attr-defined): the migration's connection is ours, opened with its path attached
    store = EvidenceStore(Path(conn.path).parent, lambda: conn, _joined(conn), lambda *_: None)  # type: ignore[attr-defined]
    runs = [row[0] for row in conn.execute("SELECT DISTINCT run_id FROM evidence ORDER BY run_id")]
    for run_id in runs:
        cursor = conn.execute("SELECT * FROM evidence WHERE run_id = ? ORDER BY rowid", (run_id,))
        while rows := cursor.fetchmany(MIGRATION_CHUNK_ROWS):
            store.write_frame(frame_from_sql(rows))
    conn.execute("DROP TABLE evidence")


def _joined(conn: sqlite3.Connection) -> Callable[[], contextlib.AbstractContextManager[sqlite3.Connection]]:
    """A transaction factory that joins the migration's open transaction."""
    return lambda: contextlib.nullcontext(conn)


# One SQL script (or function) per version. Scripts run statement by statement inside the caller's
# transaction (sqlite3's executescript would commit half-way); functions run inside it too.
Migration = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Migration, ...] = (_V1_CATALOGUE, _V2_CUES, _v3_evidence_to_parquet)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    """The workspace was written by a newer curate than the one reading it."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the catalogue up to ``SCHEMA_VERSION``; return the version it started at.

    Each migration runs in its own exclusive transaction together with the version bump, so a
    crash leaves the catalogue at a whole version and two processes never migrate twice.
    """
    start = conn.execute("PRAGMA user_version").fetchone()[0]
    if start > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"workspace schema v{start} is newer than this curate understands (v{SCHEMA_VERSION}); "
            "upgrade curate to open it"
        )
    for version in range(start, SCHEMA_VERSION):
        conn.execute("BEGIN EXCLUSIVE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            step = MIGRATIONS[version]
            if current == version:  # another process may have migrated meanwhile
                if callable(step):
                    step(conn)
                else:
                    for statement in step.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return start
