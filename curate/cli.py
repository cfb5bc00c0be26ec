"""The ``curate`` command line: a thin typer layer, one call into the Python API per command.

Every command prints a one-line summary last. The workspace is ``--workspace`` / ``-w``, the
``CURATE_WORKSPACE`` variable, or the current folder.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import polars as pl
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from curate.analyze import analyze_cues, measure_gaps
from curate.analyze.report import build_report
from curate.builders import BuildError, build, make_builder
from curate.evaluate import EvaluateError, evaluate
from curate.images import DEFAULT_MAX_PIXELS
from curate.ingest import IngestOptions, SourceError, ingest, make_source
from curate.ingest.download import DEFAULT_DEADLINE_S, DEFAULT_MAX_BYTES
from curate.options import parse_pairs
from curate.secrets import scrub
from curate.taxonomy import OffTaxonomyError
from curate.workspace import RunNotFoundError, SchemaTooNewError, Workspace, WorkspaceFault
from curate.workspace.faults import DiskFullError, is_disk_full

if TYPE_CHECKING:
    from annotation.server import Connection, Login

app = typer.Typer(help="Build, verify and publish benchmarks of spurious correlations.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
ingest_app = typer.Typer(help="Bring images into the workspace from a folder, manifest, dataset, group table, shards.",
                         no_args_is_help=True)
annotate_app = typer.Typer(help="Human verification rounds in a real Label Studio server.", no_args_is_help=True)
runs_app = typer.Typer(help="List stored runs, or show one with `curate runs show ID`.")
app.add_typer(ingest_app, name="ingest")
app.add_typer(runs_app, name="runs")
app.add_typer(annotate_app, name="annotate")

out = Console()
err = Console(stderr=True)
# Expected failures, printed as one line. Modules that pull in torch or the Label Studio SDK are
# imported inside the commands that need them (the CLI starts in about a second); their errors are
# looked up only if those modules were loaded, since only then can they have been raised.
USER_ERRORS: tuple[type[BaseException], ...] = (SourceError, RunNotFoundError, SchemaTooNewError, OffTaxonomyError,
                                                EvaluateError, BuildError, FileNotFoundError, KeyError, ValueError,
                                                WorkspaceFault)
LAZY_ERRORS = (("curate.propose.base", "ProposeError"), ("curate.models.registry", "UnknownModelError"),
               ("curate.publish", "PublishError"), ("annotation.rounds", "BridgeError"),
               ("annotation.server", "ServerError"), ("curate.models.llm", "LLMConfigError"))


def _user_error_types() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[module], name) for module, name in LAZY_ERRORS if module in sys.modules]
    return (*USER_ERRORS, *loaded)


WorkspaceOption = Annotated[Path, typer.Option("--workspace", "-w", envvar="CURATE_WORKSPACE",
                                               help="Workspace folder.")]
LicenseOption = Annotated[str | None, typer.Option(help="Licence of the images (when rows name none).")]
MaxPixelsOption = Annotated[int, typer.Option(help="Refuse images with more pixels (decompression bombs).")]
CopyOption = Annotated[bool, typer.Option("--copy", help="Also copy local image bytes into the workspace.")]
WorkersOption = Annotated[int, typer.Option(help="Threads reading and decoding images.")]
BatchOption = Annotated[int, typer.Option(help="Entries stored per transaction (a killed run resumes "
                                               "after the last whole batch).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn expected failures into one clear line and exit code 2, not a traceback."""
    try:
        yield
    except Exception as error:
        if isinstance(error, OSError) and is_disk_full(error):  # a full disk outside the workspace's own files
            error = DiskFullError(Path(error.filename) if error.filename else None)
        elif not isinstance(error, _user_error_types()):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        err.print(Text.assemble(("error: ", "red"), scrub(str(message))), soft_wrap=True)
        raise typer.Exit(2) from error


def _summary(line: str) -> None:
    out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def init(path: Annotated[Path, typer.Argument(help="Folder to create the workspace in.")]) -> None:
    """Create a workspace (SQLite catalogue in WAL mode, blob store, side tables, cache)."""
    with _user_errors():
        workspace = Workspace.init(path)
    _summary(f"workspace ready at {workspace.root} (schema v{workspace.schema_version})")


def _run_ingest(workspace: Path, kind: str, location: Any, source_options: dict[str, Any],
                common: dict[str, Any]) -> None:
    quiet = common.pop("quiet")
    with _user_errors():
        source = make_source(kind, location, **source_options)
        options = IngestOptions(**common)
        result = ingest(Workspace.open(workspace), source, options, progress=not quiet)
    _summary(result.summary())


