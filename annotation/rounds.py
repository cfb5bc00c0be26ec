"""Verification rounds: route items to people, push them to Label Studio, pull verdicts back.

A round is a recorded ``verify`` run named after the round. Tasks carry the stable ``item_id`` and
point at the image through Label Studio's local-files storage (never uploaded bytes); predictions
carry ``model_version`` = the proposal run id and its score. Pushing again adds only what is new;
pulling reads an export snapshot, checks every annotation against the config and the task's own
attributes, and stores Verdicts by ``item_id`` (never by position). A task nobody annotated never
becomes a verdict.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from annotation.agreement import cohen_kappa, consensus, fleiss_kappa, gold_accuracy, krippendorff_alpha
from annotation.configs import (
    CONFIGS,
    VERDICT_VALUES,
    ConfigError,
    attribute_task_data,
    box_prefill,
    box_task_data,
    checked,
    prefill,
    read_attribute_result,
    read_box_result,
    read_choices_result,
)
from annotation.files import image_url, storage_path
from annotation.server import Connection
from curate.ingest.base import read_table
from curate.progress import progress_bar
from curate.records import Evidence, EvidenceRole, Item, Verdict
from curate.registry import Registry
from curate.workspace import Workspace

Task = dict[str, Any]
Reading = tuple[str, str, str | None, dict[str, Any]]  # attribute, value, type, extra
PUSH_CHUNK = 500
FIGURES_TABLE = "round-figures"


class BridgeError(RuntimeError):
    """Label Studio refused or could not be reached; nothing was lost, run the command again."""


@dataclass(frozen=True, slots=True)
class RoundSpec:
    """What a round verifies: evidence of ``source`` (one run, or all), at most ``budget`` items,
    uncertain ones first (scores nearest ``threshold``), classes (or class x attribute groups) served
    in turn, so small ones are verified in full first; at most ``max_attributes`` per task.

    ``overlap`` is the share of tasks meant for ``overlap_k`` annotators (the project accepts that
    many annotations per task). ``gold_round`` names an earlier round whose consensus answers make
    ``gold_count`` gold tasks, pre-filled with the *wrong* answer, so people who accept predictions
    without looking show up in their gold accuracy. ``only_items`` restricts the round (adjudication).
    ``kind`` is ``attributes`` (one task per image, every attribute judged), ``boxes`` (one task
    per (image, cue) with pre-filled rectangles to correct), or ``mcq``, ``setting`` or ``logo``,
    whose units come from the table at ``units`` (what the builders write; see ``TABLE_KINDS``).
    """

    name: str
    source: str = "detector"
    evidence_run: str | None = None
    budget: int = 1000
    threshold: float = 0.05
    max_attributes: int = 10
    overlap: float = 0.0
    overlap_k: int = 2
    gold_round: str | None = None
    gold_count: int = 0
    only_items: tuple[str, ...] | None = None
    kind: str = "attributes"
    units: str | None = None

    def project_title(self, workspace: Workspace) -> str:
        return f"curate {workspace.root.name} {self.name}"


@dataclass(slots=True)
class RoundReport:
    """What a push or a pull did."""

    run_id: str
    project_id: int
    counts: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)


def client(server: Connection, timeout_s: float = 60) -> LabelStudio:
    """An SDK client for a server (legacy token)."""
    return LabelStudio(base_url=server.url, api_key=server.token, timeout=timeout_s)


def route(workspace: Workspace, spec: RoundSpec, exclude: frozenset[str] = frozenset()
          ) -> list[tuple[Item, list[Evidence]]]:
    """The items to show (not ``exclude``d), with their evidence: most uncertain first, strata taking
    turns, at most ``spec.budget``. A stratum is a class, or a (class, spurious attribute) group for
    items of a group table, so small groups are verified in full before large ones run out."""
    by_item: dict[str, list[Evidence]] = defaultdict(list)
    allowed = set(spec.only_items) if spec.only_items is not None else None
    for row in workspace.catalog.evidence(source=spec.source, run_id=spec.evidence_run):
        if row.role != EvidenceRole.CORE and row.item_id not in exclude and (allowed is None or row.item_id in allowed):
            by_item[row.item_id].append(row)
    groups = {ref.item_id: ref.metadata["a_name"] for ref in workspace.catalog.references()
              if "a_name" in ref.metadata}
    queues: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    items = {item_id: workspace.catalog.item(item_id) for item_id in by_item}
    for item_id, rows in by_item.items():
        uncertainty = min(abs((r.score or 0.0) - spec.threshold) for r in rows)
        stratum = (str(items[item_id].label), str(groups.get(item_id, "")))
        queues[stratum].append((uncertainty, item_id))
    for queue in queues.values():
        queue.sort()
    chosen: list[str] = []
    while len(chosen) < spec.budget and any(queues.values()):
        for stratum in sorted(queues):
            if queues[stratum] and len(chosen) < spec.budget:
                chosen.append(queues[stratum].pop(0)[1])
    return [(items[i], sorted(by_item[i], key=lambda r: -(r.score or 0.0))[:spec.max_attributes])
            for i in chosen]


def gold_answers(workspace: Workspace, round_name: str) -> dict[tuple[str, str], str]:
    """(item, attribute) -> the consensus answer of an earlier round (its decided units)."""
    ratings: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for verdict in workspace.catalog.verdicts(round_name):
        if verdict.value in VERDICT_VALUES and verdict.value != "unsure":
            ratings[(verdict.item_id, verdict.attribute)][verdict.annotator] = verdict.value
    return {unit: value for unit, value in consensus(ratings).decided.items()}  # type: ignore[misc]


def _trap(value: str) -> str:
    """The wrong pre-filled answer of a gold attribute."""
    return "not present" if value in ("core", "spurious") else "spurious"


def adjudication_items(workspace: Workspace, round_name: str) -> tuple[str, ...]:
    """Items with a unit the round's consensus could not decide (ties, weak majorities)."""
    ratings: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for verdict in workspace.catalog.verdicts(round_name):
        if verdict.value != "added":
            ratings[(verdict.item_id, verdict.attribute)][verdict.annotator] = verdict.value
    pending = consensus(ratings, min_raters=2).to_adjudicate
    return tuple(sorted({item_id for item_id, _ in pending}))  # type: ignore[misc]


