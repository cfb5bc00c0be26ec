"""Small helpers shared by the workspace's SQL modules: time stamps, JSON and hashing."""

from __future__ import annotations

import fcntl
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from curate.caching import digest as digest  # canonical JSON and its hash live beside the cache key
from curate.caching import dumps as dumps
from curate.workspace.faults import DiskFullError, is_disk_full


def now() -> str:
    """The current UTC time as an ISO 8601 string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


TEMPORARY_SUFFIX = ".tmp"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file.

    The temporary file is locked (``flock``) while it is written, so ``remove_orphaned_temporaries``
    can tell a file a killed process left from one being written now. A full disk raises
    ``DiskFullError`` naming ``path`` and leaves nothing behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = locked_temporary(path)
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(path) from error
        raise
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and is_disk_full(error):
            raise DiskFullError(path) from error
        raise


def locked_temporary(path: Path) -> tuple[BinaryIO, Path]:
    """A new temporary file beside ``path``, open and locked by this process (so
    ``remove_orphaned_temporaries`` leaves it alone while the handle is open)."""
    while True:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
        handle = os.fdopen(fd, "wb")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # a cleaner may have taken it for a leftover between mkstemp and flock: then start again
            if os.stat(name).st_ino == os.fstat(fd).st_ino:
                return handle, Path(name)
        except FileNotFoundError:
            pass
        handle.close()


def remove_orphaned_temporaries(folder: Path) -> int:
    """Delete the temporary files of ``atomic_write_bytes`` under ``folder`` that no live process
    holds (a killed writer's leftovers); return how many."""
    removed = 0
    leftovers = (Path(directory) / name for directory, _, names in os.walk(folder) for name in names
                 if name.startswith(".") and name.endswith(TEMPORARY_SUFFIX))
    for tmp in leftovers:
        try:
            with tmp.open("rb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink()  # while locked, so a writer that just made it sees it gone
                removed += 1
        except (BlockingIOError, FileNotFoundError):
            continue  # being written, or already gone
    return removed