def _common(arguments: dict[str, Any]) -> dict[str, Any]:
    """The options every ingest command shares, picked from its arguments."""
    names = ("license", "max_pixels", "copy", "workers", "batch_size", "quiet")
    return {name: arguments[name] for name in names if name in arguments}


@ingest_app.command("folder")
def ingest_folder(
    path: Annotated[Path, typer.Argument(help="Folder with one subfolder per class.")],
    workspace: WorkspaceOption = Path("."), license: LicenseOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS, copy: CopyOption = False, workers: WorkersOption = 2,
    batch_size: BatchOption = 256, quiet: QuietOption = False,
) -> None:
    """Ingest an image folder: the first subfolder under PATH is the class label."""
    _run_ingest(workspace, "folder", path, {}, _common(locals()))


PathMapOption = Annotated[list[str] | None, typer.Option(
    "--path-map", help="OLD_PREFIX=NEW_PREFIX: rewrite paths written on another machine (repeatable; the "
                       "result must still lie under the root).")]


@ingest_app.command("manifest")
def ingest_manifest(
    path: Annotated[Path, typer.Argument(help="CSV, TSV, parquet or JSON-lines manifest.")],
    path_column: Annotated[str, typer.Option(help="Column with the image path or http(s) URL.")] = "path",
    label_column: Annotated[str | None, typer.Option(help="Column with the class label.")] = "label",
    split_column: Annotated[str | None, typer.Option(help="Column with the split, if any.")] = None,
    license_column: Annotated[str | None, typer.Option(help="Column with a per-row licence.")] = None,
    metadata_column: Annotated[list[str] | None, typer.Option(
        help="Keep only these columns as metadata (repeatable; default: all other columns).")] = None,
    root: Annotated[Path | None, typer.Option(help="Folder relative paths start from (default: the "
                                                    "manifest's folder).")] = None,
    allow_absolute: Annotated[bool, typer.Option("--allow-absolute", help="Accept absolute paths and "
                                                 "paths that leave the root.")] = False,
    path_map: PathMapOption = None,
    download_deadline: Annotated[float, typer.Option(
        help="Seconds a URL download may take in all.")] = DEFAULT_DEADLINE_S,
    download_max_bytes: Annotated[int, typer.Option(help="Bytes a URL download may bring.")] = DEFAULT_MAX_BYTES,
    workspace: WorkspaceOption = Path("."), license: LicenseOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS, copy: CopyOption = False, workers: WorkersOption = 2,
    batch_size: BatchOption = 256, quiet: QuietOption = False,
) -> None:
    """Ingest a manifest table: one row per image, with a path or URL and a label."""
    options = {"path_column": path_column, "label_column": label_column, "split_column": split_column,
               "license_column": license_column, "root": root, "allow_absolute": allow_absolute,
               "path_map": tuple(path_map or ()),
               "metadata_columns": tuple(metadata_column) if metadata_column else None,
               "download_deadline_s": download_deadline, "download_max_bytes": download_max_bytes}
    _run_ingest(workspace, "manifest", path, options, _common(locals()))


@ingest_app.command("hf")
def ingest_hf(
    name: Annotated[str, typer.Argument(help="Folder saved with save_to_disk, a local dataset repo, or a hub id.")],
    image_column: Annotated[str, typer.Option(help="Column holding the images.")] = "image",
    label_column: Annotated[str | None, typer.Option(help="Column holding the labels.")] = "label",
    split: Annotated[list[str] | None, typer.Option(help="Only these splits (repeatable).")] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).")] = None,
    workspace: WorkspaceOption = Path("."), license: LicenseOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS, workers: WorkersOption = 2, batch_size: BatchOption = 256,
    quiet: QuietOption = False,
) -> None:
    """Ingest a Hugging Face dataset with image and label columns (bytes go into the workspace)."""
    options = {"image_column": image_column, "label_column": label_column, "revision": revision,
               "splits": tuple(split) if split else None}
    _run_ingest(workspace, "hf", name, options, _common(locals()))


def _names(value: str | None) -> tuple[str, ...] | None:
    return tuple(part.strip() for part in value.split(",")) if value else None


