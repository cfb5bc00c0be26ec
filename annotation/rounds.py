"""Verification rounds: push tasks to Label Studio, pull verdicts back, measure people.

A round is a recorded ``verify`` run named after the round. Its project on the server is named by
the round and the workspace's id (never by the folder's name). Tasks carry the stable ``item_id``
and point at the image through local-files storage (never uploaded bytes); every prediction shares
one model version, so the annotator stream shows pre-fills and gold traps. A task waits for as many
people as its own overlap says: exactly the asked share of tasks (and every gold task) for
``overlap_k`` people, the rest for one.

Pulling reads an export snapshot, checks every annotation against the config and the task's own
attributes, and makes the round's stored verdicts equal to what the server holds (an annotation
deleted there is deleted here). A task nobody annotated never becomes a verdict; answers on gold
tasks measure people and decide nothing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from label_studio_sdk import LabelStudio

from annotation import transport
from annotation.configs import CONFIGS, ConfigError, checked
from annotation.files import storage_path
from annotation.server import Connection
from annotation.spec import RoundSpec
from annotation.tasks import ROUND_KINDS, gold_answers
from annotation.transport import BridgeError
from curate.agreement import cohen_kappa, fleiss_kappa, gold_accuracy, krippendorff_alpha, round_ratings
from curate.progress import progress_bar
from curate.records import Verdict
from curate.verdicts import ADJUDICATES_KEY, GOLD_KEY, SIMULATED_DOMAIN, SIMULATED_KEY, resolve
from curate.workspace import Workspace

PUSH_CHUNK = 500
FIGURES_TABLE = "round-figures"
REJECTIONS_TABLE = "round-rejections"
REJECTION_SCHEMA = {"item_id": pl.String, "annotator": pl.String, "task_id": pl.String, "reason": pl.String,
                    "round": pl.String}


@dataclass(slots=True)
class RoundReport:
    """What a push or a pull did."""

    run_id: str
    project_id: int
    counts: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)


def project(ls: LabelStudio, workspace: Workspace, spec: RoundSpec, create: bool = True) -> int:
    """The round's project: found by the workspace's id, created once with its checked config."""
    title, description = spec.project_title(workspace), spec.project_description(workspace)
    found = transport.find_project(ls, title, description)
    if found is not None:
        return found
    if not create:
        raise BridgeError(f"round {spec.name!r} has no project on this Label Studio (push it first, or point "
                          "at the server it was pushed to)")
    config, controls = CONFIGS[spec.kind]
    checked(config, controls)
    return transport.create_project(ls, title, description, config, storage_path(workspace))


def push(workspace: Workspace, server: Connection, spec: RoundSpec, chunk_size: int | None = None) -> RoundReport:
    """Send the routed units as tasks with pre-fills, ``chunk_size`` tasks a request; units already in
    the project are skipped, so a push that died half-way is resumed by pushing again. Each task's
    overlap is then set from what it was planned with (also repairing a push killed in between)."""
    ls = transport.client(server)
    with workspace.runs.track("verify", spec.name, _config(spec), extend_completed=True) as run:
        project_id = project(ls, workspace, spec)
        existing = transport.project_tasks(ls, project_id)
        present = {task.data.get("unit", task.data.get("item_id")) for task in existing}
        planned = ROUND_KINDS[spec.kind].plan(workspace, spec, present)
        # Tasks already there are reconciled too: a push killed between an import and its patch is repaired.
        shared = _apply_overlap(ls, [(int(t.id), _wanted(t.meta), int(t.overlap or 1)) for t in existing])
        with progress_bar(f"push {spec.name}", len(planned.tasks)) as advance:
            for start in range(0, len(planned.tasks), chunk_size or PUSH_CHUNK):
                chunk = planned.tasks[start:start + (chunk_size or PUSH_CHUNK)]
                task_ids = transport.import_tasks(ls, project_id, chunk)
                shared += _apply_overlap(ls, [(task_id, _wanted(task["meta"]), 1)
                                              for task_id, task in zip(task_ids, chunk, strict=True)])
                workspace.runs.count(run.run_id, {"tasks_pushed": len(chunk)})
                advance(len(chunk))
    return RoundReport(run.run_id, project_id, {"tasks_pushed": len(planned.tasks), "already_there": len(present),
                                                "gold_tasks": planned.gold, "shared_tasks": shared})


def _wanted(meta: dict[str, Any] | None) -> int:
    """The overlap a task was planned with (kept in its meta)."""
    return int((meta or {}).get("overlap", 1))


def _apply_overlap(ls: LabelStudio, tasks: Sequence[tuple[int, int, int]]) -> int:
    """Give each (task id, wanted overlap, current overlap) the overlap it wants (imports get the
    project's, 1); returns how many of them wait for several people."""
    for task_id, wanted, current in tasks:
        if wanted != current:
            transport.set_overlap(ls, task_id, wanted)
    return sum(wanted > 1 for _, wanted, _ in tasks)


def _config(spec: RoundSpec) -> dict[str, Any]:
    return {"round": spec.name, "kind": spec.kind, "spec": vars_of(spec)}


def vars_of(spec: RoundSpec) -> dict[str, Any]:
    """A round spec as plain data, for run configs."""
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


def stored_spec(workspace: Workspace, name: str) -> RoundSpec:
    """The spec a round was pushed with (pull and status need only its name)."""
    for run in workspace.runs.list("verify"):
        if run.name == name and "spec" in run.config:
            fields = {k: v for k, v in run.config["spec"].items() if k in RoundSpec.__dataclass_fields__}
            return RoundSpec(**fields)
    raise BridgeError(f"no round {name!r} was pushed from this workspace")


def pull(workspace: Workspace, server: Connection, spec: RoundSpec) -> RoundReport:
    """Read the round's annotations from an export snapshot and make them the round's verdicts;
    annotations that do not fit the task are rejected with a reason (stored, and counted)."""
    ls = transport.client(server)
    read = ROUND_KINDS[spec.kind].read
    project_id = project(ls, workspace, spec, create=False)
    users = transport.users(ls)
    snapshot = transport.export(ls, project_id, f"curate pull {spec.name}")
    verdicts: list[Verdict] = []
    rejected: list[dict[str, str]] = []
    annotated_tasks = 0
    for task in snapshot:
        data, meta = task.get("data", {}), task.get("meta") or {}
        item_id = data.get("item_id")
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not item_id or not annotations:
            continue
        annotated_tasks += 1
        flags = {key: meta[key] for key in (GOLD_KEY, ADJUDICATES_KEY) if meta.get(key)}
        for annotation in annotations:
            annotator = users.get(annotation.get("completed_by"), f"user-{annotation.get('completed_by')}")
            try:
                readings = read(annotation.get("result", []), data)
            except ConfigError as error:
                rejected.append({"item_id": item_id, "annotator": annotator, "task_id": str(task["id"]),
                                 "reason": str(error)})
                continue
            where = {"task_id": task["id"], "annotation_id": annotation["id"], **flags}
            if annotator.endswith("@" + SIMULATED_DOMAIN):
                where[SIMULATED_KEY] = True
            verdicts += [Verdict(item_id, name, annotator, spec.name, value, kind_of_type, {**where, **extra})
                         for name, value, kind_of_type, extra in readings]
    stored = workspace.catalog.verdicts(spec.name)
    if stored and not snapshot:
        raise BridgeError(f"round {spec.name!r}: the project on the server has no tasks, but {len(stored)} verdicts "
                          "are stored; not replacing them (is this the server the round was pushed to?)")
    with workspace.runs.track("verify", spec.name, _config(spec), extend_completed=True) as run:
        _, removed = workspace.catalog.replace_verdicts(spec.name, verdicts)
        counts = {"annotated_tasks": annotated_tasks, "verdicts": len(verdicts), "removed_verdicts": removed,
                  "rejected_annotations": len(rejected)}
        workspace.runs.set_counts(run.run_id, {f"last_pull_{k}": v for k, v in counts.items()})
    workspace.tables.write(REJECTIONS_TABLE, pl.DataFrame(
        [{**row, "round": spec.name} for row in rejected], schema=REJECTION_SCHEMA), part=spec.name)
    figures = round_figures(workspace, spec)
    workspace.tables.write(FIGURES_TABLE, pl.DataFrame({"round": [spec.name], "run_id": [run.run_id],
                                                        "figures": [json.dumps(figures)]}), part=run.run_id)
    return RoundReport(run.run_id, project_id, counts, figures)


def rejections(workspace: Workspace, round_name: str) -> pl.DataFrame:
    """The annotations the last pull of a round rejected, with the reason of each."""
    found = workspace.tables.part(REJECTIONS_TABLE, round_name)
    return found if found is not None else pl.DataFrame(schema=REJECTION_SCHEMA)


def status(workspace: Workspace, server: Connection, spec: RoundSpec) -> dict[str, float]:
    """Progress of a round (tasks, tasks finished for the people they wait for, annotations, gold and
    shared tasks) and the figures of its pulled verdicts (agreement, gold accuracy per annotator,
    units still to adjudicate, rejected annotations)."""
    ls = transport.client(server)
    tasks = transport.project_tasks(ls, project(ls, workspace, spec, create=False))
    annotations = [int(getattr(task, "total_annotations", 0) or 0) for task in tasks]
    return {"tasks": float(len(tasks)), "finished_tasks": float(sum(bool(task.is_labeled) for task in tasks)),
            "annotations": float(sum(annotations)),
            "gold_tasks": float(sum(bool((task.meta or {}).get(GOLD_KEY)) for task in tasks)),
            "shared_tasks": float(sum(int(task.overlap or 1) > 1 for task in tasks)),
            "rejected_annotations": float(rejections(workspace, spec.name).height),
            **round_figures(workspace, spec)}


def round_figures(workspace: Workspace, spec: RoundSpec) -> dict[str, float]:
    """The round's figures: Krippendorff's alpha overall and per attribute, Fleiss' kappa, Cohen's
    kappa per pair of annotators (answers on gold tasks left out), units decided and still to
    adjudicate (after any adjudication of this round), and each annotator's accuracy on the gold
    tasks alone, with how many gold units they answered."""
    verdicts = workspace.catalog.verdicts()
    ratings, gold_ratings = round_ratings(v for v in verdicts if v.round == spec.name)
    resolution = resolve(verdicts, [spec.name])
    decided_here = [v for v in resolution.decided if (v.item_id, v.attribute) in ratings]
    figures = {"krippendorff_alpha": krippendorff_alpha(ratings), "fleiss_kappa": fleiss_kappa(ratings),
               "units": float(len(ratings)), "decided": float(len(decided_here)),
               "adjudicated": float(sum(v.annotator == "adjudicated" for v in decided_here)),
               "to_adjudicate": float(len(resolution.open))}
    for attribute in sorted({a for _, a in ratings}):
        figures[f"alpha_attribute:{attribute}"] = krippendorff_alpha(
            {unit: r for unit, r in ratings.items() if unit[1] == attribute})
    annotators = sorted({a for r in ratings.values() for a in r})
    for first, second in itertools.combinations(annotators, 2):
        figures[f"cohen_kappa:{first}|{second}"] = cohen_kappa(ratings, first, second)
    if spec.gold_round and gold_ratings:
        gold = gold_answers(workspace, spec.gold_round)
        answered = {unit: r for unit, r in gold_ratings.items() if unit in gold}
        for annotator, accuracy in gold_accuracy(answered, gold).items():
            figures[f"gold_accuracy:{annotator}"] = accuracy
            figures[f"gold_units:{annotator}"] = float(sum(annotator in r for r in answered.values()))
    return figures
