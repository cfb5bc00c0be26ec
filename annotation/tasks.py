"""What a round shows: routing, the task of each kind of round, and reading answers back.

A round kind (``ROUND_KINDS``) makes the tasks of a round and reads one annotation back into
readings (attribute, value, type, extra). Attribute rounds route images by uncertainty, serving
strata in turn, leave out units other rounds already decided, mix in gold tasks and, for an
adjudication, show only the disputed attributes with the votes so far.
"""

from __future__ import annotations

import ast
import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from annotation.configs import (
    CONFIGS,
    AttributeRow,
    ConfigError,
    attribute_answers,
    attribute_task_data,
    box_prefill,
    box_task_data,
    prefill,
    read_attribute_result,
    read_box_result,
    read_choices_result,
)
from annotation.files import image_url
from annotation.spec import RoundSpec
from annotation.transport import PREFILL_VERSION, BridgeError, Task
from curate.records import NEGATIVE_OF, Evidence, EvidenceRole, Item
from curate.registry import Registry
from curate.tabular import read_table
from curate.verdicts import (
    ADJUDICATES_KEY,
    GOLD_KEY,
    SPURIOUS_ONLY_QUESTIONS,
    VerdictValue,
    question_attribute,
    resolve,
)
from curate.workspace import Workspace
from curate.workspace.evidence import KEY, evidence_records, extra_field

Reading = tuple[str, str, str | None, dict[str, Any]]  # attribute, value, type, extra


@dataclass(frozen=True, slots=True)
class Planned:
    """The tasks a push would send, and how many of them are gold or wait for several people."""

    tasks: list[Task]
    gold: int = 0
    overlap: int = 0


# routing ----------------------------------------------------------------------------------------
def decided_elsewhere(workspace: Workspace, round_name: str) -> set[tuple[str, str]]:
    """(item, attribute) units that rounds other than ``round_name`` have decided."""
    others = [v for v in workspace.catalog.verdicts() if v.round != round_name]
    return {(v.item_id, v.attribute) for v in resolve(others).decided}


def route(workspace: Workspace, spec: RoundSpec, exclude: frozenset[str] = frozenset()
          ) -> list[tuple[Item, list[Evidence]]]:
    """The items to show (not ``exclude``d), with their evidence: one row per attribute (the highest
    score when several runs scored it; core attributes first, then by score), units decided by other
    rounds and another class's cues scored only as negatives left out, most uncertain first, strata
    taking turns, at most ``spec.budget``. A stratum is a
    class, or a (class, spurious attribute) group for items of a group table, so small groups are
    verified in full first."""
    decided = decided_elsewhere(workspace, spec.name)
    undecided = pl.LazyFrame(sorted(decided), schema={"item_id": pl.String, "attribute": pl.String}, orient="row")
    # one row per (item, attribute): the highest score (a missing one counts 0), the first key on a tie
    best = (workspace.catalog.evidence_scan(source=spec.source, run_id=spec.evidence_run)
            .select(*KEY, "role", NEGATIVE_OF, score=pl.col("score").fill_null(0.0))
            .filter(pl.col(NEGATIVE_OF).is_null(),
                    ~pl.col("item_id").is_in(pl.Series(sorted(exclude), dtype=pl.String).implode()))
            .join(undecided, on=["item_id", "attribute"], how="anti")
            .sort("item_id", "attribute", "score", "source", "run_id", descending=[False, False, True, False, False])
            .unique(["item_id", "attribute"], keep="first", maintain_order=True))
    tables = sorted(source.source_id for source in workspace.catalog.sources() if source.kind == "groups")
    groups = pl.LazyFrame([(ref.item_id, str(ref.metadata["a_name"])) for source_id in tables
                           for ref in workspace.catalog.references(source_id=source_id) if "a_name" in ref.metadata],
                          schema={"item_id": pl.String, "group": pl.String}, orient="row",
                          ).unique("item_id", keep="last", maintain_order=True)  # group tables' items only
    labels = workspace.catalog.items_frame(columns=["label"]).lazy()
    # strata take turns: the n-th pick of every stratum (in stratum order) comes before any (n+1)-th
    chosen = (best.group_by("item_id").agg(uncertainty=(pl.col("score") - spec.threshold).abs().min())
              .join(labels, on="item_id", how="left").join(groups, on="item_id", how="left")
              .select("item_id", "uncertainty", label=pl.col("label").fill_null("None"),
                      group=pl.col("group").fill_null(""))
              .sort("uncertainty", "item_id")
              .with_columns(turn=pl.int_range(pl.len()).over("label", "group"))
              .sort("turn", "label", "group").head(spec.budget).select("item_id").collect())
    order = chosen["item_id"].to_list()
    rows = (best.join(chosen.lazy(), on="item_id", how="semi")
            .sort("item_id", pl.col("role") != EvidenceRole.CORE.value, pl.col("score"), "attribute",
                  descending=[False, False, True, False])
            .group_by("item_id", maintain_order=True).head(spec.max_attributes)
            .select(*KEY).collect())
    records: dict[str, list[Evidence]] = defaultdict(list)
    for record in _records(workspace, spec, rows):
        records[record.item_id].append(record)
    return [(workspace.catalog.item(item_id), records[item_id]) for item_id in order]


