"""A release folder in Hugging Face Hub layout: parquet shards per config and split, images embedded
as bytes, declared features (``ClassLabel`` for y, a, g and taxonomy types; ``List`` of structs),
and a README.md whose YAML front matter names the configs, so ``datasets.load_dataset(folder)``
reads it back with the same features. Local paths never leave the workspace: the ``uri`` column
becomes the ``image`` column.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.progress import progress_bar
from curate.spill import Table, batches, row_count
from curate.taxonomy import SPURIOUS_TYPES
from curate.workspace import Workspace

SPLIT_NAMES = ("train", "val", "validation", "test")
MAX_SHARD_BYTES = 256 * 1024 * 1024
MAX_SHARD_ROWS = 50_000
HIDDEN_COLUMNS = ("uri",)  # local locations: replaced by the embedded image


def configs_of(tables: dict[str, Any]) -> dict[str, dict[str, str]]:
    """config -> split -> table name: split-named tables form ``default``; any other table is a
    config of its own with a ``test`` split.

    >>> configs_of({"train": None, "test": None, "ranking": None})
    {'default': {'train': 'train', 'test': 'test'}, 'ranking': {'test': 'ranking'}}
    """
    configs: dict[str, dict[str, str]] = {}
    for name in tables:
        if name in SPLIT_NAMES:
            configs.setdefault("default", {})[name] = name
        else:
            configs[name] = {"test": name}
    return configs


def _value(dtype: pl.DataType | pl.datatypes.DataTypeClass) -> Any:
    if dtype == pl.Boolean:
        return datasets.Value("bool")
    if dtype.is_integer():
        return datasets.Value("int64")
    if dtype.is_float():
        return datasets.Value("float64")
    if isinstance(dtype, pl.List):
        return datasets.List(_value(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return {f.name: _value(f.dtype) for f in dtype.fields}
    return datasets.Value("string")


def features_for(table: Table, metadata: dict[str, Any]) -> datasets.Features:
    """Declared features: names from the release metadata become ``ClassLabel``s."""
    y_names, a_names = metadata.get("y_names"), metadata.get("a_names")
    features: dict[str, Any] = {}
    schema = table.collect_schema()
    if "uri" in schema:
        if "image" in schema:
            raise ValueError("a release table with a uri publishes it as the column 'image'; "
                             "its own 'image' column would replace the picture (name it file_name)")
        features["image"] = datasets.Image()
    for column, dtype in schema.items():
        if column in HIDDEN_COLUMNS:
            continue
        if column == "y" and y_names:
            features[column] = datasets.ClassLabel(names=list(y_names))
        elif column == "a" and a_names:
            features[column] = datasets.ClassLabel(names=list(a_names))
        elif column == "g" and y_names and a_names:
            features[column] = datasets.ClassLabel(names=[f"y:{y}|a:{a}" for y in y_names for a in a_names])
        elif column == "spurious_correlation_type":
            features[column] = datasets.List(datasets.ClassLabel(names=list(SPURIOUS_TYPES)))
        else:
            features[column] = _value(dtype)
    return datasets.Features(features)


def _encoded_batches(workspace: Workspace, table: Table, features: datasets.Features,
                     batch_rows: int = 256) -> Iterator[tuple[pa.Table, int]]:
    for chunk in batches(table, batch_rows):
        columns = {name: chunk[name].to_list() for name in features if name in chunk.columns}
        size = 0
        if "image" in features:
            images = []
            for uri in chunk["uri"]:
                data = workspace.resolve_uri(uri).read_bytes()
                size += len(data)
                images.append({"bytes": data, "path": None})
            columns["image"] = images
        if "spurious_correlation_type" in columns:
            names = list(SPURIOUS_TYPES)
            columns["spurious_correlation_type"] = [[names.index(t) for t in row]
                                                    for row in columns["spurious_correlation_type"]]
        encoded = features.encode_batch(columns)
        yield pa.Table.from_pydict(encoded, schema=features.arrow_schema), size + int(chunk.estimated_size())


def write_table(workspace: Workspace, table: Table, features: datasets.Features, folder: Path,
                split: str, max_shard_bytes: int = MAX_SHARD_BYTES, max_shard_rows: int = MAX_SHARD_ROWS,
                batch_rows: int = 256, progress: bool = True) -> list[Path]:
    """Stream a table into size-bounded shards ``<split>-0000i-of-0000n.parquet`` (whole batches of
    ``batch_rows``, so a shard may hold one batch more than the bounds); return them."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{split}-*.parquet"):
        stale.unlink()
    parts: list[Path] = []
    writer: pq.ParquetWriter | None = None
    written_bytes = written_rows = 0
    with progress_bar(f"publish {folder.name}/{split}", row_count(table), progress) as advance:
        for batch, size in _encoded_batches(workspace, table, features, batch_rows):
            full = written_bytes + size > max_shard_bytes or written_rows + batch.num_rows > max_shard_rows
            if writer is None or full:
                if writer is not None:
                    writer.close()
                parts.append(folder / f".{split}-part{len(parts):05d}.tmp")
                writer = pq.ParquetWriter(parts[-1], features.arrow_schema)
                written_bytes = written_rows = 0
            writer.write_table(batch)
            written_bytes += size
            written_rows += batch.num_rows
            advance(batch.num_rows)
    if writer is None:  # an empty table still gets one (empty) shard
        parts.append(folder / f".{split}-part00000.tmp")
        pq.write_table(features.arrow_schema.empty_table(), parts[-1])
    else:
        writer.close()
    final = [folder / f"{split}-{i:05d}-of-{len(parts):05d}.parquet" for i in range(len(parts))]
    for temporary, target in zip(parts, final, strict=True):
        temporary.replace(target)
    return final


