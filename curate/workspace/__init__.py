"""The workspace: the store every stage reads and writes. Nothing else touches SQLite.

Layout of a workspace folder::

    curate.sqlite   catalogue (WAL): sources, items, quarantine, runs, cues, verdicts, cache, evidence shards
    evidence/       machine evidence, zstd parquet: run=<run id>/<shard>.parquet, registered in the catalogue
    blobs/          image bytes that had no stable file (datasets, URLs, ``copy=True``), by sha256
    tables/         parquet side tables (exports, embeddings)
    cache/          large cached values, by key digest
    runs/           one lock file per run, held (flock) by the process running it

>>> import tempfile
>>> ws = Workspace.init(tempfile.mkdtemp())
>>> ws.schema_version == SCHEMA_VERSION
True
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from curate.records import Item
from curate.workspace._sql import atomic_write_bytes, remove_orphaned_temporaries
from curate.workspace.cache import Cache, CacheKey, CacheStats
from curate.workspace.catalog import Catalog, Source, SourceStatus, WorkspaceStatus
from curate.workspace.evidence import EvidenceStore
from curate.workspace.export import EXPORT_SCHEMAS, write_batches, write_frame, write_rows
from curate.workspace.faults import (
    DamagedFileError,
    DiskFullError,
    FaultAwareConnection,
    WorkspaceFault,
    catalogue_remedy,
    is_disk_full,
    sqlite_fault,
)
from curate.workspace.runs import RunLog, RunNotFoundError, code_version
from curate.workspace.schema import SCHEMA_VERSION, SchemaTooNewError, migrate
from curate.workspace.tables import SideTables

__all__ = [
    "SCHEMA_VERSION", "Cache", "CacheKey", "CacheStats", "Catalog", "DamagedFileError", "DiskFullError",
    "EvidenceStore",
    "RunLog", "RunNotFoundError", "SchemaTooNewError", "SideTables", "Source", "SourceStatus", "Workspace",
    "WorkspaceFault", "WorkspaceNotFoundError", "WorkspaceStatus", "code_version",
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
        self.runs = RunLog(self.connect, self.transaction, self.root / "runs")
        self.evidence = EvidenceStore(self.root, self.connect, self.transaction, self.runs.add_counts)
        self.catalog = Catalog(self.connect, self.transaction, self.runs, self.evidence)
        self.cache = Cache(self.root / "cache", self.connect, self.transaction)
        self.tables = SideTables(self.root / "tables")

    @classmethod
    def init(cls, path: str | Path) -> Workspace:
        """Create a workspace (or open the one already there) and bring its schema up to date.

        The catalogue is built under a temporary name and linked into place only when whole, so an
        ``init`` that fails (a full disk) leaves no catalogue behind that would open as empty.
        """
        root = Path(path)
        try:
            root.mkdir(parents=True, exist_ok=True)
            for folder in ("blobs", "tables", "cache", "runs"):
                (root / folder).mkdir(exist_ok=True)
        except OSError as error:
            if is_disk_full(error):
                raise DiskFullError(root) from error
            raise
        if not (root / DATABASE_NAME).exists():
            _create_catalogue(root / DATABASE_NAME)
        return cls.open(root)

    @classmethod
    def open(cls, path: str | Path) -> Workspace:
        """Open an existing workspace; migrate it if it was written by an older curate.

        Opening never creates a catalogue: an empty or damaged ``curate.sqlite`` is a
        ``DamagedFileError`` that names the file and says how to recover.
        """
        root = Path(path)
        if not (root / DATABASE_NAME).is_file():
            raise WorkspaceNotFoundError(f"no curate workspace in {root} (create one with `curate init {root}`)")
        workspace = cls(root)
        if workspace.schema_version == 0:
            raise DamagedFileError(workspace.database, "it holds no curate catalogue (empty or not initialised)",
                                   catalogue_remedy(workspace.database))
        migrate(workspace.connect())
        workspace.evidence.sweep()
        return workspace

    @property
    def workspace_id(self) -> str:
        """A random id given to the workspace once and kept in its catalogue: what names it on servers
        (Label Studio projects), since two workspaces may live in folders of the same name."""
        return self._meta_once("workspace_id", lambda: uuid.uuid4().hex)

    @property
    def schema_version(self) -> int:
        """The catalogue's schema version."""
        return self.connect().execute("PRAGMA user_version").fetchone()[0]

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use ``transaction()`` to write)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.database, "rw")
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
            if conn.in_transaction:  # SQLite itself rolls back on some errors (a full disk)
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
        salt = self._meta_once("annotator_salt", lambda: secrets.token_hex(16))
        return "annotator-" + hashlib.sha256(f"{salt}:{annotator}".encode()).hexdigest()[:8]

    def _meta_once(self, key: str, make: Callable[[], str]) -> str:
        """The catalogue's value of ``key``, made by ``make`` and stored the first time it is asked for."""
        found = self.connect().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if found is None:
            with self.transaction() as conn:
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, make()))
                found = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(found[0])

    # blobs --------------------------------------------------------------------------------
    def put_blob(self, item_id: str, data: bytes, suffix: str = "") -> str:
        """Store image bytes by content hash (once); return the ``blob:`` uri."""
        relative = f"{item_id[:2]}/{item_id}{suffix.lower()}"
        target = self.root / "blobs" / relative
        if not target.exists():
            atomic_write_bytes(target, data)
        return f"blob:{relative}"

    def discard_unstored_blobs(self, items: Iterable[Item]) -> None:
        """Delete the blobs of ``items`` that no stored item points at (a batch that failed to commit,
        on a full disk, leaves no orphan blobs)."""
        conn = self.connect()
        for item in items:
            if item.uri.startswith("blob:"):
                try:
                    row = conn.execute("SELECT uri FROM items WHERE item_id = ?", (item.item_id,)).fetchone()
                except WorkspaceFault:
                    return  # the catalogue cannot tell which blobs are stored: keep them (re-ingest reuses them)
                if row is None or row["uri"] != item.uri:
                    self.resolve_uri(item.uri).unlink(missing_ok=True)

    def remove_orphaned_blobs(self) -> int:
        """Delete the temporary blob files a killed process left behind; return how many."""
        return remove_orphaned_temporaries(self.root / "blobs")

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
        if table == "evidence":
            return write_frame(Path(path), EXPORT_SCHEMAS[table], self.catalog.evidence_scan(**filters))
        if table == "items":
            return write_batches(Path(path), EXPORT_SCHEMAS[table], self.catalog.item_export(filters))
        # ignored below (arg-type): filters name columns, never batch_size
        return write_rows(Path(path), EXPORT_SCHEMAS[table], self.catalog.export_rows(table, **filters))  # type: ignore[arg-type]