def _call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except ApiError as error:
        if error.status_code == 401:
            raise BridgeError(f"{what}: Label Studio refused the token (401)") from None
        raise BridgeError(f"{what}: Label Studio answered {error.status_code}: {str(error.body)[:300]}") from None
    except httpx.HTTPError as error:
        raise BridgeError(f"{what}: cannot reach Label Studio ({type(error).__name__}: {error}); nothing was lost, "
                          "run the command again when the server is back") from None


def project(ls: LabelStudio, workspace: Workspace, spec: RoundSpec) -> int:
    """The round's project (created once, with its checked config and local-files storage)."""
    title = spec.project_title(workspace)
    for existing in _call("list projects", ls.projects.list, title=title):
        if existing.title == title:
            return int(existing.id)
    config, controls = CONFIGS[spec.kind]
    checked(config, controls)
    created = _call("create project", ls.projects.create, title=title, label_config=config,
                    show_collab_predictions=True, model_version=spec.evidence_run or spec.source,
                    maximum_annotations=spec.overlap_k if spec.overlap > 0 else 1)
    _call("attach local files", ls.import_storage.local.create, project=created.id,
          path=storage_path(workspace), title="curate images", use_blob_urls=False)
    return int(created.id)


def _existing_units(ls: LabelStudio, project_id: int) -> set[str]:
    tasks = _call("list tasks", ls.tasks.list, project=project_id, fields="all", page_size=1000)
    return {task.data.get("unit", task.data.get("item_id")) for task in tasks}


def _chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def push(workspace: Workspace, server: Connection, spec: RoundSpec, chunk_size: int | None = None
         ) -> RoundReport:
    """Send the routed units as tasks with predictions, ``chunk_size`` tasks a request; units
    already in the project are skipped, so a push that died half-way is resumed by pushing again."""
    ls = client(server)
    kind = ROUND_KINDS[spec.kind]
    with workspace.runs.track("verify", spec.name, _config(spec), extend_completed=True) as run:
        project_id = project(ls, workspace, spec)
        present = _existing_units(ls, project_id)
        tasks, gold = kind.build(workspace, spec, present)
        with progress_bar(f"push {spec.name}", len(tasks)) as advance:
            for chunk in _chunks(tasks, chunk_size or PUSH_CHUNK):
                _call("import tasks", ls.projects.import_tasks, id=project_id, request=list(chunk),
                      return_task_ids=True)
                with workspace.transaction() as conn:
                    workspace.runs.add_counts(conn, run.run_id, {"tasks_pushed": len(chunk)})
                advance(len(chunk))
    return RoundReport(run.run_id, project_id, {"tasks_pushed": len(tasks), "already_there": len(present),
                                                "gold_tasks": gold})


