"""Manifests: a CSV / TSV / parquet / JSON-lines table with a path or URL column and a label column.

A manifest is read in batches of ``ROWS_PER_BATCH`` rows (JSON lines also at most ``_JSON_BATCH_BYTES``
bytes) and never whole, so a million-row manifest is ingested in the memory of a thousand rows
(repeated paths are numbered from a temporary table on disk: see ``row_locators``). Column types are
inferred once, from the first ``INFER_ROWS`` rows, and every batch is read with them.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from curate.images import ImageRejected
from curate.ingest.base import (
    Entry,
    IngestSource,
    SourceError,
    file_entry,
    map_path,
    register_source,
    resolve_under_root,
    row_locators,
)
from curate.ingest.download import DEFAULT_DEADLINE_S, DEFAULT_MAX_BYTES, DownloadLimits, download

ROWS_PER_BATCH = 1024
INFER_ROWS = 1_000
_CSV_BLOCK_BYTES = 1 << 16  # pyarrow parses CSV in blocks: small blocks keep memory flat
_JSON_BATCH_BYTES = 1 << 18
"""The most bytes of JSON lines parsed at once. The allocators keep the memory of several parsed batches
for reuse, so a batch of 1,024 wide rows (4 MB at 4 kB a row) made the peak grow over the first ten
batches or so; batches of at most 256 KiB keep it within a few MB."""
_TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".jsonl": "jsonl",
                   ".ndjson": "jsonl"}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class StreamedTable:
    """A table file read batch by batch: its columns and types are known up front, its rows never all
    at once.

    >>> StreamedTable(Path("/no/manifest.csv"))
    Traceback (most recent call last):
    ...
    curate.ingest.base.SourceError: no table at /no/manifest.csv
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise SourceError(f"no table at {path}")
        kind = _TABLE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise SourceError(f"unknown table format {path.suffix.lower()!r} for {path}; "
                              "use .csv, .tsv, .parquet or .jsonl")
        self.path, self.kind = path, kind
        self.schema: pl.Schema = self._guarded(self._scan().collect_schema)

    @property
    def columns(self) -> list[str]:
        """The table's column names, in order."""
        return self.schema.names()

    def _scan(self) -> pl.LazyFrame:
        if self.kind == "parquet":
            return pl.scan_parquet(self.path)
        if self.kind == "jsonl":
            return pl.scan_ndjson(self.path, infer_schema_length=INFER_ROWS)
        return pl.scan_csv(self.path, separator=self._separator, infer_schema_length=INFER_ROWS)

    @property
    def _separator(self) -> str:
        return "\t" if self.path.suffix.lower() == ".tsv" else ","

    def _guarded(self, read: Any) -> Any:
        try:
            return read()
        except (pl.exceptions.PolarsError, pa.ArrowException, OSError, ValueError) as error:
            raise SourceError(f"cannot read table {self.path}: {error}") from error

    def count(self) -> int:
        """About how many rows there are (for progress bars): read in chunks, nothing held."""
        if self.kind == "parquet":
            return int(self._guarded(lambda: pq.ParquetFile(self.path).metadata.num_rows))
        lines = 0
        with self.path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                lines += chunk.count(b"\n")
        return max(0, lines - (self.kind == "csv"))  # a header line; quoted line breaks count too

    def batches(self) -> Iterator[pl.DataFrame]:
        """The rows, ``ROWS_PER_BATCH`` at a time, each batch with the table's one schema."""
        reader = {"parquet": self._parquet_batches, "jsonl": self._jsonl_batches, "csv": self._csv_batches}[self.kind]
        batches = reader()
        while True:
            batch = self._guarded(lambda: next(batches, None))
            if batch is None:
                return
            yield batch

    def _parquet_batches(self) -> Iterator[pl.DataFrame]:
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=ROWS_PER_BATCH):
            yield pl.DataFrame(pl.from_arrow(batch))

    def _csv_batches(self) -> Iterator[pl.DataFrame]:
        types = {name: pl.Series([], dtype=dtype).to_arrow().type for name, dtype in self.schema.items()}
        reader = pa_csv.open_csv(
            self.path, read_options=pa_csv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False),
            parse_options=pa_csv.ParseOptions(delimiter=self._separator),
            convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True))
        for batch in reader:
            frame = pl.DataFrame(pl.from_arrow(batch))
            for start in range(0, frame.height, ROWS_PER_BATCH):
                yield frame.slice(start, ROWS_PER_BATCH)

    def _jsonl_batches(self) -> Iterator[pl.DataFrame]:
        with self.path.open("rb") as handle:
            lines: list[bytes] = []
            size = 0
            for line in handle:
                if line.strip():
                    lines.append(line)
                    size += len(line)
                if len(lines) == ROWS_PER_BATCH or size >= _JSON_BATCH_BYTES:
                    yield pl.read_ndjson(io.BytesIO(b"".join(lines)), schema=self.schema)
                    lines, size = [], 0
            if lines:
                yield pl.read_ndjson(io.BytesIO(b"".join(lines)), schema=self.schema)


@register_source("manifest")
@dataclass(frozen=True)
class ManifestSource(IngestSource):
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
        table = self._table
        named = {"path_column": self.path_column, "label_column": self.label_column,
                 "split_column": self.split_column, "license_column": self.license_column}
        wanted = [*named.items(), *(("metadata_columns", column) for column in self.metadata_columns or ())]
        missing = [(option, name) for option, name in wanted if name is not None and name not in table.columns]
        if missing:
            wanted_text = ", ".join(f"{option}={name!r}" for option, name in missing)
            raise SourceError(f"{path} has no column for {wanted_text}; its columns: {', '.join(table.columns)}")

    @cached_property
    def _table(self) -> StreamedTable:
        return StreamedTable(self.path)

    @property
    def location(self) -> str:
        return str(self.path)

    def estimate(self) -> int:
        return self._table.count()

    def _metadata_columns(self) -> list[str]:
        if self.metadata_columns is not None:
            return list(self.metadata_columns)
        named = {self.path_column, self.label_column, self.split_column, self.license_column}
        return [c for c in self._table.columns if c not in named]

    def _rows(self) -> Iterator[dict[str, Any]]:
        for batch in self._table.batches():
            yield from batch.iter_rows(named=True)

    def entries(self) -> Iterator[Entry]:
        metadata_columns = self._metadata_columns()
        rows, ahead = itertools.tee(self._rows())  # tee holds the rows row_locators reads ahead
        paths = (row[self.path_column] for row in ahead)
        for locator, row in zip(row_locators(paths), rows, strict=True):
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