def _records(workspace: Workspace, spec: RoundSpec, keys: pl.DataFrame) -> list[Evidence]:
    """The evidence rows of ``keys`` (a frame of ``KEY`` columns) that a round reads, as records, in the
    order of ``keys``."""
    stored = (workspace.catalog.evidence_scan(source=spec.source, run_id=spec.evidence_run)
              .filter(pl.col("item_id").is_in(keys["item_id"].unique().implode()))
              .join(keys.lazy(), on=list(KEY), how="semi").collect())
    return list(evidence_records(keys.join(stored, on=list(KEY), how="left", maintain_order="left")))


def spread(count: int, share: float) -> set[int]:
    """``round(share * count)`` indices among ``range(count)``, spread evenly.

    >>> sorted(spread(10, 0.25)), len(spread(8, 0.25)), spread(5, 0.0)
    ([1, 5, 8], 2, set())
    """
    chosen = math.floor(share * count + 0.5)
    return {math.floor((j + 0.5) * count / chosen) for j in range(chosen)} if chosen else set()


def gold_answers(workspace: Workspace, round_name: str) -> dict[tuple[str, str], str]:
    """(item, attribute) -> the decided answer of an earlier round (consensus or adjudication)."""
    return {(v.item_id, v.attribute): v.value for v in resolve(workspace.catalog.verdicts(), [round_name]).decided
            if v.value in (VerdictValue.CORE, VerdictValue.SPURIOUS, VerdictValue.NOT_PRESENT)}


def _trap(value: str) -> str:
    """The wrong pre-filled answer of a gold attribute."""
    return VerdictValue.NOT_PRESENT if value in (VerdictValue.CORE, VerdictValue.SPURIOUS) else VerdictValue.SPURIOUS


def _attribute_task(workspace: Workspace, item: Item, rows: list[AttributeRow], result: list[dict[str, Any]],
                    score: float, meta: dict[str, Any]) -> Task:
    data = attribute_task_data(item.item_id, image_url(workspace, item), item.label, rows)
    predictions = [{"model_version": PREFILL_VERSION, "score": score, "result": result}] if result else []
    return {"data": data, "meta": meta, "predictions": predictions}


