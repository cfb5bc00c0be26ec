"""WebDataset tar shards as img2dataset writes them: ``key.jpg`` beside ``key.json`` / ``key.txt`` / ``key.cls``.

Shards are read member by member and never whole: in a plain ``.tar`` only the tar headers and the
small ``.json`` / ``.txt`` / ``.cls`` members are read while listing, and an image's bytes are read
from its offset when the runner needs them, so a shard ingested before costs a header scan and no
image read on a re-run. Compressed shards (``.tar.gz`` ...) are streamed once, image bytes with
their sample. Each sample's fingerprint is its shard's size and mtime with its offset, so the
runner's per-entry fingerprints make a killed run resume inside a shard without duplicates.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from curate.images import IMAGE_EXTENSIONS, ImageRejected
from curate.ingest.base import Entry, IngestSource, SourceError, file_fingerprint, register_source

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Expand a brace pattern as img2dataset and webdataset write them: numeric ranges keep their
    zero padding, commas list alternatives.

    >>> expand_braces("shards/{00000..00002}.tar")
    ['shards/00000.tar', 'shards/00001.tar', 'shards/00002.tar']
    >>> expand_braces("{a,b}/{0..1}.tar")
    ['a/0.tar', 'a/1.tar', 'b/0.tar', 'b/1.tar']
    """
    match = _BRACE.search(pattern)
    if match is None:
        if "{" in pattern or "}" in pattern:
            raise SourceError(f"unbalanced braces in shard pattern {pattern!r}")
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    numeric = _RANGE.match(body)
    if numeric:
        first, last = numeric.groups()
        if int(last) < int(first):
            raise SourceError(f"shard range {{{body}}} runs backwards")
        width = len(first) if first.startswith("0") else 0
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        choices = body.split(",")
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


@dataclass(frozen=True, slots=True)
class _Member:
    """Where one tar member's bytes are, and (for a compressed shard) the bytes themselves."""

    name: str
    offset: int
    size: int
    data: bytes | None = None


@dataclass(slots=True)
class _Sample:
    key: str
    image: _Member | None = None
    texts: dict[str, bytes] = field(default_factory=dict)  # json / txt / cls contents
    other: list[str] = field(default_factory=list)


