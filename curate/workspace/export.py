"""Streaming exports of catalogue tables to parquet or CSV (the format follows the suffix)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

_TEXT, _INT, _FLOAT = pa.string(), pa.int64(), pa.float64()

# Table name -> the columns an export writes, in order (JSON fields stay JSON text).
EXPORT_SCHEMAS: dict[str, pa.Schema] = {
    "items": pa.schema([
        ("item_id", _TEXT), ("uri", _TEXT), ("label", _TEXT), ("width", _INT), ("height", _INT), ("mode", _TEXT),
        ("format", _TEXT), ("size_bytes", _INT), ("orientation", _INT), ("n_frames", _INT), ("license", _TEXT),
        ("metadata", _TEXT), ("run_id", _TEXT), ("created_at", _TEXT), ("first_source", _TEXT), ("n_sources", _INT),
    ]),
    "evidence": pa.schema([
        ("item_id", _TEXT), ("attribute", _TEXT), ("source", _TEXT), ("run_id", _TEXT), ("role", _TEXT),
        ("taxonomy_type", _TEXT), ("score", _FLOAT), ("boxes", _TEXT), ("model", _TEXT), ("model_version", _TEXT),
        ("extra", _TEXT), ("negative_of", _TEXT),
    ]),
    "cues": pa.schema([
        ("class_label", _TEXT), ("attribute", _TEXT), ("source", _TEXT), ("run_id", _TEXT),
        ("taxonomy_type", _TEXT), ("role", _TEXT), ("extra", _TEXT),
    ]),
}


def write_rows(path: Path, schema: pa.Schema, batches: Iterable[list[dict[str, Any]]]) -> int:
    """Write batches of row dicts to ``path`` (.parquet or .csv) atomically; return the row count."""
    return write_tables(path, schema, (pa.Table.from_pylist(rows, schema=schema) for rows in batches))


def write_batches(path: Path, schema: pa.Schema, frames: Iterable[pl.DataFrame]) -> int:
    """Write polars frames (of ``schema``'s columns) to ``path`` (.parquet or .csv) atomically, a
    parquet row group each; return the row count."""
    tables = (frame.select(schema.names).rechunk().to_arrow().cast(schema) for frame in frames)  # one chunk a column
    return write_tables(path, schema, tables)


def write_tables(path: Path, schema: pa.Schema, tables: Iterable[pa.Table]) -> int:
    """Write arrow tables of ``schema`` to ``path`` (.parquet or .csv) atomically, a parquet row group
    each; return the row count."""
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"export to .parquet or .csv, not {path.suffix or 'no suffix'!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = pq.ParquetWriter(tmp, schema) if path.suffix == ".parquet" else pa_csv.CSVWriter(tmp, schema)
    written = 0
    try:
        with writer:
            for table in tables:
                writer.write_table(table)
                written += table.num_rows
            if written == 0:
                writer.write_table(schema.empty_table())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def write_frame(path: Path, schema: pa.Schema, frame: pl.LazyFrame) -> int:
    """Stream a lazy frame to ``path`` (.parquet or .csv) atomically in ``schema``'s columns (list
    columns as JSON text, like the catalogue's other JSON fields); return the row count."""
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"export to .parquet or .csv, not {path.suffix or 'no suffix'!r}")
    lists = [name for name, dtype in frame.collect_schema().items() if isinstance(dtype, pl.List)]
    frame = frame.with_columns(pl.struct(name).struct.json_encode().str.slice(len(name) + 4).str.strip_suffix("}")
                               .alias(name) for name in lists).select(schema.names)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if path.suffix == ".parquet":
            frame.sink_parquet(tmp)
        else:
            frame.sink_csv(tmp)
        written = pl.scan_parquet(tmp).select(pl.len()).collect().item() if path.suffix == ".parquet" else \
            pl.scan_csv(tmp).select(pl.len()).collect().item()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return int(written)
