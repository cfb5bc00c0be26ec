"""What a source is, the registry of source kinds, and helpers shared by file-based sources.

A source yields ``Entry`` objects: a stable locator, a cheap fingerprint that changes when the
entry may have changed, a way to read the bytes, and the label and metadata it carries. Adding a
kind of source is one new module with one ``@register_source`` class.
"""

from __future__ import annotations

import functools
import itertools
import os
import sqlite3
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import polars as pl

from curate.images import ImageRejected
from curate.options import check_options
from curate.registry import Registry

JsonDict = dict[str, Any]


class SourceError(ValueError):
    """A source cannot be read at all (missing folder, missing column, dataset not found)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing a source offers to become an item.

    ``read`` returns the bytes or raises ``OSError`` / ``ImageRejected``. ``local_path`` is set
    when the bytes sit in a stable local file the item can point at; otherwise they are copied
    into the workspace's blob store. ``rejection`` is set when the source already knows the entry
    is bad (a manifest path escaping its root); such entries are quarantined without reading.
    """

    locator: str
    fingerprint: str
    read: Callable[[], bytes]
    label: str | None = None
    split: str | None = None
    license: str | None = None
    metadata: JsonDict = field(default_factory=dict)
    local_path: Path | None = None
    rejection: ImageRejected | None = None


