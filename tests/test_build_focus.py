"""FOCUS-style settings: partition counts on a constructed table, the SQLite export, machine labels."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import distinct_image

from curate.builders import BuildError, build, make_builder
from curate.ingest import FolderSource, ingest
from curate.propose import make_proposer, propose
from curate.records import SETTING, Evidence, Setting, SettingKind, Verdict
from curate.workspace import Workspace

SETTINGS = [  # class, time, weather, locations, expected number of uncommon attributes
    ("cat", "day", "sunny", "grass", 0),
    ("cat", "night", "sunny", "indoors", 1),
    ("cat", "night", "foggy", "forest", 3),
    ("frog", "night", "raining", "water", 1),  # night is common for frogs
    ("dog", "day", "snowing", "snow, grass", 2),
]


@pytest.fixture
def settings(workspace: Workspace, tmp_path: Path) -> tuple[Workspace, list[str]]:
    for index, (label, *_rest) in enumerate([*SETTINGS, ("dog", "", "", "", 0)]):
        (tmp_path / "img" / label).mkdir(parents=True, exist_ok=True)
        distinct_image(900 + index, (12, 12)).save(tmp_path / "img" / label / f"{index}.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    ids = {int(ref.locator.split("/")[1].split(".")[0]): ref.item_id for ref in workspace.catalog.references()}
    rows = []
    for index, (_, time, weather, locations, _) in enumerate(SETTINGS):
        for annotator in ("ann", "bob"):
            rows += [Verdict(ids[index], "time", annotator, "s1", time),
                     Verdict(ids[index], "weather", annotator, "s1", weather),
                     Verdict(ids[index], "locations", annotator, "s1", locations)]
    last = ids[len(SETTINGS)]  # the extra dog: annotators disagree on the weather
    rows += [Verdict(last, "time", "ann", "s1", "day"), Verdict(last, "locations", "ann", "s1", "grass"),
             Verdict(last, "weather", "ann", "s1", "sunny"), Verdict(last, "weather", "bob", "s1", "raining")]
    workspace.catalog.add_verdicts(rows)
    return workspace, [ids[i] for i in range(len(SETTINGS) + 1)]


def test_partitions_by_hand_and_the_sqlite_layout(settings: tuple[Workspace, list[str]], tmp_path: Path) -> None:
    workspace, ids = settings
    result = build(workspace, make_builder("focus", verdict_round="s1"), tmp_path / "focus")
    table = result.release.tables["test"]
    assert result.release.metadata["partitions"] == {0: 1, 1: 2, 2: 1, 3: 1}
    by_item = {row["item_id"]: row for row in table.iter_rows(named=True)}
    for index, (*_, expected) in enumerate(SETTINGS):
        assert by_item[ids[index]]["n_uncommon"] == expected
    assert ids[-1] not in by_item  # a tie on the weather leaves the image out
    cat = by_item[ids[2]]
    assert (cat["uncommon_time"], cat["uncommon_weather"], cat["uncommon_locations"]) == (True, True, True)
    with sqlite3.connect(tmp_path / "focus" / "focus.sqlite") as conn:
        rows = conn.execute("SELECT file_name, category, time, weather, locations, humans FROM annotations "
                            "ORDER BY file_name").fetchall()
    assert len(rows) == 5 and ("dog", "day", "snowing", "grass, snow", None) in [r[1:] for r in rows]


def test_a_users_uncommon_table_replaces_focus_own(settings: tuple[Workspace, list[str]], tmp_path: Path) -> None:
    workspace, _ = settings
    custom = tmp_path / "uncommon.json"
    custom.write_text('{"time": {"uncommon": {"*": []}}, "weather": {"uncommon": {"*": ["sunny"]}},'
                      ' "locations": {"uncommon": {"*": []}}}')
    release = make_builder("focus", verdict_round="s1", uncommon_table=str(custom)).build(workspace)
    assert release.metadata["partitions"] == {0: 3, 1: 2}  # only the two sunny images are uncommon now


def test_machine_settings_from_clip_only_when_allowed(workspace: Workspace, tmp_path: Path, tiny_clip: str) -> None:
    for index in range(3):
        (tmp_path / "m" / "cat").mkdir(parents=True, exist_ok=True)
        distinct_image(950 + index, (16, 16)).save(tmp_path / "m" / "cat" / f"{index}.png")
    ingest(workspace, FolderSource(tmp_path / "m"), progress=False)
    result = propose(workspace, make_proposer("focus-settings", model=tiny_clip), progress=False)
    assert result.counts["evidence"] == 3 * (2 + 6 + 8)
    rows = workspace.catalog.evidence(source="focus-settings")
    settings = [Setting.of(r) for r in rows]  # each row carries its (kind, value) pair, typed
    assert all(r.extra[SETTING] == {"kind": s.kind, "value": s.value} for r, s in zip(rows, settings, strict=True))
    assert Counter(s.kind for s in settings) == {SettingKind.TIME: 6, SettingKind.WEATHER: 18, SettingKind.LOCATION: 24}
    times = [r.score for r, s in zip(rows, settings, strict=True) if s.kind is SettingKind.TIME]
    assert np.allclose(np.add.reduceat(times, range(0, len(times), 2)), 1.0)  # a softmax per image
    with pytest.raises(BuildError, match="allow_machine"):
        make_builder("focus").build(workspace)
    release = make_builder("focus", allow_machine=True).build(workspace)
    assert release.metadata["labels_from"] == {"machine": 3} and sum(release.metadata["partitions"].values()) == 3


def test_a_setting_is_read_from_its_record_and_from_rows_stored_before_it_was_typed() -> None:
    typed = Setting(SettingKind.WEATHER, "partly cloudy").evidence("ab" * 32, "focus-settings", "propose-1", 0.5)
    assert Setting.of(typed) == Setting(SettingKind.WEATHER, "partly cloudy") and typed.taxonomy_type is None
    assert Setting(SettingKind.LOCATION, "sand").evidence("ab" * 32, "s", "r", 0.5).taxonomy_type == "Background"
    older = Evidence("ab" * 32, "location:sand", "focus-settings", "propose-0", score=0.9)
    assert Setting.of(older) == Setting(SettingKind.LOCATION, "sand")
    assert Setting.of(Evidence("ab" * 32, "grass", "clip", "propose-0")) is None
    assert Setting.of(Evidence("ab" * 32, "logo:nike", "clip", "propose-0")) is None
