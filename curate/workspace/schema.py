"""The SQLite catalogue's schema, as an ordered list of migrations.

``PRAGMA user_version`` holds the schema version. A migration is appended, never edited: the
version of a workspace is the number of migrations applied to it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from curate.progress import progress_bar

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


def _counted(kind: str, key: str, step: int) -> str:
    """The statement (of a trigger) that adds ``step`` to the ``counts`` row of ``kind`` and ``key``."""
    return (f"INSERT INTO counts (kind, key, n) VALUES ({kind}, {key}, {step}) "
            "ON CONFLICT (kind, key) DO UPDATE SET n = n + excluded.n;")


def _class_counted(label: str, step: int) -> str:
    """``_counted`` for items of class ``label`` (kind ``unlabelled`` when it is NULL)."""
    return _counted(f"CASE WHEN {label} IS NULL THEN 'unlabelled' ELSE 'class' END", f"COALESCE({label}, '')", step)


def _source_counted(source_id: str, step: int) -> str:
    """``_counted`` for the references of source ``source_id``."""
    return _counted("'source'", source_id, step)


def _conflict_rechecked(item_id: str) -> str:
    """The statements (of a trigger) that put an item in ``label_conflicts`` when its references carry
    more than one label and take it out otherwise (a few rows read through ``item_sources_item``)."""
    return (f"DELETE FROM label_conflicts WHERE item_id = {item_id}; "
            f"INSERT INTO label_conflicts (item_id) SELECT {item_id} WHERE "
            f"(SELECT COUNT(DISTINCT label) FROM item_sources WHERE item_id = {item_id}) > 1;")


_V4_STATUS_COUNTS = [
    "CREATE TABLE counts (kind TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (kind, key)) "
    "WITHOUT ROWID",
    "CREATE TABLE label_conflicts (item_id TEXT PRIMARY KEY) WITHOUT ROWID",
    "INSERT INTO counts (kind, key, n) SELECT CASE WHEN label IS NULL THEN 'unlabelled' ELSE 'class' END, "
    "COALESCE(label, ''), COUNT(*) FROM items GROUP BY label",
    "INSERT INTO counts (kind, key, n) SELECT 'source', source_id, COUNT(*) FROM item_sources GROUP BY source_id",
    "INSERT INTO label_conflicts (item_id) SELECT item_id FROM item_sources WHERE label IS NOT NULL "
    "GROUP BY item_id HAVING COUNT(DISTINCT label) > 1",
    f"CREATE TRIGGER items_counted AFTER INSERT ON items BEGIN {_class_counted('NEW.label', 1)} END",
    f"CREATE TRIGGER items_uncounted AFTER DELETE ON items BEGIN {_class_counted('OLD.label', -1)} END",
    "CREATE TRIGGER items_relabelled AFTER UPDATE OF label ON items WHEN OLD.label IS NOT NEW.label BEGIN "
    f"{_class_counted('OLD.label', -1)} {_class_counted('NEW.label', 1)} END",
    # a new reference can only add a conflict: one probe of the item's other labels, none when it has no label
    "CREATE TRIGGER item_sources_counted AFTER INSERT ON item_sources BEGIN "
    f"{_source_counted('NEW.source_id', 1)} "
    "INSERT OR IGNORE INTO label_conflicts (item_id) SELECT NEW.item_id WHERE NEW.label IS NOT NULL AND EXISTS "
    "(SELECT 1 FROM item_sources WHERE item_id = NEW.item_id AND label <> NEW.label); END",
    "CREATE TRIGGER item_sources_uncounted AFTER DELETE ON item_sources BEGIN "
    f"{_source_counted('OLD.source_id', -1)} {_conflict_rechecked('OLD.item_id')} END",
    "CREATE TRIGGER item_sources_changed AFTER UPDATE ON item_sources BEGIN "
    f"{_source_counted('OLD.source_id', -1)} {_source_counted('NEW.source_id', 1)} "
    f"{_conflict_rechecked('OLD.item_id')} {_conflict_rechecked('NEW.item_id')} END",
]


def _v4_status_counts(conn: sqlite3.Connection) -> None:
    """Items per class, references per source and the items whose references disagree on the label
    are kept by triggers in the transaction of every write, so ``status`` reads a few rows instead of
    scanning ``items`` and ``item_sources`` (whose time grew faster than the rows: 1M references took
    13x as long as 100k)."""
    for statement in _V4_STATUS_COUNTS:
        conn.execute(statement)


def _v5_negative_of_column(conn: sqlite3.Connection) -> None:
    """Nothing to rewrite: new evidence shards carry ``negative_of`` as a column, and older shards
    are read as they are (``curate.workspace.evidence``). The version says that this curate writes
    shards an older one cannot read, so an older one refuses the workspace with a clear error."""


# One SQL script (or function) per version. Scripts run statement by statement inside the caller's
# transaction (sqlite3's executescript would commit half-way); functions run inside it too.
Migration = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Migration, ...] = (_V1_CATALOGUE, _V2_CUES, _v3_evidence_to_parquet, _v4_status_counts,
                                     _v5_negative_of_column)
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
                with progress_bar(f"upgrading the workspace catalogue to schema v{version + 1} (once)", None,
                                  enabled=start > 0):  # an upgrade, not a new catalogue
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