def _config(spec: RoundSpec) -> dict[str, Any]:
    return {"round": spec.name, "kind": spec.kind, "spec": vars_of(spec)}


def _attribute_tasks(workspace: Workspace, spec: RoundSpec, present: set[str]) -> tuple[list[Task], int]:
    gold = _gold_tasks(workspace, spec, present)
    routed = route(workspace, spec, frozenset(task["meta"]["item_id"] for task in gold))
    n_overlap = math.ceil(spec.overlap * len(routed))
    tasks = []
    for index, (item, rows) in enumerate(routed):
        if item.item_id in present:
            continue
        attributes = [(r.attribute, r.taxonomy_type, float(r.score or 0.0)) for r in rows]
        meta = {"item_id": item.item_id, "round": spec.name, "overlap": spec.overlap_k if index < n_overlap else 1}
        tasks.append(_task(workspace, item, attributes, rows[0].run_id, prefill(attributes, spec.threshold), meta))
    return tasks + gold, len(gold)


def _box_tasks(workspace: Workspace, spec: RoundSpec, present: set[str]) -> tuple[list[Task], int]:
    """One task per (image, cue) with boxes, scores nearest the threshold first."""
    rows = [r for r in workspace.catalog.evidence(source=spec.source, run_id=spec.evidence_run)
            if r.boxes and r.role != EvidenceRole.CORE and (spec.only_items is None or r.item_id in spec.only_items)]
    rows.sort(key=lambda r: (abs((r.score or 0.0) - spec.threshold), r.item_id, r.attribute))
    tasks = []
    for row in rows[:spec.budget]:
        if f"{row.item_id}|{row.attribute}" in present:
            continue
        item = workspace.catalog.item(row.item_id)
        data = box_task_data(item.item_id, image_url(workspace, item), item.label, row.attribute, item.display_size)
        tasks.append({"data": data, "meta": {"item_id": item.item_id, "round": spec.name},
                      "predictions": [{"model_version": row.run_id, "score": float(row.score or 0.0),
                                       "result": box_prefill(row.boxes, item.display_size)}]})
    return tasks, 0


def _read_attributes(result: Sequence[dict[str, Any]], data: dict[str, Any]) -> list[Reading]:
    chosen, types, missed = read_attribute_result(result, data)
    proposed = data.get("attribute_types", {})
    return ([(name, value, types.get(name, proposed.get(name)), {}) for name, value in chosen.items()]
            + [(name, "added", None, {}) for name in missed])


def _read_boxes(result: Sequence[dict[str, Any]], data: dict[str, Any]) -> list[Reading]:
    verdict, boxes = read_box_result(result, data)
    return [(data["attribute"], verdict, None, {"boxes": boxes})]


def _mcq_data(row: dict[str, Any]) -> dict[str, Any]:
    choices = row["choices"] if isinstance(row["choices"], list) else ast.literal_eval(str(row["choices"]))
    key = hashlib.sha256(str(row["question"]).encode()).hexdigest()[:10]
    return {"unit": f"{row['item_id']}|{key}", "question": row["question"], "choices_text": "\n".join(choices),
            "answer": row["answer"]}


def _choices_prefill(values: dict[str, list[str]]) -> list[dict[str, Any]]:
    return [{"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": chosen}}
            for name, chosen in values.items() if chosen]


def _setting_prefill(row: dict[str, Any]) -> list[dict[str, Any]]:
    locations = row.get("locations") or []
    locations = locations if isinstance(locations, list) else [v.strip() for v in str(locations).split(",")]
    return _choices_prefill({"time": [row["time"]] if row.get("time") else [],
                             "weather": [row["weather"]] if row.get("weather") else [], "locations": locations})


@dataclass(frozen=True, slots=True)
class TableKind:
    """A review fed by a units table: required columns, extra task data, and pre-filled answers."""

    columns: tuple[str, ...]
    data: Callable[[dict[str, Any]], dict[str, Any]]
    prefill: Callable[[dict[str, Any]], list[dict[str, Any]]]


TABLE_KINDS = {
    "mcq": TableKind(("item_id", "question", "choices", "answer"), _mcq_data, lambda row: []),
    "setting": TableKind(("item_id", "time", "weather", "locations"), lambda row: {"unit": row["item_id"]},
                         _setting_prefill),
    "logo": TableKind(("item_id",), lambda row: {"unit": row["item_id"]},
                      lambda row: _choices_prefill({"is_logo": ["logo"]})),
}


