"""The workspace: the store every stage reads and writes. Nothing else touches SQLite.

Layout of a workspace folder::

    curate.sqlite   catalogue (WAL): sources, items, quarantine, runs, evidence, verdicts, cache
    blobs/          image bytes that had no stable file (datasets, URLs, ``copy=True``), by sha256
    tables/         parquet side tables (exports, embeddings)
    cache/          large cached values, by key digest

>>> import tempfile
>>> ws = Workspace.init(tempfile.mkdtemp())
>>> ws.schema_version == SCHEMA_VERSION
True
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from curate.workspace._sql import atomic_write_bytes
from curate.workspace.cache import Cache, CacheKey, CacheStats
from curate.workspace.catalog import Catalog, Source, SourceStatus, WorkspaceStatus
from curate.workspace.export import EXPORT_SCHEMAS, write_rows
from curate.workspace.runs import RunLog, RunNotFoundError, code_version
from curate.workspace.schema import SCHEMA_VERSION, SchemaTooNewError, migrate
from curate.workspace.tables import SideTables

__all__ = [
    "SCHEMA_VERSION", "Cache", "CacheKey", "CacheStats", "Catalog", "RunLog", "RunNotFoundError",
    "SchemaTooNewError", "SideTables", "Source", "SourceStatus", "Workspace", "WorkspaceNotFoundError",
    "WorkspaceStatus", "code_version",
]

DATABASE_NAME = "curate.sqlite"
BUSY_TIMEOUT_MS = 120_000


class WorkspaceNotFoundError(FileNotFoundError):
    """The folder holds no curate workspace."""


class Workspace:
    """A workspace folder: catalogue, runs, cache, side tables and blobs.

    Connections are per thread; writes go through ``transaction()`` (``BEGIN IMMEDIATE``), so two
    processes writing the same workspace queue up instead of corrupting it, and a crash mid-write
    rolls the unfinished transaction back.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.database = self.root / DATABASE_NAME
        self._local = threading.local()
        self.runs = RunLog(self.connect, self.transaction)
        self.catalog = Catalog(self.connect, self.transaction, self.runs)
        self.cache = Cache(self.root / "cache", self.connect, self.transaction)
        self.tables = SideTables(self.root / "tables")

    @classmethod
    def init(cls, path: str | Path) -> Workspace:
        """Create a workspace (or open the one already there) and bring its schema up to date."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        for folder in ("blobs", "tables", "cache"):
            (root / folder).mkdir(exist_ok=True)
        workspace = cls(root)
        conn = workspace.connect()
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
        return workspace

    @classmethod
    def open(cls, path: str | Path) -> Workspace:
        """Open an existing workspace; migrate it if it was written by an older curate."""
        root = Path(path)
        if not (root / DATABASE_NAME).is_file():
            raise WorkspaceNotFoundError(f"no curate workspace in {root} (create one with `curate init {root}`)")
        workspace = cls(root)
        migrate(workspace.connect())
        return workspace

    @property
    def workspace_id(self) -> str:
        """A random id given to the workspace once and kept in its catalogue: what names it on servers
        (Label Studio projects), since two workspaces may live in folders of the same name."""
        found = self.connect().execute("SELECT value FROM meta WHERE key = 'workspace_id'").fetchone()
        if found is None:
            with self.transaction() as conn:
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('workspace_id', ?)", (uuid.uuid4().hex,))
            found = self.connect().execute("SELECT value FROM meta WHERE key = 'workspace_id'").fetchone()
        return str(found[0])

    @property
    def schema_version(self) -> int:
        """The catalogue's schema version."""
        return self.connect().execute("PRAGMA user_version").fetchone()[0]

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use ``transaction()`` to write)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.database, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed whole on success, rolled back on any error."""
        conn = self.connect()
        if conn.in_transaction:  # nested: join the outer transaction
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # annotators in public -----------------------------------------------------------------
    def pseudonym(self, annotator: str) -> str:
        """The stable public name of an annotator: ``annotator-`` and 8 hex digits of a hash salted
        with this workspace's secret salt (made at first use), so e-mails never leave the workspace.

        >>> import tempfile
        >>> ws = Workspace.init(tempfile.mkdtemp())
        >>> name = ws.pseudonym("ann@example.org")
        >>> name.startswith("annotator-") and len(name) == 18 and name == ws.pseudonym("ann@example.org")
        True
        """
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('annotator_salt', ?)",
                         (secrets.token_hex(16),))
            salt = conn.execute("SELECT value FROM meta WHERE key = 'annotator_salt'").fetchone()[0]
        return "annotator-" + hashlib.sha256(f"{salt}:{annotator}".encode()).hexdigest()[:8]

    # blobs --------------------------------------------------------------------------------
    def put_blob(self, item_id: str, data: bytes, suffix: str = "") -> str:
        """Store image bytes by content hash (once); return the ``blob:`` uri."""
        relative = f"{item_id[:2]}/{item_id}{suffix.lower()}"
        target = self.root / "blobs" / relative
        if not target.exists():
            atomic_write_bytes(target, data)
        return f"blob:{relative}"

    def resolve_uri(self, uri: str) -> Path:
        """The file that holds an item's bytes.

        >>> import tempfile
        >>> ws = Workspace.init(tempfile.mkdtemp())
        >>> ws.resolve_uri("blob:ab/abcd.png") == ws.root / "blobs" / "ab" / "abcd.png"
        True
        """
        if uri.startswith("blob:"):
            return self.root / "blobs" / uri.removeprefix("blob:")
        return Path(uri)

    # status and exports -------------------------------------------------------------------
    def status(self) -> WorkspaceStatus:
        """Counts per class, per source, quarantined, and runs per stage."""
        return self.catalog.status(sum(self.cache.stats().entries.values()), self.tables.names())

    def export(self, table: str, path: str | Path, **filters: str | None) -> int:
        """Stream a catalogue table (``items``, ``evidence`` or ``cues``) to parquet or CSV.

        ``filters`` narrow evidence and cues by column (``source``, ``run_id``, ``class_label`` ...).
        Returns the number of rows written.
        """
        if table not in EXPORT_SCHEMAS:
            raise ValueError(f"cannot export {table!r}; tables: {', '.join(EXPORT_SCHEMAS)}")
        return write_rows(Path(path), EXPORT_SCHEMAS[table], self.catalog.export_rows(table, **filters))