def _gold_tasks(workspace: Workspace, spec: RoundSpec, present: set[str]) -> list[Task]:
    """Gold tasks from an earlier round's decided units, pre-filled with the wrong answers."""
    if not spec.gold_round or spec.gold_count <= 0:
        return []
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for (item_id, attribute), value in gold_answers(workspace, spec.gold_round).items():
        by_item[item_id][attribute] = value
    if not by_item:
        raise BridgeError(f"round {spec.gold_round!r} decided nothing yet: pull it before using it for gold tasks")
    tasks = []
    for item_id in sorted(by_item)[:spec.gold_count]:
        if item_id in present:
            continue
        answers = sorted(by_item[item_id].items())[:spec.max_attributes]
        rows = [AttributeRow(name) for name, _ in answers]
        trap = attribute_answers(rows, [_trap(value) for _, value in answers])
        meta = {"item_id": item_id, "round": spec.name, GOLD_KEY: True, "gold_round": spec.gold_round,
                "overlap": spec.overlap_k}
        tasks.append(_attribute_task(workspace, workspace.catalog.item(item_id), rows, trap, 0.0, meta))
    return tasks


def _adjudication_tasks(workspace: Workspace, spec: RoundSpec, present: set[str]) -> Planned:
    """One task per item with a disputed unit of ``spec.adjudicates``: only the disputed attributes,
    each with the votes so far, nothing pre-filled."""
    target = str(spec.adjudicates)
    verdicts = workspace.catalog.verdicts()
    if not any(v.round == target for v in verdicts):
        raise BridgeError(f"round {target!r} has no verdicts to adjudicate: pull it first")
    votes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    types: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for verdict in verdicts:
        if verdict.round == target and not verdict.extra.get(GOLD_KEY):
            votes[(verdict.item_id, verdict.attribute)][verdict.value] += 1
            if verdict.taxonomy_type:
                types[(verdict.item_id, verdict.attribute)][verdict.taxonomy_type] += 1
    disputed: dict[str, list[AttributeRow]] = defaultdict(list)
    shown_votes: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for (item_id, attribute), reason in sorted(resolve(verdicts, [target]).open.items()):
        counted = ", ".join(f"{value} {n}" for value, n in sorted(votes[(item_id, attribute)].items()))
        kind = types[(item_id, attribute)].most_common(1)
        disputed[item_id].append(AttributeRow(attribute, kind[0][0] if kind else None,
                                              f"votes so far: {counted} ({reason.split(' between')[0]})"))
        shown_votes[item_id][attribute] = dict(votes[(item_id, attribute)])
    tasks = []
    for item_id, rows in list(disputed.items())[:spec.budget]:
        if item_id not in present:
            meta = {"item_id": item_id, "round": spec.name, ADJUDICATES_KEY: target, "overlap": 1}
            task = _attribute_task(workspace, workspace.catalog.item(item_id), rows[:spec.max_attributes], [], 0.0,
                                   meta)
            task["data"]["votes"] = shown_votes[item_id]
            tasks.append(task)
    return Planned(tasks)


def _attribute_tasks(workspace: Workspace, spec: RoundSpec, present: set[str]) -> Planned:
    if spec.adjudicates:
        return _adjudication_tasks(workspace, spec, present)
    gold = _gold_tasks(workspace, spec, present)
    routed = route(workspace, spec, frozenset(task["meta"]["item_id"] for task in gold))
    shared = spread(len(routed), spec.overlap)
    tasks = []
    for index, (item, evidence) in enumerate(routed):
        if item.item_id in present:
            continue
        rows = [AttributeRow(r.attribute, r.taxonomy_type) for r in evidence]
        scores = [float(r.score or 0.0) for r in evidence]
        meta = {"item_id": item.item_id, "round": spec.name, "evidence_runs": sorted({r.run_id for r in evidence}),
                "overlap": spec.overlap_k if index in shared else 1}
        cores = [r.role == EvidenceRole.CORE for r in evidence]
        tasks.append(_attribute_task(workspace, item, rows, prefill(rows, scores, cores, spec.threshold), max(scores),
                                     meta))
    return Planned(tasks + gold, len(gold), sum(1 for t in tasks + gold if t["meta"]["overlap"] > 1))