def _table_tasks(workspace: Workspace, spec: RoundSpec, present: set[str]) -> tuple[list[Task], int]:
    """Tasks for the first ``budget`` rows of the units table (MCQ items, settings, logos)."""
    if not spec.units:
        raise BridgeError(f"a {spec.kind} round needs a units table (units=...)")
    table_kind = TABLE_KINDS[spec.kind]
    frame = read_table(Path(spec.units))
    missing = [c for c in table_kind.columns if c not in frame.columns]
    if missing:
        raise BridgeError(f"{spec.units} has no column {', '.join(missing)} for a {spec.kind} round")
    tasks = []
    for row in frame.head(spec.budget).iter_rows(named=True):
        item = workspace.catalog.item(row["item_id"])
        data = {"item_id": item.item_id, "image": image_url(workspace, item), "class_label": item.label or "",
                **table_kind.data(row)}
        if data["unit"] in present:
            continue
        tasks.append({"data": data, "meta": {"item_id": item.item_id, "round": spec.name},
                      "predictions": [{"model_version": f"units:{Path(spec.units).name}", "score": 0.0,
                                       "result": table_kind.prefill(row)}]})
    return tasks, 0


def _table_reader(kind: str) -> Callable[[Sequence[dict[str, Any]], dict[str, Any]], list[Reading]]:
    config = CONFIGS[kind][0]

    def read(result: Sequence[dict[str, Any]], data: dict[str, Any]) -> list[Reading]:
        chosen = read_choices_result(result, config)
        notes = {name: values for name, values in chosen.items() if name in ("comment", "brand")}
        extra: dict[str, Any] = {"question": data["question"]} if "question" in data else {}
        extra |= {name: "\n".join(values) for name, values in notes.items()}
        readings = [(name, ", ".join(sorted(values)), None, extra) for name, values in chosen.items()
                    if name not in notes and values]
        if not readings:
            raise ConfigError("the annotation chose nothing")
        return readings

    return read


@dataclass(frozen=True, slots=True)
class RoundKind:
    """How one kind of round makes tasks and reads annotations back."""

    build: Callable[[Workspace, RoundSpec, set[str]], tuple[list[Task], int]]
    read: Callable[[Sequence[dict[str, Any]], dict[str, Any]], list[Reading]]


ROUND_KINDS: Registry[RoundKind] = Registry("round kind", BridgeError)
ROUND_KINDS.register("attributes")(RoundKind(_attribute_tasks, _read_attributes))
ROUND_KINDS.register("boxes")(RoundKind(_box_tasks, _read_boxes))
for _table_kind in TABLE_KINDS:
    ROUND_KINDS.register(_table_kind)(RoundKind(_table_tasks, _table_reader(_table_kind)))


