"""The front door for notebooks: one object for a workspace and the whole road as its methods.

``curate.open`` / ``curate.init`` return a :class:`Project`; every method is one call into the stage
it names (the same calls the CLI makes), and tables come back as polars frames.

>>> import tempfile, curate
>>> project = curate.init(tempfile.mkdtemp(), progress=False)
>>> project.items().height, list(project.verdicts().columns)[:3]
(0, ['item_id', 'attribute', 'annotator'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl

from curate.progress import progress_bars
from curate.workspace import Workspace

if TYPE_CHECKING:
    import datasets

    from curate.analyze import AnalyzeResult, GapResult
    from curate.builders import BuildResult
    from curate.evaluate import EvaluateResult
    from curate.export import FiftyOneExport
    from curate.ingest import IngestResult
    from curate.propose import ProposeResult
    from curate.publish import PublishResult

T = TypeVar("T")


class Project:
    """A workspace with the road as methods: ``ingest``, ``propose``, ``analyze``, ``gap``, ``build``,
    ``release`` (a built release as a ``datasets.DatasetDict``), ``publish``, ``evaluate``; ``items``,
    ``evidence`` and ``verdicts`` as polars frames.
    ``progress=False`` turns every progress bar off."""

    def __init__(self, workspace: Workspace, progress: bool = True) -> None:
        self.workspace = workspace
        self.progress = progress

    def __repr__(self) -> str:
        return f"curate.Project({str(self.workspace.root)!r})"

    def _quietly(self, call: Callable[[], T]) -> T:
        with progress_bars(self.progress):
            return call()

    # the road --------------------------------------------------------------------------------------
    def ingest(self, kind: str, location: str | Path, *, max_pixels: int | None = None, copy: bool = False,
               license: str | None = None, **options: Any) -> IngestResult:
        """Ingest a ``folder``, ``manifest``, ``hf`` or ``groups`` source; ``options`` are the source's."""
        from curate.ingest import IngestOptions, ingest, make_source

        common = IngestOptions(copy=copy, license=license)
        if max_pixels is not None:
            common = dataclasses.replace(common, max_pixels=max_pixels)
        source = make_source(kind, location, **options)
        return self._quietly(lambda: ingest(self.workspace, source, common, progress=self.progress))

    def propose(self, name: str, classes: Iterable[str] | None = None, **options: Any) -> ProposeResult:
        """Run a registered proposer (``priors``, ``llm-cues``, ``clip``, ``detector`` ...)."""
        from curate.propose import make_proposer, propose

        proposer = make_proposer(name, **options)
        return self._quietly(lambda: propose(self.workspace, proposer, classes, progress=self.progress))

    def analyze(self, **options: Any) -> AnalyzeResult:
        """Cue statistics, pictures and their run (``curate.analyze.analyze_cues``)."""
        from curate.analyze import analyze_cues

        return self._quietly(lambda: analyze_cues(self.workspace, **options))

    def gap(self, kind: str, options: Mapping[str, object] | None = None, **arguments: Any) -> GapResult:
        """The spurious gap of a model under test (``table``, ``clip`` or ``vlm``) and its ``gap`` run."""
        from curate.analyze import measure_gaps

        return self._quietly(lambda: measure_gaps(self.workspace, kind, options, **arguments))

    def build(self, name: str, out: str | Path, **options: Any) -> BuildResult:
        """Build a release folder with a registered builder (``groups``, ``mmspubench`` ...)."""
        from curate.builders import build, make_builder

        builder = make_builder(name, **options)
        return self._quietly(lambda: build(self.workspace, builder, out))

    def publish(self, release: str | Path, to: str, **options: Any) -> PublishResult:
        """Publish a release folder to ``folder:PATH`` or ``hub:ORG/NAME``."""
        from curate.publish import publish

        return self._quietly(lambda: publish(self.workspace, release, to, **options))

    def release(self, path: str | Path) -> datasets.DatasetDict:
        """A release folder (from ``build``) as a ``datasets.DatasetDict`` with the features publishing
        gives it: images decode to PIL, labels are ``ClassLabel``s."""
        from curate.publish.folder import release_datasets

        return self._quietly(lambda: release_datasets(self.workspace, Path(path)))

    def evaluate(self, kind: str, predictions: str | Path | pl.DataFrame, **options: Any) -> EvaluateResult:
        """Score predictions (a table file or a DataFrame) with a registered evaluator."""
        from curate.evaluate import evaluate

        return self._quietly(lambda: evaluate(self.workspace, kind, predictions, **options))

    def export_fiftyone(self, out: str | Path, *, label: str | None = None, release: str | Path | None = None,
                        rounds: str | None = None) -> FiftyOneExport:
        """Write a FiftyOne dataset folder of the items (of ``label``, or of ``release`` with their splits),
        their evidence and verdicts; open it with ``curate.export.load_fiftyone`` or ``fo.Dataset.from_dir``."""
        from curate.export import export_fiftyone

        return export_fiftyone(self.workspace, out, label=label, release=release, rounds=rounds)

    # what the workspace holds ------------------------------------------------------------------------
    def items(self, label: str | None = None, source_id: str | None = None) -> pl.DataFrame:
        """Items (one row each: id, where the bytes are, label, size, licence, metadata as JSON)."""
        return _frame(self.workspace.catalog.items(label=label, source_id=source_id), _ITEM_SCHEMA)

    def evidence(self, source: str | None = None, run_id: str | None = None, item_id: str | None = None
                 ) -> pl.DataFrame:
        """Machine evidence, filtered by proposer, run or item (``extra`` as JSON text)."""
        return self.workspace.catalog.evidence_scan(item_id=item_id, source=source, run_id=run_id).sort(
            "item_id", "attribute", "source", "run_id").collect()

    def verdicts(self, rounds: str | None = None, raw: bool = False) -> pl.DataFrame:
        """One decision per unit (consensus, or an adjudication) of ``rounds`` (comma-separated; None:
        all); ``raw`` gives every person's answer instead."""
        from curate.verdicts import listed_verdicts, verdict_frame

        return verdict_frame(listed_verdicts(self.workspace, rounds, raw))


_ITEM_SCHEMA = {"item_id": pl.String, "uri": pl.String, "label": pl.String, "width": pl.Int64, "height": pl.Int64,
                "mode": pl.String, "format": pl.String, "size_bytes": pl.Int64, "orientation": pl.Int64,
                "n_frames": pl.Int64, "license": pl.String, "metadata": pl.String}
def _frame(records: Iterable[Any], schema: dict[str, Any]) -> pl.DataFrame:
    import json

    rows = []
    for record in records:
        row = dataclasses.asdict(record)
        rows.append({name: json.dumps(row[name], sort_keys=True) if name in ("metadata", "extra")
                     else (str(row[name]) if name == "role" else row[name]) for name in schema})
    return pl.DataFrame(rows, schema=schema)


def open(path: str | Path, progress: bool = True) -> Project:  # noqa: A001 - curate.open, like fo.load_dataset
    """Open an existing workspace (``curate init`` made it); ``progress`` covers its upgrade too."""
    with progress_bars(progress):
        return Project(Workspace.open(path), progress)


def init(path: str | Path, progress: bool = True) -> Project:
    """Create a workspace (or open the one already there)."""
    return Project(Workspace.init(path), progress)