class IngestSource(ABC):
    """A kind of source. Subclasses are dataclasses whose fields are the source's options."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def location(self) -> str:
        """Canonical location (absolute path, hub id): with ``kind`` it identifies the source."""

    @abstractmethod
    def entries(self) -> Iterator[Entry]:
        """Yield every entry, in a deterministic order, without holding them all in memory."""

    def estimate(self) -> int | None:
        """How many entries ``entries`` will yield, when cheap to know (for progress bars)."""
        return None

    def options(self) -> JsonDict:
        """The options this source was made with, JSON-ready (recorded with the source and run)."""
        # ignored below (arg-type): every registered source is a dataclass
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return {k: _jsonable(v) for k, v in values.items()}


class TableSource(IngestSource):
    """A source read from one table file: ``path``, loaded whole into ``_frame`` (rows are small)."""

    path: Path
    _frame: pl.DataFrame

    @property
    def location(self) -> str:
        return str(self.path)

    def estimate(self) -> int:
        return self._frame.height


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list, frozenset, set)):
        items = [_jsonable(v) for v in value]
        return sorted(items) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


SOURCES: Registry[type[IngestSource]] = Registry("source kind", SourceError, attribute="kind")
register_source = SOURCES.register


def make_source(kind: str, *args: Any, **options: Any) -> IngestSource:
    """Build a registered source by kind.

    >>> make_source("nope", "/tmp")
    Traceback (most recent call last):
    ...
    curate.ingest.base.SourceError: unknown source kind 'nope'; known: folder, groups, hf, manifest, webdataset
    """
    plugin = SOURCES[kind]
    return plugin(*args, **check_options(plugin, options, f"source kind {kind!r}", error=SourceError))


# helpers for sources that point at local files ------------------------------------------------
def file_fingerprint(path: Path) -> str:
    """``size:mtime_ns`` of a file (following links), or ``missing``."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file (links followed); anything else (a FIFO, a
    device, a socket, a folder) is rejected without ever being opened for a blocking read.

    >>> read_regular_file(Path("/dev/null"))
    Traceback (most recent call last):
    ...
    curate.images.ImageRejected: not-a-file: /dev/null is a character device, not a regular file
    """
    _require_regular(path, os.stat(path).st_mode)
    # O_NONBLOCK: should the path be swapped for a FIFO after the check, open() still returns at once
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _require_regular(path, os.fstat(fd).st_mode)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
        raise ImageRejected("not-a-file", f"{path} is {kind}, not a regular file")


def file_entry(path: Path, locator: str, **fields_: Any) -> Entry:
    """An entry whose bytes are the local file ``path`` (read only if it is a regular file)."""
    return Entry(locator=locator, fingerprint=file_fingerprint(path), read=lambda: read_regular_file(path),
                 local_path=path, **fields_)


def map_path(value: str, path_map: tuple[str, ...]) -> str:
    """Rewrite a path written on another machine: each ``OLD_PREFIX=NEW_PREFIX`` in ``path_map`` is
    tried in order and the first prefix that matches is replaced. The result is checked like any
    other path (so it may not leave the root).

    >>> map_path("/restricted/projectnb/metashift/train/cat/1.jpg", ("/restricted/projectnb/metashift/=images/",))
    'images/train/cat/1.jpg'
    """
    rules = [rule.partition("=") for rule in path_map]
    for rule, (old, sep, _) in zip(path_map, rules, strict=True):
        if not sep or not old:
            raise SourceError(f"a path map is OLD_PREFIX=NEW_PREFIX, got {rule!r}")
    for old, _, new in rules:
        if value.startswith(old):
            return new + value[len(old):]
    return value


def resolve_under_root(root: Path, value: str, allow_absolute: bool = False) -> Path:
    """Resolve a path written in a table against ``root``, refusing escapes.

    ``..`` components are always refused; absolute paths, and paths whose symlinks lead outside
    ``root``, only when ``allow_absolute`` is false.

    >>> resolve_under_root(Path("/data"), "../etc/passwd")
    Traceback (most recent call last):
    ...
    curate.images.ImageRejected: path-escape: '../etc/passwd' contains '..'
    """
    normalised = value.replace("\\", "/")
    pure = PurePosixPath(normalised)
    if ".." in pure.parts:
        raise ImageRejected("path-escape", f"{value!r} contains '..'")
    if pure.is_absolute():
        if not allow_absolute:
            raise ImageRejected("path-escape", f"{value!r} is absolute (allow with allow_absolute)")
        return Path(normalised)
    path = root / pure
    if not allow_absolute and not _real_path(path).is_relative_to(_real_directory(str(root))):
        raise ImageRejected("path-escape", f"{value!r} leads outside {root} through a link")
    return path


def _real_path(path: Path) -> Path:
    """``os.path.realpath`` of a file path, with its folder's resolution remembered: a table of a
    million rows in a few folders costs one ``lstat`` a row, not one per path component."""
    if os.path.islink(path):
        return Path(os.path.realpath(path))
    return _real_directory(str(path.parent)) / path.name


@functools.lru_cache(maxsize=4096)
def _real_directory(folder: str) -> Path:
    return Path(os.path.realpath(folder))


def require_columns(frame: pl.DataFrame, where: Path, **columns: str | None) -> None:
    """Fail clearly when a column an option names is not in the table."""
    missing = {option: name for option, name in columns.items() if name is not None and name not in frame.columns}
    if missing:
        wanted = ", ".join(f"{option}={name!r}" for option, name in missing.items())
        raise SourceError(f"{where} has no column for {wanted}; its columns: {', '.join(frame.columns)}")


LOCATOR_BATCH = 500
"""Table rows whose repeats are counted together (one query; under SQLite's oldest limit of 999 values)."""


def row_locators(values: Iterable[Any]) -> Iterator[str]:
    """A stable key per table row: the path itself, ``#2``, ``#3`` ... appended to repeats, and
    ``<row N: no path>`` for empty cells.

    The times each path was seen are kept in a private temporary SQLite database on disk (its cache
    is bounded), ``LOCATOR_BATCH`` values at a time, so a table of a million distinct paths is
    numbered in constant memory.

    >>> list(row_locators(["a.png", "b.png", "a.png", None]))
    ['a.png', 'b.png', 'a.png#2', '<row 3: no path>']
    """
    stream, index = iter(values), 0
    seen_before = sqlite3.connect("", check_same_thread=False)  # "": on disk, deleted when closed
    try:
        seen_before.execute("CREATE TABLE seen (path TEXT PRIMARY KEY, times INTEGER NOT NULL) WITHOUT ROWID")
        while batch := ["" if raw is None else str(raw).strip() for raw in itertools.islice(stream, LOCATOR_BATCH)]:
            paths = list(dict.fromkeys(value for value in batch if value))
            seen = dict(seen_before.execute(
                f"SELECT path, times FROM seen WHERE path IN ({', '.join('?' * len(paths))})", paths))  # noqa: S608
            for value in batch:
                if value:
                    seen[value] = seen.get(value, 0) + 1
                    yield value if seen[value] == 1 else f"{value}#{seen[value]}"
                else:
                    yield f"<row {index}: no path>"
                index += 1
            seen_before.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)", ((p, seen[p]) for p in paths))
    finally:
        seen_before.close()