def _read_attributes(result: Sequence[dict[str, Any]], data: dict[str, Any]) -> list[Reading]:
    chosen, types, missed, comment = read_attribute_result(result, data)
    proposed = data.get("attribute_types", {})
    note = {"comment": comment} if comment else {}
    return ([(name, value, types.get(name, proposed.get(name)), note) for name, value in chosen.items()]
            + [(name, VerdictValue.ADDED, None, note) for name in missed])


# boxes ------------------------------------------------------------------------------------------
def _box_tasks(workspace: Workspace, spec: RoundSpec, present: set[str]) -> Planned:
    """One task per (image, cue) with boxes, scores nearest the threshold first."""
    nearest = (workspace.catalog.evidence_scan(source=spec.source, run_id=spec.evidence_run)
               .filter(pl.col("boxes").list.len() > 0, pl.col("role") != EvidenceRole.CORE.value)
               .sort((pl.col("score").fill_null(0.0) - spec.threshold).abs(), *KEY)
               .head(spec.budget).select(*KEY).collect())
    tasks = []
    for row in _records(workspace, spec, nearest):
        if f"{row.item_id}|{row.attribute}" in present:
            continue
        item = workspace.catalog.item(row.item_id)
        data = box_task_data(item.item_id, image_url(workspace, item), item.label, row.attribute, item.display_size)
        tasks.append({"data": data, "meta": {"item_id": item.item_id, "round": spec.name, "evidence_run": row.run_id,
                                             "overlap": 1},
                      "predictions": [{"model_version": PREFILL_VERSION, "score": float(row.score or 0.0),
                                       "result": box_prefill(row.boxes, item.display_size)}]})
    return Planned(tasks)


def _read_boxes(result: Sequence[dict[str, Any]], data: dict[str, Any]) -> list[Reading]:
    verdict, boxes = read_box_result(result, data)
    return [(data["attribute"], verdict, None, {"boxes": boxes})]


# reviews fed by a units table ------------------------------------------------------------------------
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


def _table_tasks(workspace: Workspace, spec: RoundSpec, present: set[str]) -> Planned:
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
        result = table_kind.prefill(row)
        tasks.append({"data": data, "meta": {"item_id": item.item_id, "round": spec.name,
                                             "units": Path(spec.units).name, "overlap": 1},
                      "predictions": [{"model_version": PREFILL_VERSION, "score": 0.0, "result": result}]
                      if result else []})
    return Planned(tasks)


def _table_reader(kind: str) -> Callable[[Sequence[dict[str, Any]], dict[str, Any]], list[Reading]]:
    config = CONFIGS[kind][0]

    def read(result: Sequence[dict[str, Any]], data: dict[str, Any]) -> list[Reading]:
        chosen = read_choices_result(result, config)
        notes = {name: values for name, values in chosen.items() if name in ("comment", "brand")}
        extra: dict[str, Any] = {"question": data["question"]} if "question" in data else {}
        extra |= {name: "\n".join(values) for name, values in notes.items()}
        readings: list[Reading] = [(name, ", ".join(sorted(values)), None, extra) for name, values in chosen.items()
                                   if name not in notes and values]
        if not readings:
            raise ConfigError("the annotation chose nothing")
        return readings

    return read


@dataclass(frozen=True, slots=True)
class RoundKind:
    """How one kind of round makes tasks and reads annotations back."""

    plan: Callable[[Workspace, RoundSpec, set[str]], Planned]
    read: Callable[[Sequence[dict[str, Any]], dict[str, Any]], list[Reading]]


ROUND_KINDS: Registry[RoundKind] = Registry("round kind", BridgeError)
ROUND_KINDS.register("attributes")(RoundKind(_attribute_tasks, _read_attributes))
ROUND_KINDS.register("boxes")(RoundKind(_box_tasks, _read_boxes))
for _table_kind in TABLE_KINDS:
    ROUND_KINDS.register(_table_kind)(RoundKind(_table_tasks, _table_reader(_table_kind)))


