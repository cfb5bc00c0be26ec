"""Evidence in parquet shards: migration from schema v2, crash leftovers, compaction, scans."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from curate.records import Evidence, EvidenceRole
from curate.workspace import SCHEMA_VERSION, Workspace, schema
from curate.workspace import evidence as store_module
from curate.workspace.evidence import EVIDENCE_FOLDER


def _v2_workspace(root: Path, rows: list[Evidence]) -> None:
    """A workspace as curate wrote it at schema v2: the first two migration scripts, evidence rows in
    the SQLite ``evidence`` table written with v2's own statement."""
    root.mkdir()
    conn = sqlite3.connect(root / "curate.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for script in schema.MIGRATIONS[:2]:
        assert isinstance(script, str)
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.executemany(
        "INSERT OR REPLACE INTO evidence (item_id, attribute, source, run_id, role, taxonomy_type, "
        "score, boxes, model, model_version, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(e.item_id, e.attribute, e.source, e.run_id, e.role, e.taxonomy_type, e.score,
          json.dumps(e.boxes, sort_keys=True, separators=(",", ":")), e.model, e.model_version,
          json.dumps(e.extra, sort_keys=True, separators=(",", ":"))) for e in rows])
    conn.close()


def _rows(n: int) -> list[Evidence]:
    roles = list(EvidenceRole)
    return [Evidence(f"item{i // 4:04d}", f"cue {i % 4}", "detector" if i % 3 else "clip", f"propose-{i % 2}",
                     roles[i % 3], None if i % 5 == 0 else "Background", None if i % 7 == 0 else i / n,
                     [[1.0, 2.0, 3.5, 4.0, 0.25]] * (i % 3), None if i % 11 == 0 else "m", "v1",
                     {"n": i, "negative_of": "dog"} if i % 2 else {}) for i in range(n)]


def _key(e: Evidence) -> tuple[str, str, str, str]:
    return e.item_id, e.attribute, e.source, e.run_id


