"""Small helpers shared by the workspace's SQL modules: time stamps, JSON and hashing."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curate.workspace.faults import DiskFullError, is_disk_full


def now() -> str:
    """The current UTC time as an ISO 8601 string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def dumps(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, so equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    """sha256 hex of the canonical JSON of ``value``."""
    return hashlib.sha256(dumps(value).encode()).hexdigest()


TEMPORARY_SUFFIX = ".tmp"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file.

    The temporary file is locked (``flock``) while it is written, so ``remove_orphaned_temporaries``
    can tell a file a killed process left from one being written now. A full disk raises
    ``DiskFullError`` naming ``path`` and leaves nothing behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(path) from error
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and is_disk_full(error):
            raise DiskFullError(path) from error
        raise


def remove_orphaned_temporaries(folder: Path, min_age_s: float = 60.0) -> int:
    """Delete the temporary files of ``atomic_write_bytes`` under ``folder`` that no live process
    holds (a killed writer's leftovers); return how many. Files younger than ``min_age_s`` are kept,
    since their writer may not have locked them yet."""
    removed = 0
    cutoff = time.time() - min_age_s
    for tmp in folder.rglob(f".*{TEMPORARY_SUFFIX}"):
        try:
            with tmp.open("rb") as handle:
                if os.fstat(handle.fileno()).st_mtime > cutoff:
                    continue
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink()
                removed += 1
        except (BlockingIOError, FileNotFoundError):
            continue  # being written, or already gone
    return removed
