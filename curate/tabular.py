"""Reading a user's table (CSV, TSV, parquet, JSON lines) by its suffix: what ingest, evaluation,
the gap's prediction tables and annotation units all read.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
>>> _ = path.write_text("a,b\\n1,x\\n")
>>> read_table(path).to_dicts()
[{'a': 1, 'b': 'x'}]
"""

from __future__ import annotations

from pathlib import Path

import polars as pl


class TableError(ValueError):
    """A table that is missing, unreadable or of an unknown format."""


def read_table(path: Path, error: type[ValueError] = TableError) -> pl.DataFrame:
    """Read a CSV, TSV, parquet or JSON-lines table (by suffix) with polars; anything wrong raises
    ``error`` (a ``TableError`` unless the caller names its own) with one line saying what."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise error(f"no table at {path}")
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pl.read_ndjson(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema_length=10_000)
    except (pl.exceptions.PolarsError, OSError, ValueError) as failure:
        raise error(f"cannot read table {path}: {failure}") from failure
    raise error(f"unknown table format {suffix!r} for {path}; use .csv, .tsv, .parquet or .jsonl")