def test_a_v2_workspace_migrates_its_evidence_to_parquet_with_every_row_intact(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows(600)
    _v2_workspace(tmp_path / "old", rows)
    monkeypatch.setattr(schema, "MIGRATION_CHUNK_ROWS", 70)  # several shards per run
    workspace = Workspace.open(tmp_path / "old")
    assert workspace.schema_version == SCHEMA_VERSION
    tables = {r[0] for r in workspace.connect().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "evidence" not in tables
    assert sorted(workspace.catalog.evidence(), key=_key) == sorted(rows, key=_key)
    assert workspace.status().evidence == len(rows)
    shards = workspace.connect().execute("SELECT COUNT(*), SUM(rows) FROM evidence_shards").fetchone()
    assert shards[0] > 2 and shards[1] == len(rows)


def test_a_shard_renamed_but_never_registered_is_removed_on_open(workspace: Workspace,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    workspace.catalog.add_evidence([Evidence("i1", "grass", "clip", "r1", score=0.5)])
    real_register, placed = workspace.evidence._register, []

    def register_then_die(*args: object, **kwargs: object) -> Path:
        placed.append(real_register(*args, **kwargs))  # type: ignore[arg-type]
        raise KeyboardInterrupt  # the process dies with the file in place, before the commit

    monkeypatch.setattr(workspace.evidence, "_register", register_then_die)
    with pytest.raises(KeyboardInterrupt):
        workspace.catalog.add_evidence([Evidence("i2", "sky", "clip", "r1", score=0.9)])
    monkeypatch.undo()
    assert len(placed) == 1 and placed[0].exists()  # a whole file nobody registered
    assert [(e.item_id, e.score) for e in workspace.catalog.evidence()] == [("i1", 0.5)]  # readers skip it
    reopened = Workspace.open(workspace.root)
    assert not placed[0].exists()
    assert [(e.item_id, e.score) for e in reopened.catalog.evidence()] == [("i1", 0.5)]


def test_the_latest_row_of_a_key_wins_across_shards_and_compaction_keeps_it(workspace: Workspace,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MERGE_AFTER", 3)
    for score in (0.1, 0.2, 0.3, 0.4):  # four one-row shards; the third write merges the trailing three
        workspace.catalog.add_evidence([Evidence("i1", "grass", "clip", "r1", score=score),
                                        Evidence(f"i{score}", "grass", "clip", "r1", score=score)])
    assert [e.score for e in workspace.catalog.evidence(item_id="i1")] == [0.4]
    assert workspace.status().evidence == 5
    assert workspace.evidence.compact("r1")
    files = list((workspace.root / EVIDENCE_FOLDER).rglob("*.parquet"))
    assert len(files) == 1 and pl.read_parquet(files[0]).height == 5
    assert [e.score for e in workspace.catalog.evidence(item_id="i1")] == [0.4]
    assert not workspace.evidence.compact("r1")  # one shard: nothing to do


def test_scans_filter_by_run_source_attribute_version_and_class(workspace: Workspace) -> None:
    with workspace.transaction() as conn:
        for item_id, label in (("a", "cat"), ("b", "dog")):
            conn.execute("INSERT INTO items (item_id, uri, label, width, height, mode, format, size_bytes, run_id, "
                         "created_at) VALUES (?, '/x.png', ?, 1, 1, 'RGB', 'PNG', 1, 'r', 'now')", (item_id, label))
    workspace.catalog.add_evidence([
        Evidence("a", "grass", "clip", "r1", model_version="v1", score=0.1),
        Evidence("b", "grass", "clip", "r1", model_version="v1", score=0.2),
        Evidence("a", "sky", "detector", "r2", model_version="v2", score=0.3),
    ])
    scan = workspace.catalog.evidence_scan
    assert isinstance(scan(), pl.LazyFrame)
    assert scan(run_id="r2").collect()["attribute"].to_list() == ["sky"]
    assert scan(source="clip", class_label="dog").collect()["item_id"].to_list() == ["b"]
    assert scan(attribute="grass", model_version="v1").collect().height == 2
    assert scan(item_id="a").collect().height == 2
    assert scan(run_id="missing").collect().height == 0


def test_negatives_are_a_column_and_shards_from_before_it_read_the_same(workspace: Workspace) -> None:
    """Readers that tell a class's own rows from another class's negatives read the short
    ``negative_of`` column, not every row's JSON; a shard written before the column existed (the
    mark inside ``extra``) scans, alone or beside new shards, with the same values and records."""
    old = [Evidence(f"i{i}", "grass", "clip", "old", score=i / 10, extra={"n": i, "negative_of": "dog"} if i % 2
                    else {"n": i}) for i in range(6)]
    new = [replace(e, run_id="new") for e in old]
    workspace.catalog.add_evidence(old)
    workspace.catalog.add_evidence(new)
    shards = {row["run_id"]: workspace.root / row["path"]
              for row in workspace.connect().execute("SELECT run_id, path FROM evidence_shards")}
    stored = pl.read_parquet(shards["new"])
    assert stored["negative_of"].to_list() == [None, "dog"] * 3
    assert all("negative_of" not in json.loads(extra) for extra in stored["extra"])
    legacy = pl.read_parquet(shards["old"]).with_columns(  # the old run's shard as curate wrote it before
        extra=pl.struct("extra", "negative_of").map_elements(
            lambda r: json.dumps({**json.loads(r["extra"]), **({"negative_of": r["negative_of"]} if r["negative_of"]
                                                                else {})}, sort_keys=True, separators=(",", ":")),
            return_dtype=pl.String)).drop("negative_of")
    legacy.write_parquet(shards["old"])
    for run_id, rows in (("old", old), ("new", new), (None, old + new)):
        scan = workspace.catalog.evidence_scan(run_id=run_id).sort("run_id", "item_id").collect()
        expected = sorted(rows, key=lambda e: (e.run_id, e.item_id))
        assert scan["negative_of"].to_list() == [e.extra.get("negative_of") for e in expected]
    assert sorted(workspace.catalog.evidence(), key=lambda e: (e.run_id, e.item_id)) == sorted(
        old + new, key=lambda e: (e.run_id, e.item_id))