@ingest_app.command("groups")
def ingest_groups(
    path: Annotated[Path, typer.Argument(help="Group table (id, filename, split, y, a), e.g. metadata.csv.")],
    images: Annotated[Path | None, typer.Option(help="Folder the filenames start from (default: the "
                                                     "table's folder).")] = None,
    id_column: Annotated[str, typer.Option(help="Row id column.")] = "id",
    filename_column: Annotated[str, typer.Option(help="Image path column.")] = "filename",
    split_column: Annotated[str, typer.Option(help="Split column.")] = "split",
    y_column: Annotated[str, typer.Option(help="Class code column.")] = "y",
    a_column: Annotated[str, typer.Option(help="Spurious attribute code column.")] = "a",
    y_names: Annotated[str | None, typer.Option(help="Class names by code, comma-separated.")] = None,
    a_names: Annotated[str | None, typer.Option(help="Attribute names by code, comma-separated.")] = None,
    split_names: Annotated[str, typer.Option(help="Split names by code, comma-separated.")] = "train,val,test",
    path_map: PathMapOption = None,
    workspace: WorkspaceOption = Path("."), license: LicenseOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS, copy: CopyOption = False, workers: WorkersOption = 2,
    batch_size: BatchOption = 256, quiet: QuietOption = False,
) -> None:
    """Ingest a Waterbirds / SubpopBench-style group table, kept whole for later builders."""
    options = {"images": images, "id_column": id_column, "filename_column": filename_column,
               "split_column": split_column, "y_column": y_column, "a_column": a_column,
               "y_names": _names(y_names), "a_names": _names(a_names), "split_names": _names(split_names),
               "path_map": tuple(path_map or ())}
    _run_ingest(workspace, "groups", path, options, _common(locals()))


@ingest_app.command("webdataset")
def ingest_webdataset(
    shards: Annotated[str, typer.Argument(help="A tar shard, a folder of shards, or a brace pattern such as "
                                               "'shards/{00000..00099}.tar' (quote it).")],
    label_field: Annotated[str | None, typer.Option(help="Take the label from this field of each .json "
                                                         "member instead of the .cls member.")] = None,
    class_names: Annotated[str | None, typer.Option(help="Class names by .cls index, comma-separated.")] = None,
    workspace: WorkspaceOption = Path("."), license: LicenseOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS, workers: WorkersOption = 2, batch_size: BatchOption = 256,
    quiet: QuietOption = False,
) -> None:
    """Ingest WebDataset tar shards as img2dataset writes them (image + .json / .txt / .cls per sample)."""
    options = {"label_field": label_field, "class_names": _names(class_names)}
    _run_ingest(workspace, "webdataset", shards, options, _common(locals()))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A table of ``rows``; a first-column cell wider than the terminal folds onto more lines, and
    the other columns keep the width of their values (up to 24 characters), so a long key never
    squeezes a value out of sight."""
    cells = [[str(value) for value in row] for row in rows]
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        widest = max([len(column), *(len(row[index]) for row in cells)])
        table.add_column(column, overflow="fold", min_width=None if index == 0 else min(widest, 24))
    for row in cells:
        table.add_row(*row)
    return table


@app.command(name="propose")
def propose_command(
    name: Annotated[str | None, typer.Argument(help="The proposer (same as --proposer).")] = None,
    proposer: Annotated[str | None, typer.Option("--proposer", "-p", help=(
        "priors, llm-cues, vlm-attributes, clip, detector, clip+detector or errors."))] = None,
    classes: Annotated[str | None, typer.Option(help="Only these classes, comma-separated.")] = None,
    model: Annotated[str | None, typer.Option(help="Registered model name (see `curate models`).")] = None,
    weights: Annotated[str | None, typer.Option(help="Weights: file, local-dir:, hf-hub:, tag or 'random'.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any proposer option as key=value "
                                                   "(repeatable), e.g. --set conf=0.1.")] = None,
    predictions: Annotated[Path | None, typer.Option(help="errors: the model's predictions (item_id, pred).")] = None,
    method: Annotated[str | None, typer.Option(help="errors: b2t, ladder or domino.")] = None,
    executor: Annotated[str | None, typer.Option(help="Where image-level proposers run: local or ray.")] = None,
    address: Annotated[str | None, typer.Option(help="With --executor ray: the cluster head's host:port "
                                                "(else a local Ray instance).")] = None,
    workspace: WorkspaceOption = Path("."), quiet: QuietOption = False,
) -> None:
    """Propose cues (per class) or evidence (per item) with a registered proposer; re-running adds only
    what is missing."""
    from curate.propose import ProposeError, make_proposer, propose

    with _user_errors():
        proposer = proposer or name
        if proposer is None or (name is not None and name != proposer):
            raise ProposeError("name one proposer, as an argument or with --proposer")
        options: dict[str, Any] = parse_pairs(set_ or [])
        options |= {k: v for k, v in (("model", model), ("weights", weights), ("method", method),
                                      ("predictions", predictions and str(predictions)), ("executor", executor),
                                      ("address", address)) if v is not None}
        chosen = [c.strip() for c in classes.split(",")] if classes else None
        result = propose(Workspace.open(workspace), make_proposer(proposer, **options), chosen, progress=not quiet)
    _summary(result.summary())


UrlOption = Annotated[str | None, typer.Option(help="URL of another Label Studio (token in $LABEL_STUDIO_API_KEY).")]
RoundName = Annotated[str, typer.Argument(help="The round's name, e.g. round-1.")]
SourceOption = Annotated[str, typer.Option(help="Verify evidence of this proposer.")]
EvidenceRunOption = Annotated[str | None, typer.Option("--run", help="Only evidence of this propose run.")]
BudgetOption = Annotated[int, typer.Option(help="At most this many items (gold tasks come on top).")]
ThresholdOption = Annotated[float, typer.Option(help="Decision threshold: scores nearest it go first.")]


def _connection(workspace: Workspace, url: str | None) -> Connection:
    """The workspace's own server, or the one at ``url`` (token in $LABEL_STUDIO_API_KEY)."""
    from annotation.server import Connection, connection

    return Connection.from_url(url) if url else connection(workspace.root)


