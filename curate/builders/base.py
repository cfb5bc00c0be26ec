"""Builders: the registry, the release they produce, and how a release is written to a folder.

A builder reads the workspace (items, evidence, verdicts) and returns a ``Release``: one table per
split plus metadata that says exactly how it was made. Builders import neither torch, ultralytics
nor openai. ``build()`` records the build as a run and writes the release folder::

    release.json           builder, options, counts (the tables, exactly), encodings, sources of every
                           label, and ``fed_by``: the classes, rounds, proposal runs and pictures behind it
    data/<table>.parquet   one row per item (item_id, uri, y, a, g, names, split ...)
    images/...             the images the tables and exports name by file (``Release.images``)
    extra files            exports a builder adds (e.g. SubpopBench metadata.csv)

The folder is written beside the old one and switched in whole (``curate.folders.replaced``), so a
rebuild never leaves an old table behind and a crash leaves the previous release intact.

A release's tables and images may be polars frames or lazy frames: a builder of large releases
(``groups``) writes its rows to a ``curate.spill.Spill`` the release owns and hands on lazy scans of
it, and ``build`` writes the folder from those a batch at a time, so memory does not grow with the
release.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from curate import spill
from curate.folders import replaced
from curate.records import Run
from curate.registry import Registry
from curate.spill import Spill, Table, batches, item_chunks, row_count
from curate.workspace import Workspace


class BuildError(ValueError):
    """A release cannot be built as asked (too few items in a group, no labels for an attribute ...)."""


def image_name(stem: str, uri: str, folder: str = "images") -> str:
    """The release-relative file name of an item's image: its bytes keep their own extension.

    >>> image_name("000001", "blob:ab/abcd.jpg"), image_name("x", "file:///data/cat/1.PNG", "logos")
    ('images/000001.jpg', 'logos/x.PNG')
    """
    return f"{folder}/{stem}{Path(uri).suffix}"


def image_names(stems: pl.Expr, uris: pl.Expr, folder: str = "images") -> pl.Expr:
    """``image_name`` of whole columns, in polars (a million names without a Python call each):
    the suffix is what ``pathlib`` gives, the last dot of the last path component and what follows,
    where something comes before it and after it.

    >>> pl.DataFrame({"s": ["000001", "x"], "u": ["blob:ab/abcd.jpg", "file:///d/.hidden"]}).select(
    ...     image_names(pl.col("s"), pl.col("u")))["s"].to_list()
    ['images/000001.jpg', 'images/x']
    """
    name = uris.str.replace(r"(/\.?)+$", "").str.extract(r"([^/]*)$")
    suffix = name.str.extract(r"(?s)^.+(\.[^.]+)$").fill_null("")
    return pl.format(f"{folder}/{{}}{{}}", stems, suffix)


IMAGES_SCHEMA = {"name": pl.String, "uri": pl.String}


@dataclass
class Release:
    """Split -> rows (a frame, or a lazy frame), metadata for the card, extra files (name -> writer
    of that file), the images the release names by file (a table of ``name``, release-relative, and
    ``uri``, the item's; ``build`` copies them), the classes it is about when those are not its
    images' own labels (a spurious-only set is about the class its images are made to be mistaken
    for), and the spill its lazy tables read, if any (removed when the builder fails, else kept until
    ``release.spill.close()`` or the end of the process: a release's lazy tables may be read long
    after it was built).

    >>> release = Release("demo", {"test": pl.DataFrame({"item_id": ["a", "b"]})},
    ...                   images=pl.DataFrame({"name": ["images/a.png"], "uri": ["file:///a.png"]}))
    >>> release.counts()
    {'test': 2}
    """

    builder: str
    tables: Mapping[str, Table]
    metadata: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, Callable[[Path], object]] = field(default_factory=dict)
    images: Table = field(default_factory=lambda: pl.DataFrame(schema=IMAGES_SCHEMA))
    classes: list[str] | None = None
    spill: Spill | None = None

    def counts(self) -> dict[str, int]:
        """Rows per split."""
        return {split: row_count(table) for split, table in self.tables.items()}


class Builder(ABC):
    """A registered way of building a release. Subclasses are dataclasses of their options."""

    name: ClassVar[str]

    def options(self) -> dict[str, Any]:
        """The options, JSON-ready, recorded in the run config and the release."""
        # ignored below (arg-type): every registered builder is a dataclass
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def defining_attributes(self) -> list[str] | None:
        """The verdict attributes whose answers make this release's labels (None: every attribute;
        []: no verdict fed it): the rounds on them fed the release, and their agreement goes on the card."""
        return None

    @abstractmethod
    def build(self, workspace: Workspace) -> Release:
        """Make the release tables from the workspace."""


BUILDERS: Registry[type[Builder]] = Registry("builder", BuildError, attribute="name")
register_builder = BUILDERS.register


def make_builder(name: str, **options: Any) -> Builder:
    """Build a registered builder from its options; unknown options are a clear error."""
    return BUILDERS.create(name, **options)


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


def _fed_by(workspace: Workspace, builder: Builder, release: Release) -> dict[str, Any]:
    """What this release was made from: its classes (its items' own unless it names them), the
    rounds whose verdicts judged them (of the builder's ``verdict_round`` and ``attribute`` when it
    has them), the proposal runs that
    stored evidence on them, the attributes that define its labels, and the analysis pictures of
    those classes (workspace-relative). Read a batch of the workspace's items at a time: each batch
    takes the release's ids in its range of item ids."""
    from curate.analyze import pictures_of

    named = [table.lazy().select(pl.col("item_id").cast(pl.String)) for table in release.tables.values()
             if "item_id" in table.collect_schema()]
    ids = pl.concat(named).drop_nulls() if named else pl.LazyFrame(schema={"item_id": pl.String})
    attributes = builder.defining_attributes()
    judged = pl.DataFrame([(v.item_id, v.attribute, v.round) for v in
                           workspace.catalog.verdicts(getattr(builder, "verdict_round", None))],
                          schema={"item_id": pl.String, "attribute": pl.String, "round": pl.String}, orient="row")
    if attributes is not None:
        judged = judged.filter(pl.col("attribute").is_in(attributes))
    labels: set[str] = set()
    rounds: set[str] = set()
    runs: set[str] = set()
    low: str | None = None  # the release's ids above the last batch's are taken with the next batch
    pending = item_chunks(workspace, ["label"])
    batch = next(pending, None)
    while True:
        following = next(pending, None)
        high = batch["item_id"][-1] if batch is not None and following is not None else None
        above = ids.filter(pl.lit(True) if low is None else pl.col("item_id") > low)
        mine = above.filter(pl.lit(True) if high is None else pl.col("item_id") <= high).unique().collect()
        if mine.height:
            if batch is not None:
                labels.update(batch.join(mine, on="item_id", how="semi")["label"].drop_nulls().to_list())
            rounds.update(judged.join(mine, on="item_id", how="semi")["round"].to_list())
            runs |= workspace.catalog.evidence_runs(mine["item_id"])
        if following is None:
            break
        batch, low = following, high
    classes = sorted(release.classes if release.classes is not None else labels)
    proposal_runs = {run.run_id for run in workspace.runs.list("propose")}
    pictures = [str(p.relative_to(workspace.root)) for p in pictures_of(workspace, set(classes))]
    return {"classes": classes, "rounds": sorted(rounds), "attributes": attributes or [],
            "proposal_runs": sorted(runs & proposal_runs), "pictures": pictures}


def _write_images(workspace: Workspace, images: Table, folder: Path) -> None:
    """Copy the images a release names (``name, uri``) into its (new, empty) folder, a batch at a time."""
    made: set[str] = set()
    for batch in batches(images, 4096):
        for name, uri in batch.select("name", "uri").iter_rows():
            relative = os.path.normpath(name)
            if os.path.isabs(relative) or relative.split(os.sep)[0] == "..":
                raise BuildError(f"the release names a file outside its folder: {name!r}")
            parent = os.path.dirname(relative)
            if parent not in made:
                (folder / parent).mkdir(parents=True, exist_ok=True)
                made.add(parent)
            shutil.copyfile(workspace.resolve_uri(uri), folder / relative)


def build(workspace: Workspace, builder: Builder, out: str | Path) -> BuildResult:
    """Run a builder as a recorded ``build`` run and write its release folder to ``out`` (a new
    folder switched in whole: nothing of an earlier release in ``out`` survives)."""
    started = time.perf_counter()
    target = Path(out)
    if target.exists() and (not target.is_dir() or (any(target.iterdir())
                                                     and not (target / "release.json").is_file())):
        raise BuildError(f"{target} exists and is not a release folder (no release.json); "
                         "choose a new or empty folder")
    config = {"builder": builder.name, "options": builder.options(), "out": str(target.resolve())}
    with workspace.runs.track("build", builder.name, config, extend_completed=True) as run:
        release = builder.build(workspace)
        manifest = {"builder": builder.name, "options": builder.options(), "run_id": run.run_id,
                    "counts": release.counts(), "fed_by": _fed_by(workspace, builder, release), **release.metadata}
        with replaced(target) as folder:
            (folder / "data").mkdir()
            for split, table in release.tables.items():  # streamed: a lazy table is never held whole
                table.lazy().sink_parquet(folder / "data" / f"{split}.parquet", row_group_size=spill.READ_ROWS)
            _write_images(workspace, release.images, folder)
            for name, writer in release.extra_files.items():
                writer(folder / name)
            (folder / "release.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        workspace.runs.set_counts(run.run_id, {f"rows_{k}": v for k, v in release.counts().items()})
    return BuildResult(target, release, workspace.runs.get(run.run_id), time.perf_counter() - started)
