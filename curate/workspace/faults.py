"""Faults of the disk and of damaged files, as errors that say in one line what happened, to which
file, and what to do. SQLite's own errors are translated by the workspace's connections, so a full
disk or a damaged catalogue is the same clear error wherever it strikes.

>>> print(DamagedFileError(Path("/ws/tables/t.parquet"), "3 bytes", "delete it"))
/ws/tables/t.parquet is damaged (3 bytes): delete it
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26


class WorkspaceFault(Exception):
    """A fault of the storage under a workspace; ``path`` is the file concerned."""

    def __init__(self, path: Path | None, message: str) -> None:
        super().__init__(message)
        self.path = path


class DiskFullError(WorkspaceFault):
    """No space was left to write ``path`` (None when the file is not known)."""

    def __init__(self, path: Path | None) -> None:
        where = f" holding {path}" if path else ""
        super().__init__(path, f"no space left on the device{where}: free some space and run the "
                               "command again (finished work is kept and runs resume)")


class DamagedFileError(WorkspaceFault):
    """``path`` exists but cannot be read as what it should be."""

    def __init__(self, path: Path, problem: str, remedy: str) -> None:
        super().__init__(path, f"{path} is damaged ({problem}): {remedy}")


def catalogue_remedy(database: Path) -> str:
    """What to do about a damaged catalogue."""
    return (f"restore it from a backup, or salvage what it holds with `sqlite3 {database} .recover "
            f"| sqlite3 recovered.sqlite` and put recovered.sqlite in its place")


def is_disk_full(error: OSError) -> bool:
    """True for ``ENOSPC`` and ``EDQUOT``."""
    return error.errno in _DISK_FULL_ERRNOS


def sqlite_fault(error: sqlite3.Error, database: Path) -> WorkspaceFault | None:
    """The clear error for a full disk or a damaged catalogue, or None for any other SQLite error."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_FULL:
        return DiskFullError(database)
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return DamagedFileError(database, str(error), catalogue_remedy(database))
    return None


class FaultAwareCursor(sqlite3.Cursor):
    """A cursor whose full-disk and damaged-file errors name the database (see ``sqlite_fault``)."""

    connection: FaultAwareConnection

    def _fault(self, error: sqlite3.Error) -> None:
        fault = sqlite_fault(error, self.connection.path)
        if fault is not None:
            raise fault from error

    def execute(self, sql: str, parameters: object = (), /) -> FaultAwareCursor:
        try:
            # ignored below (arg-type): sqlite3 takes any parameters object; typeshed narrows it
            return super().execute(sql, parameters)  # type: ignore[arg-type]
        except sqlite3.Error as error:
            self._fault(error)
            raise

    def executemany(self, sql: str, parameters: object, /) -> FaultAwareCursor:
        try:
            # ignored below (arg-type): sqlite3 takes any parameters object; typeshed narrows it
            return super().executemany(sql, parameters)  # type: ignore[arg-type]
        except sqlite3.Error as error:
            self._fault(error)
            raise

    def fetchone(self) -> object:
        try:
            return super().fetchone()
        except sqlite3.Error as error:
            self._fault(error)
            raise

    def fetchmany(self, size: int | None = 1) -> list[object]:
        try:
            return super().fetchmany(size)
        except sqlite3.Error as error:
            self._fault(error)
            raise

    def fetchall(self) -> list[object]:
        try:
            return super().fetchall()
        except sqlite3.Error as error:
            self._fault(error)
            raise

    def __next__(self) -> object:
        try:
            return super().__next__()
        except sqlite3.Error as error:
            self._fault(error)
            raise


class FaultAwareConnection(sqlite3.Connection):
    """A connection (``sqlite3.connect(..., factory=FaultAwareConnection)``) whose cursors are
    ``FaultAwareCursor``s; ``path`` is the database file."""

    path: Path

    # ignored below (override): typeshed's cursor() has no default factory
    def cursor(self, factory: type[sqlite3.Cursor] = FaultAwareCursor) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, sql: str, parameters: object = (), /) -> sqlite3.Cursor:
        # ignored below (arg-type): sqlite3 takes any parameters object; typeshed narrows it
        return self.cursor().execute(sql, parameters)  # type: ignore[arg-type]

    def executemany(self, sql: str, parameters: object, /) -> sqlite3.Cursor:
        # ignored below (arg-type): sqlite3 takes any parameters object; typeshed narrows it
        return self.cursor().executemany(sql, parameters)  # type: ignore[arg-type]