def _show_login(what: str, login: Login, where: Path) -> None:
    out.print(f"{what}: {login.email}\n  password: {login.password}\n  token: {login.token}\n"
              f"(shown once; kept in {where}, readable only by you)", soft_wrap=True, markup=False, highlight=False)


@annotate_app.command("serve")
def annotate_serve(workspace: WorkspaceOption = Path("."),
                   port: Annotated[int | None, typer.Option(help="Port (default: the workspace's, else a free "
                                                                  "one; kept for later starts).")] = None) -> None:
    """Start the workspace's Label Studio on 127.0.0.1 (installed in its own venv by `make test` or
    `python tools/label_studio.py install`), or report the one already running."""
    from annotation import server as label_studio

    with _user_errors():
        served = label_studio.serve(workspace, port=port)
    if served.admin is not None:
        _show_login("admin login", served.admin, served.process.data_dir / label_studio.LOGINS_FILE)
    state = "started" if served.started else "already running"
    _summary(f"Label Studio for {served.process.data_dir.parent} {state} at {served.connection.url} "
             f"(pid {served.process.pid}); stop with `curate annotate stop -w {workspace}`")


@annotate_app.command("stop")
def annotate_stop(workspace: WorkspaceOption = Path(".")) -> None:
    """Stop the workspace's Label Studio."""
    from annotation import server as label_studio

    with _user_errors():
        stopped = label_studio.stop(workspace)
    _summary("Label Studio stopped" if stopped else f"no Label Studio was running for {workspace}")


@annotate_app.command("add-annotator")
def annotate_add_annotator(email: Annotated[str, typer.Argument(help="The annotator's e-mail (their login).")],
                           workspace: WorkspaceOption = Path(".")) -> None:
    """Add an annotator to the workspace's Label Studio with a random password and token."""
    from annotation import server as label_studio

    with _user_errors():
        login = label_studio.add_annotator(workspace, email)
    _show_login("annotator login", login, label_studio.server_folder(workspace) / label_studio.LOGINS_FILE)
    _summary(f"annotator {email} added")


def _round_call(action: Callable[..., Any], spec: Any, url: str | None, workspace: Path) -> Any:
    with _user_errors():
        opened = Workspace.open(workspace)
        return action(opened, _connection(opened, url), spec(opened) if callable(spec) else spec)


@annotate_app.command("push")
def annotate_push(
    name: RoundName, source: SourceOption = "detector", run: EvidenceRunOption = None,
    budget: BudgetOption = 1000, threshold: ThresholdOption = 0.05,
    max_attributes: Annotated[int, typer.Option(help="Attributes per task, highest scores first.")] = 10,
    overlap: Annotated[float, typer.Option(help="Share of tasks for several annotators.")] = 0.0,
    overlap_k: Annotated[int, typer.Option(help="Annotators per overlap task.")] = 2,
    gold_round: Annotated[str | None, typer.Option(help="Earlier round whose consensus gives gold tasks.")] = None,
    gold_count: Annotated[int, typer.Option(help="Gold tasks to mix in (pre-filled wrongly).")] = 0,
    adjudicate: Annotated[str | None, typer.Option(help="Decide the units this earlier round left open: only "
                                                        "the disputed attributes, with the votes so far.")] = None,
    kind: Annotated[str, typer.Option(help="attributes (every attribute of an image), boxes (the boxes of "
                                           "one cue), component (neural-PCA components), or mcq, setting, logo, "
                                           "spurious-only (with --units).")] = "attributes",
    units: Annotated[Path | None, typer.Option(help="Units table for mcq / setting / logo rounds.")] = None,
    chunk_size: Annotated[int, typer.Option(help="Tasks per request.")] = 500,
    url: UrlOption = None, workspace: WorkspaceOption = Path("."),
) -> None:
    """Send items to verify as tasks (uncertain first, classes in turn); pushing again adds only new ones."""

    from annotation import rounds

    def spec(opened: Workspace) -> rounds.RoundSpec:
        return rounds.RoundSpec(name, source, run, budget, threshold, max_attributes, overlap, overlap_k, gold_round,
                                gold_count, adjudicate, kind, str(units.resolve()) if units else None)

    report = _round_call(functools.partial(rounds.push, chunk_size=chunk_size), spec, url, workspace)
    _summary(f"round {name}: {report.counts['tasks_pushed']} tasks pushed ({report.counts['gold_tasks']} gold, "
             f"{report.counts['shared_tasks']} for several people), {report.counts['already_there']} already there "
             f"(project {report.project_id}) [run {report.run_id}]")


