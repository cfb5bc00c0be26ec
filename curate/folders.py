"""Folders replaced whole: a new version is written beside the old one and switched in atomically.

``replaced(target)`` yields a fresh staging folder ``.<name>.new-<pid>`` next to ``target``; when the
block ends without an error the staging folder takes ``target``'s place (an atomic exchange where
the platform has ``renameat2``, else two renames) and the old version is deleted. A crash at any
point leaves ``target`` as it was (the old version, whole); the leftovers of a killed process are
removed by the next ``replaced`` of the same target.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> with replaced(root / "release") as folder:
...     _ = (folder / "a.txt").write_text("one")
>>> with replaced(root / "release") as folder:
...     _ = (folder / "b.txt").write_text("two")
>>> sorted(p.name for p in root.rglob("*"))
['b.txt', 'release']
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _leftover(target: Path, path: Path) -> tuple[str, int] | None:
    """('new' | 'old', pid) when ``path`` is a staging or retired folder of ``target``."""
    found = re.fullmatch(rf"\.{re.escape(target.name)}\.(new|old)-(\d+)", path.name)
    return (found.group(1), int(found.group(2))) if found else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier, failed attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(target: Path) -> None:
    """Remove what killed processes left beside ``target``; an old version whose switch was cut
    short (``target`` missing) is put back first."""
    if not target.parent.is_dir():
        return
    for path in sorted(target.parent.iterdir()):
        found = _leftover(target, path)
        if found is None or _alive(found[1]):
            continue
        if found[0] == "old" and not target.exists():
            path.rename(target)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return done == 0


def switch(new: Path, target: Path) -> None:
    """Put the folder ``new`` in ``target``'s place; the old version is deleted afterwards."""
    if not target.exists():
        new.rename(target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # ``new`` now holds the old version
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old)


@contextmanager
def replaced(target: Path) -> Iterator[Path]:
    """A fresh folder to write the new version of ``target`` into; it replaces ``target`` when the
    block ends without an error, and is deleted when it raises."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    staging = target.with_name(f".{target.name}.new-{os.getpid()}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        with suppress(OSError):
            shutil.rmtree(staging)
        raise
    switch(staging, target)
