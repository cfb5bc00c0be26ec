"""Image folders: one subfolder per class, searched recursively."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from curate.images import IMAGE_EXTENSIONS
from curate.ingest.base import Entry, IngestSource, SourceError, file_entry, register_source


@register_source("folder")
@dataclass(frozen=True)
class FolderSource(IngestSource):
    """``root/<class>/.../<image>``: the first folder under the root is the class label.

    Files directly in the root get no label. Hidden files and folders are skipped; files whose
    extension is not an image extension are ignored; a file that has one but is not a readable
    image is quarantined.

    >>> FolderSource(Path("/no/such/folder"))
    Traceback (most recent call last):
    ...
    curate.ingest.base.SourceError: no folder at /no/such/folder
    """

    path: Path
    extensions: frozenset[str] = IMAGE_EXTENSIONS

    def __post_init__(self) -> None:
        if not Path(self.path).is_dir():
            raise SourceError(f"no folder at {self.path}")
        object.__setattr__(self, "path", Path(self.path).resolve())
        object.__setattr__(self, "extensions", frozenset(e.lower() for e in self.extensions))

    @property
    def location(self) -> str:
        return str(self.path)

    def _walk(self) -> Iterator[Path]:
        for directory, subdirs, files in os.walk(self.path):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in self.extensions:
                    yield Path(directory) / name

    def estimate(self) -> int:
        return sum(1 for _ in self._walk())

    def entries(self) -> Iterator[Entry]:
        for path in self._walk():
            relative = path.relative_to(self.path)
            label = relative.parts[0] if len(relative.parts) > 1 else None
            yield file_entry(path, relative.as_posix(), label=label)

    def options(self) -> dict[str, object]:
        options = super().options()
        if self.extensions == IMAGE_EXTENSIONS:
            options["extensions"] = "default"
        return options
