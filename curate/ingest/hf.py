"""Hugging Face datasets: a folder saved with ``save_to_disk``, a local repo folder, or a hub id."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.ingest.base import Entry, IngestSource, SourceError, read_regular_file, register_source

ROW_BATCH = 64
_SCALARS = (str, int, float, bool, type(None))


def _load(name: str, revision: str | None) -> Any:
    import datasets  # deferred: importing datasets costs about a second

    path = Path(name)
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(str(path.resolve()) if path.is_dir() else name, revision=revision)
    except Exception as error:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        hint = ("" if path.exists() else
                "; for a hub id this needs the network or the dataset in the local HF cache "
                "(offline: download it elsewhere with `hf download --repo-type dataset ID`, copy the "
                "cache, or save it with `save_to_disk` and ingest that folder)")
        raise SourceError(f"cannot load dataset {name!r}: {type(error).__name__}: {error}{hint}") from error


def _jsonable(value: Any) -> bool:
    if isinstance(value, _SCALARS):
        return True
    return isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value)


@register_source("hf")
@dataclass(frozen=True)
class HuggingFaceSource(IngestSource):
    """Rows of a ``datasets`` dataset with an image column and a label column.

    ``name`` is a folder saved with ``save_to_disk``, a local dataset repo folder (parquet,
    imagefolder ...), or a hub id (needs the network or the local HF cache). ``ClassLabel`` labels
    become their names. Scalar columns other than image and label are kept as metadata. The image
    bytes are copied into the workspace blob store.
    """

    name: str
    image_column: str = "image"
    label_column: str | None = "label"
    splits: tuple[str, ...] | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        import datasets

        name = str(Path(self.name).resolve()) if Path(self.name).exists() else str(self.name)
        object.__setattr__(self, "name", name)
        loaded = _load(name, self.revision)
        by_split = {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
        if self.splits is not None:
            object.__setattr__(self, "splits", tuple(self.splits))
            missing = set(self.splits) - set(by_split)
            if missing:
                raise SourceError(f"dataset {name!r} has no split {sorted(missing)}; it has {sorted(by_split)}")
            by_split = {s: by_split[s] for s in self.splits}
        for split, dataset in by_split.items():
            for option in ("image_column", "label_column"):
                column = getattr(self, option)
                if column is not None and column not in dataset.column_names:
                    raise SourceError(f"split {split!r} of {name!r} has no column for {option}={column!r}; "
                                      f"its columns: {', '.join(dataset.column_names)}")
            feature = dataset.features[self.image_column]
            if isinstance(feature, datasets.Image):
                by_split[split] = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        object.__setattr__(self, "_splits", by_split)

    @property
    def location(self) -> str:
        return self.name if self.revision is None else f"{self.name}@{self.revision}"

    def estimate(self) -> int:
        splits: dict[str, Any] = self._splits  # type: ignore[attr-defined]  # set in __post_init__, not an option
        return sum(len(d) for d in splits.values())

    def entries(self) -> Iterator[Entry]:
        for split, dataset in self._splits.items():  # type: ignore[attr-defined]  # set in __post_init__, not an option
            label_feature = dataset.features.get(self.label_column) if self.label_column else None
            names = getattr(label_feature, "names", None)
            index = 0
            for batch in dataset.iter(batch_size=ROW_BATCH):
                for row in (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)):
                    yield self._entry(split, index, row, names, dataset._fingerprint)
                    index += 1

    def _entry(self, split: str, index: int, row: dict[str, Any], names: list[str] | None,
               fingerprint: str) -> Entry:
        image, label = row[self.image_column], row.get(self.label_column) if self.label_column else None
        if names is not None and label is not None:
            label = names[label] if label >= 0 else None  # ClassLabel uses -1 for missing
        metadata = {k: v for k, v in row.items()
                    if k not in (self.image_column, self.label_column) and _jsonable(v)}
        return Entry(locator=f"{split}/{index}", fingerprint=f"{fingerprint}:{index}", read=_reader(image),
                     label=None if label is None else str(label), split=split, metadata=metadata)


def _reader(image: Any) -> Any:
    """Bytes of an image cell: ``{"bytes", "path"}`` from ``Image(decode=False)``, or raw bytes."""

    def read() -> bytes:
        if isinstance(image, bytes):
            return image
        if isinstance(image, dict):
            if image.get("bytes"):
                return image["bytes"]
            if image.get("path"):
                return read_regular_file(Path(image["path"]))
        raise OSError(f"the image cell holds no bytes and no path ({type(image).__name__})")

    return read