def size_category(rows: int) -> str:
    """The Hub's size category.

    >>> size_category(999), size_category(11788)
    ('n<1K', '10K<n<100K')
    """
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return name
    return "1M<n<10M"


def file_digest(path: Path) -> str:
    """sha256 of a file (what re-publishing compares)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_release(path: Path) -> tuple[dict[str, Any], dict[str, pl.LazyFrame]]:
    """A release folder's manifest and the tables it names (``counts`` in release.json: only those,
    each checked against its row count), scanned lazily (publishing streams them)."""
    manifest_path = path / "release.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a release folder (no release.json); write one with `curate build`")
    manifest = json.loads(manifest_path.read_text())
    order = {name: n for n, name in enumerate(SPLIT_NAMES)}
    tables = {}
    for name in sorted(manifest.get("counts", {}), key=lambda n: (order.get(n, len(order)), n)):
        file = path / "data" / f"{name}.parquet"
        if not file.is_file():
            raise FileNotFoundError(f"{path} names the table {name!r} in release.json but has no data/{name}.parquet; "
                                    "rebuild it with `curate build`")
        tables[name] = pl.scan_parquet(file)
        if (rows := row_count(tables[name])) != manifest["counts"][name]:
            raise ValueError(f"{file} has {rows} rows but release.json says {manifest['counts'][name]}; "
                             "rebuild the release with `curate build`")
    return manifest, tables


def release_datasets(workspace: Workspace, path: Path) -> datasets.DatasetDict:
    """A release folder as a ``datasets.DatasetDict`` in memory, one entry per table, with the
    features ``publish`` writes (images embedded, class and group labels as ``ClassLabel``): what a
    notebook looks at before publishing."""
    manifest, tables = load_release(path)
    loaded = {}
    for name, table in tables.items():
        features = features_for(table, manifest)
        parts = []
        with progress_bar(f"load {name}", row_count(table)) as advance:
            for part, _ in _encoded_batches(workspace, table, features):
                parts.append(part)
                advance(part.num_rows)
        data = pa.concat_tables(parts) if parts else features.arrow_schema.empty_table()
        loaded[name] = datasets.Dataset(data, info=datasets.DatasetInfo(features=features))
    return datasets.DatasetDict(loaded)