# spurious-only: two questions per (image, pair), from the candidates table of the builder ----------
def _spurious_only_data(row: dict[str, Any]) -> dict[str, Any]:
    return {"unit": f"{row['item_id']}|{row['class_label']}|{row['cue']}", "class_label": row["class_label"],
            "cue": row["cue"]}


def _read_spurious_only(result: Sequence[dict[str, Any]], data: dict[str, Any]) -> list[Reading]:
    """Both answers of one task as readings of the pair's two question attributes."""
    chosen = read_choices_result(result, CONFIGS["spurious-only"][0])
    extra: dict[str, Any] = {"comment": "\n".join(chosen["comment"])} if chosen.get("comment") else {}
    readings: list[Reading] = []
    for question in SPURIOUS_ONLY_QUESTIONS:
        values = chosen.get(f"{question}_present", [])
        if len(values) != 1:
            raise ConfigError(f"answer both questions (is the cue there? is the class object there?); "
                              f"{question}: {values or 'no answer'}")
        readings.append((question_attribute(question, data["class_label"], data["cue"]), values[0], None, extra))
    return readings


TABLE_KINDS["spurious-only"] = TableKind(("item_id", "class_label", "cue"), _spurious_only_data, lambda row: [])
ROUND_KINDS.register("spurious-only")(RoundKind(_table_tasks, _read_spurious_only))


# component: one task per neural-PCA component of a class, its top images side by side ------------------
def _component_tasks(workspace: Workspace, spec: RoundSpec, present: set[str]) -> Planned:
    """One task per component (evidence attribute with an ``extra["component"]``) of ``spec.source``:
    its class's ``spec.max_attributes`` highest-scored images; the verdict is stored on the first."""
    components = (workspace.catalog.evidence_scan(source=spec.source, run_id=spec.evidence_run)
                  .filter(extra_field("component").is_not_null(), pl.col(NEGATIVE_OF).is_null())
                  .select(*KEY, score=pl.col("score").fill_null(0.0)))
    shown = components.select(pl.col("attribute").unique().sort().head(spec.budget)).collect()
    if not shown.height:
        raise BridgeError(f"no component evidence of {spec.source!r}: run `curate propose neural-pca` and push with "
                          "--source neural-pca")
    top = (components.join(shown.lazy(), on="attribute", how="semi")
           .sort("attribute", "score", "item_id", "source", "run_id", descending=[False, True, False, False, False])
           .group_by("attribute", maintain_order=True).head(spec.max_attributes).select(*KEY).collect())
    by_component: dict[str, list[Evidence]] = defaultdict(list)
    for record in _records(workspace, spec, top):
        by_component[record.attribute].append(record)
    tasks = []
    for attribute in shown["attribute"]:
        if attribute in present:
            continue
        rows = by_component[attribute]
        items = [workspace.catalog.item(r.item_id) for r in rows]
        data = {"item_id": items[0].item_id, "unit": attribute, "attribute": attribute,
                "class_label": str(rows[0].extra.get("class", items[0].label)),
                "images": [image_url(workspace, item) for item in items], "shown": [i.item_id for i in items]}
        tasks.append({"data": data, "meta": {"item_id": items[0].item_id, "round": spec.name,
                                             "evidence_runs": sorted({r.run_id for r in rows}), "overlap": 1},
                      "predictions": []})
    return Planned(tasks)


def _read_component(result: Sequence[dict[str, Any]], data: dict[str, Any]) -> list[Reading]:
    chosen = read_choices_result(result, CONFIGS["component"][0])
    verdict = chosen.get("component_verdict", [])
    if len(verdict) != 1:
        raise ConfigError(f"one verdict on the component is expected, got {verdict or 'none'}")
    kind = chosen.get("type", [None])[0] if verdict[0] == VerdictValue.SPURIOUS else None
    extra = {key: " ".join(chosen[key]) for key in ("name", "comment") if chosen.get(key)}
    return [(data["attribute"], verdict[0], kind, extra)]


ROUND_KINDS.register("component")(RoundKind(_component_tasks, _read_component))
