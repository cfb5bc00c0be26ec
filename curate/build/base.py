"""Builders: the registry, the release they produce, and how a release is written to a folder.

A builder reads the workspace (items, evidence, verdicts) and returns a ``Release``: one table per
split plus metadata that says exactly how it was made. Builders import neither torch, ultralytics
nor openai. ``build()`` records the build as a run and writes the release folder::

    release.json           builder, options, counts, encodings, sources of every label
    data/<split>.parquet   one row per item (item_id, uri, y, a, g, names, split ...)
    extra files            exports a builder adds (e.g. SubpopBench metadata.csv)
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from curate.records import Run
from curate.registry import Registry
from curate.workspace import Workspace


class BuildError(ValueError):
    """A release cannot be built as asked (too few items in a group, no labels for an attribute ...)."""


@dataclass
class Release:
    """Split -> rows, metadata for the card, and extra files (name -> writer of that file)."""

    builder: str
    tables: dict[str, pl.DataFrame]
    metadata: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, Callable[[Path], None]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Rows per split."""
        return {split: table.height for split, table in self.tables.items()}


class Builder(ABC):
    """A registered way of building a release. Subclasses are dataclasses of their options."""

    name: ClassVar[str]

    def options(self) -> dict[str, Any]:
        """The options, JSON-ready, recorded in the run config and the release."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @abstractmethod
    def build(self, workspace: Workspace) -> Release:
        """Make the release tables from the workspace."""


BUILDERS: Registry[type[Builder]] = Registry("builder", BuildError, attribute="name")
register_builder = BUILDERS.register


def make_builder(name: str, **options: Any) -> Builder:
    """Build a registered builder from its options; unknown options are a clear error."""
    return BUILDERS.create(name, **options)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class BuildResult:
    """The folder written, the release, and the stored run."""

    path: Path
    release: Release
    run: Run
    seconds: float

    def summary(self) -> str:
        """One line for the end of a command."""
        counts = ", ".join(f"{split} {n}" for split, n in self.release.counts().items())
        return f"build {self.release.builder}: {counts} -> {self.path} [run {self.run.run_id}]"


def build(workspace: Workspace, builder: Builder, out: str | Path) -> BuildResult:
    """Run a builder as a recorded ``build`` run and write its release folder to ``out``."""
    started = time.perf_counter()
    target = Path(out)
    config = {"builder": builder.name, "options": builder.options(), "out": str(target.resolve())}
    with workspace.runs.track("build", builder.name, config, extend_completed=True) as run:
        release = builder.build(workspace)
        (target / "data").mkdir(parents=True, exist_ok=True)
        for split, table in release.tables.items():
            table.write_parquet(target / "data" / f"{split}.parquet")
        for name, writer in release.extra_files.items():
            writer(target / name)
        manifest = {"builder": builder.name, "options": builder.options(), "run_id": run.run_id,
                    "counts": release.counts(), **release.metadata}
        (target / "release.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        with workspace.transaction() as conn:
            workspace.runs.set_counts(conn, run.run_id, {f"rows_{k}": v for k, v in release.counts().items()})
    return BuildResult(target, release, workspace.runs.get(run.run_id), time.perf_counter() - started)
