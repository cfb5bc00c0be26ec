"""``focus``: objects in common and uncommon settings (FOCUS).

Each image gets a time, a weather and a set of locations: from the majority of human verdicts of a
setting round (``curate annotate push --kind setting``) and, only with ``allow_machine``, from the
``focus-settings`` proposer's CLIP scores. The per-class "uncommon" table is data
(``data/focus_uncommon.json``, FOCUS's own; pass ``uncommon_table`` to use yours). The number of
uncommon attributes (0-3) = uncommon time + uncommon weather + any uncommon location, and it names
the partitions. The release also holds FOCUS's SQLite layout:
``annotations(file_name, category, time, weather, locations, humans)``, locations a sorted
", "-joined string (``humans`` is not annotated here and is left NULL).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.builders.base import Builder, BuildError, Release, image_name, register_builder
from curate.records import Setting, SettingKind
from curate.verdicts import resolved_verdicts
from curate.workspace import Workspace

DEFAULT_UNCOMMON = Path(__file__).with_name("data") / "focus_uncommon.json"
ATTRIBUTES = ("time", "weather", "locations")


def load_uncommon(path: Path = DEFAULT_UNCOMMON) -> dict[str, Any]:
    """The uncommon table: per attribute its values and, per class (or ``*``), the uncommon ones.

    >>> table = load_uncommon()
    >>> is_uncommon(table, "time", "frog", "night"), is_uncommon(table, "weather", "cat", "foggy")
    (False, True)
    """
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BuildError(f"cannot read the uncommon table {path}: {error}") from error
    for attribute in ATTRIBUTES:
        if attribute not in table or "uncommon" not in table[attribute]:
            raise BuildError(f"the uncommon table {path} lacks {attribute!r} with an 'uncommon' mapping")
    return table


def is_uncommon(table: dict[str, Any], attribute: str, label: str, value: str) -> bool:
    """Whether ``value`` of ``attribute`` is uncommon for class ``label``."""
    per_class = table[attribute]["uncommon"]
    return value in per_class.get(label, per_class.get("*", []))


@register_builder("focus")
@dataclass
class FocusBuilder(Builder):
    """Images with their setting, the number of uncommon attributes, and the partitions."""

    verdict_round: str | None = None
    allow_machine: bool = False
    evidence_source: str = "focus-settings"
    location_threshold: float = 0.5
    uncommon_table: str | None = None

    def defining_attributes(self) -> list[str]:
        return list(ATTRIBUTES)

    def _from_verdicts(self, workspace: Workspace) -> dict[str, dict[str, Any]]:
        votes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for verdict in resolved_verdicts(workspace, self.verdict_round):
            if verdict.attribute in ATTRIBUTES:
                votes[(verdict.item_id, verdict.attribute)][verdict.value] += 1
        settings: dict[str, dict[str, Any]] = defaultdict(dict)
        for (item_id, attribute), counts in votes.items():
            ranked = counts.most_common()
            if len(ranked) == 1 or ranked[0][1] > ranked[1][1]:
                value = ranked[0][0]
                settings[item_id][attribute] = sorted(v.strip() for v in value.split(",")) \
                    if attribute == "locations" else value
        return {item_id: s for item_id, s in settings.items() if len(s) == len(ATTRIBUTES)}

    def _from_evidence(self, workspace: Workspace) -> dict[str, dict[str, Any]]:
        """Per item with a time, a weather and a location scored: the best time and weather, and the
        locations at or above ``location_threshold`` (``["none"]`` when no location is)."""
        rows = workspace.catalog.evidence_scan(source=self.evidence_source).select(
            "item_id", "attribute", "run_id", "extra", score=pl.col("score").fill_null(0.0))
        pairs = rows.select("attribute", "extra").unique().collect()
        settings = [(attribute, extra, setting.kind.value, setting.value) for attribute, extra in pairs.iter_rows()
                    if (setting := Setting.parse(attribute, json.loads(extra))) is not None]
        kinds = pl.LazyFrame(settings, schema={"attribute": pl.String, "extra": pl.String, "kind": pl.String,
                                               "value": pl.String}, orient="row")
        # one score per (item, setting): the last run's; a tie is won by the value scored first (by attribute)
        scored = (rows.join(kinds, on=["attribute", "extra"]).sort("item_id", "attribute", "run_id")
                  .group_by("item_id", "kind", "value", maintain_order=True)
                  .agg(pl.col("score").last(), pl.col("attribute").first())
                  .filter(pl.col("kind").n_unique().over("item_id") == len(SettingKind)).collect())
        best = (scored.filter(pl.col("kind") != SettingKind.LOCATION.value)
                .sort("item_id", "kind", "score", "attribute", descending=[False, False, True, False])
                .unique(["item_id", "kind"], keep="first"))
        locations = (scored.filter((pl.col("kind") == SettingKind.LOCATION.value)
                                   & (pl.col("score") >= self.location_threshold))
                     .group_by("item_id").agg(pl.col("value").sort()))
        chosen: dict[str, dict[str, Any]] = defaultdict(lambda: {"locations": ["none"]})
        for item_id, kind, value in best.select("item_id", "kind", "value").iter_rows():
            chosen[item_id][kind] = value
        for item_id, values in locations.iter_rows():
            chosen[item_id]["locations"] = values
        return dict(chosen)

    def build(self, workspace: Workspace) -> Release:
        table = load_uncommon(Path(self.uncommon_table) if self.uncommon_table else DEFAULT_UNCOMMON)
        human = self._from_verdicts(workspace)
        machine = {k: v for k, v in self._from_evidence(workspace).items() if k not in human} \
            if self.allow_machine else {}
        settings = {**machine, **human}
        if not settings:
            raise BuildError("no image has a verified setting (time, weather and locations)"
                             + ("" if self.allow_machine else "; allow_machine uses focus-settings evidence"))
        rows, unknown = [], Counter[str]()
        for number, item_id in enumerate(sorted(settings)):
            item = workspace.catalog.item(item_id)
            label, setting = str(item.label), settings[item_id]
            if label not in table["locations"]["uncommon"] and "*" not in table["locations"]["uncommon"]:
                unknown[label] += 1
                continue
            flags = {"uncommon_time": is_uncommon(table, "time", label, setting["time"]),
                     "uncommon_weather": is_uncommon(table, "weather", label, setting["weather"]),
                     "uncommon_locations": any(is_uncommon(table, "locations", label, v) for v in setting["locations"])}
            rows.append({"item_id": item_id, "uri": item.uri, "file_name": image_name(f"{number:06d}", item.uri),
                         "category": label,
                         "time": setting["time"], "weather": setting["weather"], "locations": setting["locations"],
                         **flags, "n_uncommon": sum(flags.values()),
                         "labels_from": "human" if item_id in human else "machine"})
        if not rows:
            raise BuildError(f"no class is in the uncommon table (classes here: {sorted(unknown)})")
        frame = pl.DataFrame(rows)
        partitions = {int(n): c for n, c in frame.group_by("n_uncommon").len().sort("n_uncommon").iter_rows()}
        metadata = {"partitions": partitions, "uncommon_table": table.get("source", str(self.uncommon_table)),
                    "labels_from": dict(Counter(frame["labels_from"])), "classes_not_in_table": dict(unknown)}
        return Release(self.name, {"test": frame}, metadata, {"focus.sqlite": lambda path: _write_sqlite(frame, path)},
                       frame.select(pl.col("file_name").alias("name"), "uri"))


def _write_sqlite(frame: pl.DataFrame, path: Path) -> None:
    """FOCUS's released layout: ``annotations(file_name, category, time, weather, locations, humans)``."""
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE annotations (file_name TEXT, category TEXT, time TEXT, weather TEXT, "
                     "locations TEXT, humans TEXT)")
        conn.executemany("INSERT INTO annotations VALUES (?, ?, ?, ?, ?, NULL)",
                         [(r["file_name"], r["category"], r["time"], r["weather"], ", ".join(sorted(r["locations"])))
                          for r in frame.iter_rows(named=True)])
    conn.close()