@annotate_app.command("pull")
def annotate_pull(name: RoundName, url: UrlOption = None,
                  workspace: WorkspaceOption = Path(".")) -> None:
    """Read the round's annotations back as verdicts (deleted annotations are deleted here too), with
    agreement and gold accuracy."""
    from annotation import rounds

    report = _round_call(rounds.pull, lambda opened: rounds.stored_spec(opened, name), url, workspace)
    alpha = report.agreement["krippendorff_alpha"]
    _summary(f"round {name}: {report.counts['verdicts']} verdicts from {report.counts['annotated_tasks']} tasks, "
             f"{report.counts['rejected_annotations']} annotations rejected; Krippendorff's alpha "
             f"{'n/a' if alpha != alpha else f'{alpha:.3f}'}, {int(report.agreement['to_adjudicate'])} to adjudicate")


@annotate_app.command("status")
def annotate_status(name: RoundName, url: UrlOption = None,
                    workspace: WorkspaceOption = Path(".")) -> None:
    """Progress of a round (tasks finished for the people they wait for, annotations, gold and shared
    tasks) and its pulled verdicts' figures: agreement, gold accuracy per annotator, rejections."""
    from annotation import rounds

    figures = _round_call(rounds.status, lambda opened: rounds.stored_spec(opened, name), url, workspace)
    out.print(_table(f"round {name}", ["figure", "value"], [[k, _fmt(v)] for k, v in figures.items()]))
    _summary(f"round {name}: {int(figures['finished_tasks'])} of {int(figures['tasks'])} tasks finished, "
             f"{int(figures['to_adjudicate'])} to adjudicate")


@annotate_app.command("simulate")
def annotate_simulate(
    name: RoundName,
    annotators: Annotated[int, typer.Option(help="Simulated people (sim-<n>@simulated.curate.invalid).")] = 3,
    error_rate: Annotated[float, typer.Option(help="Chance that a person changes a pre-filled answer.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of their mistakes.")] = 0,
    workspace: WorkspaceOption = Path("."), quiet: QuietOption = False,
) -> None:
    """Answer an attribute round as simulated annotators through the real annotator stream (demos and
    tests only: their verdicts are flagged simulated, and cards say so)."""
    from annotation import rounds
    from annotation.simulate import simulate, simulated_people

    with _user_errors():
        opened = Workspace.open(workspace)
        people = simulated_people(opened.root, annotators)
        report = simulate(opened, _connection(opened, None), rounds.stored_spec(opened, name), people, error_rate,
                          seed, progress=not quiet)
    _summary(f"round {name}: {sum(report.annotations.values())} annotations by {len(report.annotations)} simulated "
             f"annotators, {report.wrong_answers} answers changed on purpose")