def _connect(database: Path, mode: str) -> sqlite3.Connection:
    """A connection to ``database`` (``mode`` ``rw`` never creates the file, ``rwc`` does) whose full-disk
    and damaged-file errors are ``WorkspaceFault``s naming it."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(database))}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, factory=FaultAwareConnection)
    except sqlite3.Error as error:
        raise (sqlite_fault(error, database) or error) from error
    conn.path = database
    return conn


def _create_catalogue(database: Path) -> None:
    """Build a new catalogue at a temporary name and link it in place once whole (never replacing one)."""
    building = database.with_name(f".{database.name}.{os.getpid()}-{secrets.token_hex(3)}.init")
    try:
        conn = _connect(building, "rwc")
        conn.path = database  # type: ignore[attr-defined]  # errors name the catalogue being made
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            migrate(conn)
        finally:
            conn.close()  # checkpoints the WAL into the file and removes it
        if Path(f"{building}-wal").exists():
            raise DiskFullError(database)  # the checkpoint could not finish
        _link_new(building, database)
    except FileExistsError:
        pass  # another process created it meanwhile: open theirs
    except sqlite3.Error as error:
        raise (sqlite_fault(error, database) or error) from error
    finally:
        for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
            leftover.unlink(missing_ok=True)


def _link_new(source: Path, target: Path) -> None:
    """Make ``source`` appear as ``target`` unless ``target`` exists (``FileExistsError``)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if target.exists():
            raise FileExistsError(target) from None
        os.rename(source, target)
