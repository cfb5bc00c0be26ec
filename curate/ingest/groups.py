"""Group-metadata tables in the Waterbirds / SubpopBench style: ``id, filename, split, y, a``.

The table is kept whole (every row, with its original id and split code, quarantined rows too) so
that later builders can reproduce its splits and groups exactly. ``Catalog.group_table`` gives it back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.ingest.base import (
    Entry,
    SourceError,
    TableSource,
    register_source,
    require_columns,
    row_locators,
)
from curate.ingest.manifest import path_entry
from curate.tabular import read_table

DEFAULT_SPLIT_NAMES = ("train", "val", "test")


def _name(names: Sequence[str] | None, code: Any, what: str) -> str:
    if names is None:
        return str(code)
    try:
        return names[int(code)]
    except (IndexError, ValueError, TypeError) as error:
        raise SourceError(f"{what} value {code!r} has no name among {list(names)}") from error


@register_source("groups")
@dataclass(frozen=True)
class GroupTableSource(TableSource):
    """A group-annotated table: each row an image with class ``y``, spurious attribute ``a`` and split.

    ``y_names`` / ``a_names`` name the integer codes (``y_names[y]`` becomes the item's label);
    integer split codes are named by ``split_names`` (train, val, test by default, as in Waterbirds).
    Images are found under ``images`` (default: the table's folder).

    Waterbirds' own ``metadata.csv``::

        GroupTableSource(Path("metadata.csv"), id_column="img_id", filename_column="img_filename",
                         a_column="place", y_names=("landbird", "waterbird"), a_names=("land", "water"))
    """

    path: Path
    images: Path | None = None
    id_column: str = "id"
    filename_column: str = "filename"
    split_column: str = "split"
    y_column: str = "y"
    a_column: str = "a"
    y_names: tuple[str, ...] | None = None
    a_names: tuple[str, ...] | None = None
    split_names: tuple[str, ...] = DEFAULT_SPLIT_NAMES
    allow_absolute: bool = False
    path_map: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        path = Path(self.path).resolve()
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "images", Path(self.images).resolve() if self.images else path.parent)
        for option in ("y_names", "a_names", "split_names"):
            if getattr(self, option) is not None:
                object.__setattr__(self, option, tuple(getattr(self, option)))
        frame = read_table(path, SourceError)
        require_columns(frame, path, id_column=self.id_column, filename_column=self.filename_column,
                        split_column=self.split_column, y_column=self.y_column, a_column=self.a_column)
        for column, names in ((self.y_column, self.y_names), (self.a_column, self.a_names)):
            if not frame.get_column(column).dtype.is_integer():
                raise SourceError(f"{path}: column {column!r} must hold integer codes")
            codes = frame.get_column(column).unique().to_list()
            for code in codes:
                _name(names, code, column)
        object.__setattr__(self, "_frame", frame)

    def entries(self) -> Iterator[Entry]:
        frame = self._frame
        named = {self.id_column, self.filename_column, self.split_column, self.y_column, self.a_column}
        extra = [c for c in frame.columns if c not in named]
        files = frame.get_column(self.filename_column)
        for locator, row in zip(row_locators(files), frame.iter_rows(named=True), strict=True):
            split_code = row[self.split_column]
            split = (_name(self.split_names, split_code, self.split_column)
                     if isinstance(split_code, int) else str(split_code))
            metadata = {
                "group_id": row[self.id_column], "filename": row[self.filename_column],
                "y": row[self.y_column], "a": row[self.a_column],
                "a_name": _name(self.a_names, row[self.a_column], self.a_column),
                "split_code": split_code, **{c: row[c] for c in extra},
            }
            yield path_entry(locator, row[self.filename_column], self.images, self.allow_absolute,
                             path_map=self.path_map, label=_name(self.y_names, row[self.y_column], self.y_column),
                             split=split, metadata=metadata)