def _task(workspace: Workspace, item: Item, attributes: list[tuple[str, str | None, float]], model_version: str,
          result: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    data = attribute_task_data(item.item_id, image_url(workspace, item), item.label,
                               [(name, kind) for name, kind, _ in attributes])
    score = max((s for _, _, s in attributes), default=0.0)
    return {"data": data, "meta": meta, "predictions": [{"model_version": model_version, "score": score,
                                                         "result": result}]}


def _gold_tasks(workspace: Workspace, spec: RoundSpec, taken: set[str]) -> list[dict[str, Any]]:
    """Gold tasks from an earlier round's consensus (not yet in the project), pre-filled with the
    wrong answers."""
    if not spec.gold_round or spec.gold_count <= 0:
        return []
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for (item_id, attribute), value in gold_answers(workspace, spec.gold_round).items():
        by_item[item_id][attribute] = value
    tasks = []
    for item_id in sorted(by_item)[:spec.gold_count]:
        if item_id in taken:
            continue
        answers = by_item[item_id]
        attributes = [(name, None, 0.0) for name in sorted(answers)]
        wrong = [{"from_name": "verdicts", "to_name": "image", "type": "taxonomy",
                  "value": {"taxonomy": [[name, _trap(value)] for name, value in sorted(answers.items())]}}]
        tasks.append(_task(workspace, workspace.catalog.item(item_id), attributes, f"gold:{spec.gold_round}", wrong,
                           {"item_id": item_id, "round": spec.name, "gold": True}))
    return tasks


def stored_spec(workspace: Workspace, name: str) -> RoundSpec:
    """The spec a round was pushed with (pull and status need only its name)."""
    for run in workspace.runs.list("verify"):
        if run.name == name and "spec" in run.config:
            fields = dict(run.config["spec"])
            if fields.get("only_items") is not None:
                fields["only_items"] = tuple(fields["only_items"])
            return RoundSpec(**fields)
    raise BridgeError(f"no round {name!r} was pushed from this workspace")


def vars_of(spec: RoundSpec) -> dict[str, Any]:
    """A round spec as plain data, for run configs."""
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


def pull(workspace: Workspace, server: Connection, spec: RoundSpec) -> RoundReport:
    """Read the round's annotations back from an export snapshot and store them as Verdicts."""
    ls = client(server)
    kind = ROUND_KINDS[spec.kind]
    project_id = project(ls, workspace, spec)
    users = {user.id: user.email or user.username for user in _call("list users", ls.users.list)}
    export = _call("create export", ls.projects.exports.create, id=project_id, title=f"curate pull {spec.name}")
    raw = b"".join(_call("download export", ls.projects.exports.download, id=project_id, export_pk=export.id,
                         export_type="JSON"))
    verdicts: list[Verdict] = []
    rejected: list[dict[str, str]] = []
    annotated_tasks = 0
    for task in json.loads(raw):
        data = task.get("data", {})
        item_id = data.get("item_id")
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not item_id or not annotations:
            continue
        annotated_tasks += 1
        for annotation in annotations:
            annotator = users.get(annotation.get("completed_by"), f"user-{annotation.get('completed_by')}")
            try:
                readings = kind.read(annotation.get("result", []), data)
            except ConfigError as error:
                rejected.append({"item_id": item_id, "annotator": annotator, "reason": str(error)})
                continue
            where = {"task_id": task["id"], "annotation_id": annotation["id"]}
            verdicts += [Verdict(item_id, name, annotator, spec.name, value, kind_of_type, {**where, **extra})
                         for name, value, kind_of_type, extra in readings]
    with workspace.runs.track("verify", spec.name, _config(spec), extend_completed=True) as run:
        workspace.catalog.add_verdicts(verdicts)
        counts = {"annotated_tasks": annotated_tasks, "verdicts": len(verdicts),
                  "rejected_annotations": len(rejected)}
        with workspace.transaction() as conn:
            workspace.runs.add_counts(conn, run.run_id, {f"last_pull_{k}": v for k, v in counts.items()})
    figures = round_agreement(workspace, spec.name, spec.gold_round)
    workspace.tables.write(FIGURES_TABLE, pl.DataFrame({"round": [spec.name], "run_id": [run.run_id],
                                                        "figures": [json.dumps(figures)]}), part=run.run_id)
    return RoundReport(run.run_id, project_id, counts, figures)


def status(workspace: Workspace, server: Connection, spec: RoundSpec) -> dict[str, float]:
    """Progress of a round: tasks in the project, tasks annotated, annotations, and the stored
    verdicts' agreement."""
    ls = client(server)
    tasks = list(_call("list tasks", ls.tasks.list, project=project(ls, workspace, spec), page_size=1000))
    annotations = [int(getattr(task, "total_annotations", 0) or 0) for task in tasks]
    return {"tasks": float(len(tasks)), "annotated_tasks": float(sum(1 for n in annotations if n)),
            "annotations": float(sum(annotations)), **round_agreement(workspace, spec.name)}


def round_agreement(workspace: Workspace, round_name: str, gold_round: str | None = None) -> dict[str, float]:
    """The round's figures: Krippendorff's alpha overall and per attribute, Fleiss' kappa, Cohen's
    kappa per pair of annotators, gold accuracy per annotator, consensus counts."""
    ratings: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for verdict in workspace.catalog.verdicts(round_name):
        if verdict.value != "added":
            ratings[(verdict.item_id, verdict.attribute)][verdict.annotator] = verdict.value
    result = consensus(ratings, min_raters=1)
    figures = {"krippendorff_alpha": krippendorff_alpha(ratings), "fleiss_kappa": fleiss_kappa(ratings),
               "units": float(len(ratings)), "decided": float(len(result.decided)),
               "to_adjudicate": float(len(result.to_adjudicate))}
    for attribute in sorted({a for _, a in ratings}):
        figures[f"alpha_attribute:{attribute}"] = krippendorff_alpha(
            {unit: r for unit, r in ratings.items() if unit[1] == attribute})
    annotators = sorted({a for r in ratings.values() for a in r})
    for first, second in itertools.combinations(annotators, 2):
        figures[f"cohen_kappa:{first}|{second}"] = cohen_kappa(ratings, first, second)
    if gold_round:
        gold = gold_answers(workspace, gold_round)
        for annotator, accuracy in gold_accuracy(ratings, gold).items():  # type: ignore[arg-type]
            figures[f"gold_accuracy:{annotator}"] = accuracy
    return figures
