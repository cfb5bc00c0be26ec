"""Manifests: a CSV / TSV / parquet / JSON-lines table with a path or URL column and a label column."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.images import ImageRejected
from curate.ingest.base import (
    Entry,
    SourceError,
    TableSource,
    file_entry,
    map_path,
    register_source,
    require_columns,
    resolve_under_root,
    row_locators,
)
from curate.ingest.download import DEFAULT_DEADLINE_S, DEFAULT_MAX_BYTES, DownloadLimits, download
from curate.tabular import read_table


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@register_source("manifest")
@dataclass(frozen=True)
class ManifestSource(TableSource):
    """One row per image: ``path_column`` holds a path (relative to ``root``) or an http(s) URL.

    ``root`` defaults to the manifest's folder; paths may not leave it (no ``..``, no absolute
    paths, no links outward) unless ``allow_absolute``. Every column not named by an option is
    kept as metadata, or only ``metadata_columns`` when given. A path listed twice keeps both rows.
    A URL download may take ``download_deadline_s`` seconds in all and bring ``download_max_bytes``.

    >>> ManifestSource(Path("/no/manifest.csv"))
    Traceback (most recent call last):
    ...
    curate.ingest.base.SourceError: no table at /no/manifest.csv
    """

    path: Path
    path_column: str = "path"
    label_column: str | None = "label"
    split_column: str | None = None
    license_column: str | None = None
    metadata_columns: tuple[str, ...] | None = None
    root: Path | None = None
    allow_absolute: bool = False
    path_map: tuple[str, ...] = ()
    download_deadline_s: float = DEFAULT_DEADLINE_S
    download_max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        path = Path(self.path).resolve()
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "root", Path(self.root).resolve() if self.root else path.parent)
        DownloadLimits(self.download_deadline_s, self.download_max_bytes)  # refuse bad limits before any row
        if self.metadata_columns is not None:
            object.__setattr__(self, "metadata_columns", tuple(self.metadata_columns))
        frame = read_table(path, SourceError)
        require_columns(frame, path, path_column=self.path_column, label_column=self.label_column,
                        split_column=self.split_column, license_column=self.license_column)
        for column in self.metadata_columns or ():
            require_columns(frame, path, metadata_columns=column)
        object.__setattr__(self, "_frame", frame)

    def _metadata_columns(self) -> list[str]:
        if self.metadata_columns is not None:
            return list(self.metadata_columns)
        named = {self.path_column, self.label_column, self.split_column, self.license_column}
        return [c for c in self._frame.columns if c not in named]

    def entries(self) -> Iterator[Entry]:
        frame = self._frame
        metadata_columns = self._metadata_columns()
        paths = frame.get_column(self.path_column)
        for locator, row in zip(row_locators(paths), frame.iter_rows(named=True), strict=True):
            yield self._entry(locator, row, {c: row[c] for c in metadata_columns})

    def _entry(self, locator: str, row: dict[str, Any], metadata: dict[str, Any]) -> Entry:
        fields_: dict[str, Any] = {
            "label": _text(row[self.label_column]) if self.label_column else None,
            "split": _text(row[self.split_column]) if self.split_column else None,
            "license": _text(row[self.license_column]) if self.license_column else None,
            "metadata": metadata,
        }
        limits = DownloadLimits(self.download_deadline_s, self.download_max_bytes)
        return path_entry(locator, row[self.path_column], self.root, self.allow_absolute, limits, self.path_map,
                          **fields_)


def path_entry(locator: str, value: Any, root: Path | None, allow_absolute: bool,
               limits: DownloadLimits = DownloadLimits(), path_map: tuple[str, ...] = (),  # noqa: B008 - frozen
               **fields_: Any) -> Entry:
    """The entry for one table cell holding a path or URL (rewritten by ``path_map`` first); bad cells
    become rejected entries."""
    if root is None:
        raise SourceError("a table source needs a root folder")
    text = map_path("" if value is None else str(value).strip(), path_map)
    if text.startswith(("http://", "https://")):
        return Entry(locator=locator, fingerprint=f"url:{text}", read=lambda: download(text, limits), **fields_)
    try:
        if not text:
            raise ImageRejected("bad-entry", "the path cell is empty")
        path = resolve_under_root(root, text, allow_absolute)
    except ImageRejected as rejection:
        return Entry(locator=locator, fingerprint="rejected", read=bytes, rejection=rejection, **fields_)
    return file_entry(path, locator, **fields_)