@app.command()
def verdicts(
    round_: Annotated[str | None, typer.Option("--round", help="Only these rounds, comma-separated (their "
                                                               "adjudications come with them).")] = None,
    raw: Annotated[bool, typer.Option(help="Every person's answer instead of one decision per unit.")] = False,
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 20,
    export_to: Annotated[Path | None, typer.Option("--out", help="Also write all rows to .parquet or .csv.")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """List the decided verdicts (consensus, or an adjudication) that builds and analysis read."""
    from curate.verdicts import listed_verdicts, verdict_frame

    with _user_errors():
        rows = listed_verdicts(Workspace.open(workspace), round_, raw)
        frame = verdict_frame(rows)
        if export_to is not None:
            (frame.write_csv if export_to.suffix == ".csv" else frame.write_parquet)(export_to)
    out.print(_table("verdicts", ["item", "attribute", "value", "type", "by", "round"],
                     [[v.item_id[:12], v.attribute, v.value, v.taxonomy_type or "-", v.annotator, v.round]
                      for v in rows[:limit]]))
    _summary(f"{len(rows)} {'answers' if raw else 'decided units'}" + (f" (showing {limit})" if len(rows) > limit
                                                                      else "")
             + (f", written to {export_to}" if export_to else ""))


@app.command(name="analyze")
def analyze_command(
    source: Annotated[str, typer.Option(help="Evidence of this proposer (detector, clip ...).")] = "detector",
    run: Annotated[str | None, typer.Option(help="Only evidence of this propose run.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Presence threshold on the score (default: 0.05 for "
                                                         "the detector, 0.5 otherwise).")] = None,
    verdicts: Annotated[bool, typer.Option("--verdicts", help="Use human verdicts instead of evidence.")] = False,
    round_: Annotated[str | None, typer.Option("--round", help="With --verdicts: only this round.")] = None,
    top: Annotated[int, typer.Option(help="Cues shown per class.")] = 3,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Cue statistics per (class, cue): P(cue|class), P(class|cue), lift, PMI, NMI, predictivity, with plots."""
    with _user_errors():
        result = analyze_cues(Workspace.open(workspace), source, run, threshold, round_, verdicts)
    shown = result.stats.filter(pl.col("rank") <= top)
    out.print(_table("top cues per class", ["class", "rank", "cue", "type", "P(cue|class)", "P(class|cue)", "lift"],
                     [[r["class_label"], r["rank"], r["attribute"], r["taxonomy_type"] or "-",
                       _fmt(r["p_cue_given_class"]), _fmt(r["p_class_given_cue"]), _fmt(r["lift"])]
                      for r in shown.iter_rows(named=True)]))
    _summary(result.summary())


@app.command()
def gap(
    kind: Annotated[str, typer.Argument(help="The model under test: table, clip or vlm.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Its options as key=value (repeatable): "
                                                   "path=answers.csv, model=clip-vit-b-32, base_url=...")] = None,
    source: Annotated[str, typer.Option(help="Cue scores from this proposer.")] = "detector",
    run: Annotated[str | None, typer.Option(help="Only evidence of this propose run.")] = None,
    k: Annotated[int, typer.Option(help="Images in the top and bottom groups.")] = 50,
    classes: Annotated[str | None, typer.Option(help="Only these classes, comma-separated.")] = None,
    mask: Annotated[str, typer.Option(help="Black out the class 'object' (SpurLens) or the 'cue'.")] = "object",
    bootstrap: Annotated[int, typer.Option(help="Draws for the score's 95% interval and the random-ordering "
                                                "baseline.")] = 1000,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Spurious gap of a model per (class, cue): natural, masked, their mean with a bootstrap 95% interval,
    and the 95% range of the score under a random ordering."""
    with _user_errors():
        chosen = [c.strip() for c in classes.split(",")] if classes else None
        result = measure_gaps(Workspace.open(workspace), kind, parse_pairs(set_ or []), source,
                              run, k, classes=chosen, mask=mask, bootstrap=bootstrap)
    out.print(_table("spurious gap", ["class", "cue", "natural", "masked", "score", "95% interval", "random 95%"],
                     [[r["class_label"], r["attribute"], _fmt(r["natural_gap"]), _fmt(r["masked_gap"]),
                       _fmt(r["score"]), f"[{_fmt(r['score_low'])}, {_fmt(r['score_high'])}]",
                       f"[{_fmt(r['random_low'])}, {_fmt(r['random_high'])}]"]
                      for r in result.table.iter_rows(named=True)]))
    _summary(result.summary())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@app.command()
def report(
    fmt: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    out_path: Annotated[Path | None, typer.Option("--out", help="Where to write it (default: reports/ in the "
                                                                "workspace).")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Write a report of the workspace: data, runs, cue statistics with plots, evaluations."""
    with _user_errors():
        written = build_report(Workspace.open(workspace), fmt, out_path)
    _summary(f"report written to {written}")


@app.command(name="build")
def build_command(
    builder: Annotated[str, typer.Argument(help="The builder: groups.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Release folder to write.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Builder option as key=value (repeatable), e.g. "
                                                   "--set attribute=water --set train_correlation=0.95.")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Build a release folder (tables per split, exports, release.json) with a registered builder."""
    with _user_errors():
        result = build(Workspace.open(workspace), make_builder(builder, **parse_pairs(set_ or [])), out_dir)
    _summary(result.summary())


@app.command(name="publish")
def publish_command(
    release: Annotated[Path, typer.Argument(help="A release folder written by `curate build`.")],
    to: Annotated[str | None, typer.Option(help="folder:PATH (default: RELEASE-hub beside the release), or "
                                                "hub:ORG/NAME (token in $HF_TOKEN).")] = None,
    license: LicenseOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write and upload nothing; list what would "
                                                             "change.")] = False,
    private: Annotated[bool, typer.Option("--private/--public", help="Visibility of a new Hub repo.")] = True,
    tag: Annotated[str | None, typer.Option(help="Tag the Hub revision (e.g. v1.0).")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Publish a release: parquet shards per config and split, images embedded, README.md card,
    Croissant; to a folder or a Hugging Face Hub dataset repo."""
    from curate.publish import publish

    with _user_errors():
        target = to or f"folder:{release.parent / (release.name + '-hub')}"
        result = publish(Workspace.open(workspace), release, target, license, dry_run, private, tag)
    if dry_run:
        out.print(_table("would change", ["file"], [[name] for name in result.changed]))
    _summary(("dry run: " if dry_run else "") + result.summary())


@app.command(name="evaluate")
def evaluate_command(
    kind: Annotated[str, typer.Argument(help="groups, mcq, focus or spurious-imagenet.")],
    predictions: Annotated[Path, typer.Argument(help="Predictions table (.parquet, .csv, .jsonl).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Evaluator option as key=value (repeatable), "
                                                   "e.g. --set eval_split=val.")] = None,
    metrics_file: Annotated[Path | None, typer.Option("--out", help="Also write the metrics to a JSON file.")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Compute the metrics of a model's predictions on a benchmark (a recorded run)."""
    with _user_errors():
        result = evaluate(Workspace.open(workspace), kind, predictions, **parse_pairs(set_ or []))
    out.print(_table("metrics", ["metric", "value"],
                     [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in result.metrics.items()]))
    if metrics_file is not None:
        metrics_file.write_text(json.dumps(result.metrics, indent=2))
    _summary(result.summary())


@app.command()
def evidence(
    source: Annotated[str | None, typer.Option(help="Only this proposer.")] = None,
    run: Annotated[str | None, typer.Option(help="Only this run.")] = None,
    item: Annotated[str | None, typer.Option(help="Only this item id.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 20,
    export_to: Annotated[Path | None, typer.Option("--out", help="Also export the matching rows to .parquet "
                                                                 "or .csv.")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Query evidence rows by proposer, run or item; show them and optionally export them."""
    with _user_errors():
        opened = Workspace.open(workspace)
        matching = opened.catalog.evidence_scan(item_id=item, source=source, run_id=run)
        total = matching.select(pl.len()).collect().item()
        shown = matching.sort("item_id", "attribute", "source", "run_id").head(limit).collect()
        if export_to is not None:
            opened.export("evidence", export_to, item_id=item, source=source, run_id=run)
    out.print(_table("evidence", ["item", "attribute", "type", "source", "score", "boxes", "model"],
                     [[e["item_id"][:12], e["attribute"], e["taxonomy_type"], e["source"],
                       "" if e["score"] is None else f"{e['score']:.4f}", len(e["boxes"] or []), e["model"]]
                      for e in shown.iter_rows(named=True)]))
    _summary(f"{total} evidence rows" + (f" (showing {limit})" if total > limit else "")
             + (f", exported to {export_to}" if export_to else ""))


@app.command()
def cues(
    class_label: Annotated[str | None, typer.Option("--class", help="Only this class.")] = None,
    source: Annotated[str | None, typer.Option(help="Only this proposer.")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Show the candidate cues per class (from priors or an LLM)."""
    with _user_errors():
        rows = Workspace.open(workspace).catalog.cues(class_label=class_label, source=source)
    out.print(_table("cues", ["class", "cue", "type", "source", "run"],
                     [[c.class_label, c.attribute, c.taxonomy_type, c.source, c.run_id] for c in rows]))
    _summary(f"{len(rows)} cues for {len({c.class_label for c in rows})} classes")


@app.command()
def models(family: Annotated[str | None, typer.Option(help="Only this family.")] = None) -> None:
    """List the registered models and their default weights."""
    from curate.models import get_spec, list_models

    specs = [get_spec(name) for name in list_models(family)]
    out.print(_table("models", ["name", "family", "architecture", "weights", "text encoder"],
                     [[m.name, m.family, m.architecture, m.weights, m.text_encoder or ""] for m in specs]))
    _summary(f"{len(specs)} models")


@app.command()
def status(workspace: WorkspaceOption = Path(".")) -> None:
    """Show counts per class, per source, quarantined, and runs per stage."""
    with _user_errors():
        state = Workspace.open(workspace).status()
    out.print(_table("classes", ["class", "items"], [[k, v] for k, v in state.per_class.items()]))
    out.print(_table("sources", ["source", "kind", "location", "references", "quarantined"],
                     [[s.source.source_id, s.source.kind, s.source.location, s.references, s.quarantined]
                      for s in state.sources]))
    if state.quarantine_reasons:
        out.print(_table("quarantine", ["reason", "entries"], [[k, v] for k, v in state.quarantine_reasons.items()]))
    out.print(_table("stages", ["stage", "runs by status"],
                     [[stage, ", ".join(f"{k} {v}" for k, v in sorted(c.items()))]
                      for stage, c in state.runs_per_stage.items()]))
    _summary(f"{state.items} items in {len(state.per_class)} classes from {len(state.sources)} sources; "
             f"{state.quarantined} quarantined; {state.label_conflicts} with conflicting labels; "
             f"{state.evidence} evidence rows; {state.verdicts} verdicts; {state.cache_entries} cached results")


@runs_app.callback(invoke_without_command=True)
def runs(ctx: typer.Context, stage: Annotated[str | None, typer.Option(help="Only this stage.")] = None,
         workspace: WorkspaceOption = Path(".")) -> None:
    """List runs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    with _user_errors():
        listed = Workspace.open(workspace).runs.list(stage)
    out.print(_table("runs", ["run", "status", "attempts", "counts"],
                     [[r.run_id, r.status.value, r.attempts,
                       ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items()))] for r in listed]))
    _summary(f"{len(listed)} runs")


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix.")],
              workspace: WorkspaceOption = Path(".")) -> None:
    """Show one run: config, code version, models, counts, status."""
    with _user_errors():
        run = Workspace.open(workspace).runs.get(run_id)
    fields = {"run_id": run.run_id, "stage": run.stage, "name": run.name, "status": run.status.value,
              "attempts": run.attempts, "started_at": run.started_at, "finished_at": run.finished_at,
              "code_version": run.code_version, "host": run.host, "pid": run.pid, "error": run.error,
              "config": run.config, "models": run.models, "counts": run.counts}
    out.print_json(json.dumps(fields))
    _summary(f"run {run.run_id}: {run.stage} {run.status.value}")


@app.command()
def quarantine(source: Annotated[str | None, typer.Option(help="Only this source id.")] = None,
               limit: Annotated[int | None, typer.Option(min=0, help="List at most this many.")] = None,
               workspace: WorkspaceOption = Path(".")) -> None:
    """List quarantined entries with their reasons."""
    with _user_errors():
        catalog = Workspace.open(workspace).catalog
        held, total = catalog.quarantined(source, limit), catalog.count_quarantined(source)
    out.print(_table("quarantined", ["source", "locator", "reason", "detail"],
                     [[q.source_id, q.locator, q.reason, q.detail] for q in held]))
    _summary(f"{total} quarantined entries" + (f" (showing {len(held)})" if len(held) < total else ""))


@app.command()
def export(table: Annotated[str, typer.Argument(help="items, evidence, cues, or fiftyone (a workspace view).")],
           target: Annotated[Path, typer.Argument(help="Output .parquet or .csv file (fiftyone: a folder).")],
           source: Annotated[str | None, typer.Option(help="Only rows of this proposer (evidence, cues).")] = None,
           run: Annotated[str | None, typer.Option(help="Only rows of this run (evidence, cues).")] = None,
           label: Annotated[str | None, typer.Option(help="fiftyone: only items of this class.")] = None,
           release: Annotated[Path | None, typer.Option(help="fiftyone: only the items of this release folder, "
                                                              "with their splits.")] = None,
           dataset: Annotated[str | None, typer.Option(help="fiftyone: also load it into a FiftyOne dataset of "
                                                            "this name (needs curate[fiftyone]).")] = None,
           persistent: Annotated[bool, typer.Option(help="fiftyone: keep that dataset after the session.")] = False,
           workspace: WorkspaceOption = Path(".")) -> None:
    """Export a workspace table to parquet or CSV (streamed), or a workspace view to FiftyOne."""
    if table == "fiftyone":
        _export_fiftyone(workspace, target, label, release, dataset, persistent)
        return
    started = time.perf_counter()
    filters = {"source": source, "run_id": run} if table != "items" else {}
    with _user_errors():
        written = Workspace.open(workspace).export(table, target, **filters)
    _summary(f"exported {written} rows of {table} to {target} in {time.perf_counter() - started:.1f}s")


def _export_fiftyone(workspace: Path, target: Path, label: str | None, release: Path | None, dataset: str | None,
                     persistent: bool) -> None:
    from curate.export import export_fiftyone, load_fiftyone

    with _user_errors():
        written = export_fiftyone(Workspace.open(workspace), target, label=label, release=release)
        if dataset is not None:
            load_fiftyone(target, dataset, persistent)
    _summary(written.summary() + (f"; loaded as FiftyOne dataset {dataset!r}" if dataset else ""))