@register_source("webdataset")
@dataclass(frozen=True)
class WebDatasetSource(IngestSource):
    """Samples of WebDataset tar shards: a shard file, a folder of shards, or a brace pattern
    (``shards/{00000..00099}.tar``).

    The label is the ``.cls`` member (an index into ``class_names`` when given), or the field
    ``label_field`` of the ``.json`` member when set. The ``.json`` member's fields become metadata
    and the ``.txt`` member becomes ``caption``. A sample without an image, with a ``.json`` that is
    not a JSON object or a ``.cls`` that names no class is quarantined; so is whatever a truncated
    or unreadable shard no longer holds. Image bytes are copied into the workspace.

    >>> WebDatasetSource("/no/shards/{0..3}.tar")
    Traceback (most recent call last):
    ...
    curate.ingest.base.SourceError: 4 of 4 shards of /no/shards/{0..3}.tar are missing: /no/shards/0.tar, ...
    """

    path: str
    label_field: str | None = None
    class_names: tuple[str, ...] | None = None
    image_extensions: frozenset[str] = IMAGE_EXTENSIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(Path(str(self.path)).expanduser().absolute()))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "image_extensions",
                           frozenset(e.lower().lstrip(".") for e in self.image_extensions))
        self.shards()  # refuse a pattern with missing shards before anything is read

    @property
    def location(self) -> str:
        return self.path

    def _base(self) -> Path:
        """The folder shard locators are written relative to: the pattern's part before any brace."""
        if Path(self.path).is_dir():
            return Path(self.path)
        prefix = self.path.split("{", 1)[0]
        return Path(prefix) if prefix.endswith("/") else Path(prefix).parent

    def shards(self) -> list[Path]:
        """The shard files, in order; a folder gives its ``.tar`` (and compressed tar) files."""
        path = Path(self.path)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.name.endswith(SHARD_SUFFIXES) and p.is_file())
            if not found:
                raise SourceError(f"no tar shards in {path}")
            return found
        shards = [Path(p) for p in expand_braces(self.path)]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            listed = ", ".join(missing[:1]) + (", ..." if len(missing) > 1 else "")
            raise SourceError(f"{len(missing)} of {len(shards)} shards of {self.path} are missing: {listed}")
        return shards

    def entries(self) -> Iterator[Entry]:
        base = self._base()
        for shard in self.shards():
            yield from self._shard_entries(shard, shard.relative_to(base).as_posix())

    # one shard ---------------------------------------------------------------------------------------
    def _shard_entries(self, shard: Path, shard_locator: str) -> Iterator[Entry]:
        shard_fingerprint = file_fingerprint(shard)
        seekable = shard.name.endswith(".tar")
        sample: _Sample | None = None
        members = 0
        try:
            with tarfile.open(shard, "r:" if seekable else "r|*") as tar:
                for member, handle in _members(tar):
                    members += 1
                    key, _, extension = _split_name(member.name)
                    if sample is not None and key != sample.key:
                        yield self._entry(shard, shard_locator, shard_fingerprint, sample)
                        sample = None
                    sample = sample or _Sample(key)
                    self._add(sample, member, extension.lower(), handle, seekable)
        except (tarfile.TarError, OSError, EOFError) as error:
            if sample is not None:
                yield self._entry(shard, shard_locator, shard_fingerprint, sample)
                sample = None
            yield Entry(locator=f"{shard_locator}/<after member {members}>", fingerprint=shard_fingerprint,
                        read=bytes, rejection=ImageRejected(
                            "unreadable", f"shard {shard} cannot be read past member {members} "
                                          f"({type(error).__name__}: {error}); what follows is lost"))
        if sample is not None:
            yield self._entry(shard, shard_locator, shard_fingerprint, sample)

    def _add(self, sample: _Sample, member: tarfile.TarInfo, extension: str, handle: Callable[[], IO[bytes]],
             seekable: bool) -> None:
        if extension in ("json", "txt", "cls"):
            sample.texts[extension] = handle().read()
        elif extension in self.image_extensions and sample.image is None:
            data = None if seekable else handle().read()
            sample.image = _Member(member.name, member.offset_data, member.size, data)
        else:
            sample.other.append(member.name)

    def _entry(self, shard: Path, shard_locator: str, shard_fingerprint: str, sample: _Sample) -> Entry:
        locator = f"{shard_locator}/{sample.key}"
        image = sample.image
        fingerprint = f"{shard_fingerprint}:{image.offset if image else sample.key}"
        try:
            label, metadata = self._described(sample)
            if image is None:
                found = ", ".join(sorted(sample.texts) + sample.other) or "nothing"
                raise ImageRejected("bad-entry", f"sample {sample.key!r} has no image member (found: {found})")
        except ImageRejected as rejection:
            return Entry(locator=locator, fingerprint=fingerprint, read=bytes, rejection=rejection)
        return Entry(locator=locator, fingerprint=fingerprint, read=_reader(shard, image), label=label,
                     metadata=metadata)

    def _described(self, sample: _Sample) -> tuple[str | None, dict[str, Any]]:
        metadata: dict[str, Any] = {}
        if "json" in sample.texts:
            try:
                metadata = json.loads(sample.texts["json"])
            except ValueError as error:
                raise ImageRejected("bad-entry", f"{sample.key}.json is not JSON: {error}") from error
            if not isinstance(metadata, dict):
                raise ImageRejected("bad-entry", f"{sample.key}.json holds a {type(metadata).__name__}, "
                                                 "not a JSON object")
        if "txt" in sample.texts:
            metadata["caption"] = sample.texts["txt"].decode("utf-8", errors="replace").strip()
        if self.label_field is not None:
            value = metadata.get(self.label_field)
            return (None if value is None else str(value)), metadata
        return self._class_label(sample), metadata

    def _class_label(self, sample: _Sample) -> str | None:
        text = sample.texts.get("cls", b"").decode("utf-8", errors="replace").strip()
        if not text:
            return None
        if self.class_names is None:
            return text
        try:
            return self.class_names[int(text)]
        except (ValueError, IndexError) as error:
            raise ImageRejected("bad-entry", f"{sample.key}.cls holds {text!r}, which names none of "
                                             f"{len(self.class_names)} classes") from error


def _split_name(name: str) -> tuple[str, str, str]:
    """``dir/key.ext.more`` -> (``dir/key``, ``.``, ``ext.more``): the key ends at the basename's first dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), dot, extension


def _members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, Callable[[], IO[bytes]]]]:
    """Regular-file members one by one, each with a way to open its bytes, forgetting the members
    seen (``TarFile`` would otherwise keep every header of the shard)."""
    while (member := tar.next()) is not None:
        if member.isfile():
            yield member, _opener(tar, member)
        # TarFile appends every header it reads to ``members`` (not in typeshed); webdataset empties it too
        # ignored below (attr-defined): TarFile.members is real but missing from typeshed
        tar.members = []  # type: ignore[attr-defined]


def _opener(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def open_member() -> IO[bytes]:
        handle = tar.extractfile(member)
        if handle is None:
            raise OSError(f"{member.name} is not a regular file")
        return handle

    return open_member


def _reader(shard: Path, image: _Member) -> Callable[[], bytes]:
    """The bytes of one image member: held already (compressed shard) or read at their offset."""

    def read() -> bytes:
        if image.data is not None:
            data = image.data
        else:
            with shard.open("rb") as handle:
                handle.seek(image.offset)
                data = handle.read(image.size)
        if len(data) != image.size:
            raise OSError(f"{image.name} in {shard.name} is cut short: {len(data)} of {image.size} bytes")
        return data

    return read
