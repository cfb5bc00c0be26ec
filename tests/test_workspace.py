from __future__ import annotations

import multiprocessing
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from curate.records import Evidence, EvidenceRole, Item, Quarantined, RunStatus, SourceRef, Verdict
from curate.workspace import (
    SCHEMA_VERSION,
    CacheKey,
    RunNotFoundError,
    SchemaTooNewError,
    Workspace,
    WorkspaceNotFoundError,
    schema,
)


def test_init_creates_a_wal_catalogue_at_the_current_schema(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    assert ws.schema_version == SCHEMA_VERSION
    assert ws.connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in ws.connect().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"items", "sources", "item_sources", "quarantine", "runs", "evidence_shards", "verdicts", "cache"} <= tables
    assert all((ws.root / folder).is_dir() for folder in ("blobs", "tables", "cache"))
    assert Workspace.init(tmp_path / "ws").schema_version == SCHEMA_VERSION  # idempotent


def test_open_refuses_a_folder_without_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceNotFoundError, match="curate init"):
        Workspace.open(tmp_path)


def test_open_refuses_a_workspace_from_a_newer_curate(workspace: Workspace) -> None:
    workspace.connect().execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNewError, match="upgrade curate"):
        Workspace.open(workspace.root)


def test_open_applies_new_migrations_once(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    added = "CREATE TABLE embeddings_index (item_id TEXT PRIMARY KEY, part TEXT NOT NULL)"
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, added))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    reopened = Workspace.open(workspace.root)
    assert reopened.schema_version == SCHEMA_VERSION + 1
    reopened.connect().execute("INSERT INTO embeddings_index VALUES ('a', 'p0')")
    assert Workspace.open(workspace.root).schema_version == SCHEMA_VERSION + 1  # not applied twice


def _counts_by_scan(conn: sqlite3.Connection) -> tuple[int, dict[str | None, int], dict[str, int], int]:
    """Items, items per class, references per source and label conflicts, counted from the tables."""
    return (conn.execute("SELECT COUNT(*) FROM items").fetchone()[0],
            dict(conn.execute("SELECT label, COUNT(*) FROM items GROUP BY label").fetchall()),
            dict(conn.execute("SELECT source_id, COUNT(*) FROM item_sources GROUP BY source_id").fetchall()),
            conn.execute("SELECT COUNT(*) FROM (SELECT item_id FROM item_sources WHERE label IS NOT NULL "
                         "GROUP BY item_id HAVING COUNT(DISTINCT label) > 1)").fetchone()[0])


def _counts_of_status(workspace: Workspace) -> tuple[int, dict[str | None, int], dict[str, int], int]:
    status = workspace.status()
    return (status.items, {None if label == "<unlabelled>" else label: n for label, n in status.per_class.items()},
            {s.source.source_id: s.references for s in status.sources if s.references}, status.label_conflicts)


def _ingested(workspace: Workspace, source_id: str, refs: list[tuple[int, str, str | None]],
              quarantined: list[str] = ()) -> None:  # type: ignore[assignment]
    """Record references (item number, locator, label) and quarantined locators as an ingest does."""
    run = workspace.runs.start("ingest", "folder", {"refs": refs, "quarantined": list(quarantined)})
    workspace.catalog.record_ingest_batch(run.run_id, [
        (Item(f"{n:064x}", "img.png", label, 4, 4, "RGB", "PNG", 75),
         SourceRef(source_id, locator, f"{n:064x}", "f", label)) for n, locator, label in refs], [
        Quarantined(source_id, locator, "corrupt", "cannot decode", "f") for locator in quarantined])


def test_a_v3_workspace_gets_status_counts_kept_by_every_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """A workspace written at schema v3 (the code before v4: its migrations only) is counted once on
    open; from then on the catalogue keeps the counts as items and references are written, relabelled,
    moved to other bytes and quarantined, and status reads them instead of scanning the items."""
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:3])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 3)
    old = Workspace.init(tmp_path / "ws")
    folder, manifest = (old.catalog.register_source(kind, str(tmp_path / kind), {}).source_id
                        for kind in ("folder", "manifest"))
    _ingested(old, folder, [(0, "cat/0.png", "cat"), (0, "dog/0.png", "dog"), (1, "cat/1.png", "cat"),
                            (2, "x/2.png", None), (3, "dog/3.png", "dog")])
    _ingested(old, manifest, [(1, "row-1", "dog"), (3, "row-3", "dog"), (4, "row-4", None)])
    before = _counts_by_scan(old.connect())
    assert old.schema_version == 3 and before[3] == 2  # items 0 and 1
    tables = {name: old.connect().execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall()  # noqa: S608
              for name in ("items", "item_sources", "sources", "quarantine")}
    old.close()
    monkeypatch.undo()

    workspace = Workspace.open(tmp_path / "ws")
    assert workspace.schema_version == SCHEMA_VERSION
    conn = workspace.connect()
    assert {name: conn.execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall() for name in tables} == tables  # noqa: S608
    assert _counts_of_status(workspace) == _counts_by_scan(conn) == before
    _ingested(workspace, manifest, [(4, "row-4", "cat"), (5, "row-5", "cat")])  # a label for unlabelled bytes
    _ingested(workspace, folder, [(6, "cat/0.png", "cat"), (9, "x/2.png", "dog")])  # files whose bytes changed
    _ingested(workspace, manifest, [], quarantined=["row-1"])  # a reference quarantined: its row goes
    _ingested(workspace, folder, [(7, "bird/7.png", "bird")])
    with workspace.transaction():  # item 2's bytes are no source's any more: pruned
        assert conn.execute("DELETE FROM items WHERE item_id NOT IN (SELECT item_id FROM item_sources)").rowcount == 1
    after = _counts_by_scan(conn)
    assert after[:2] == (8, {"cat": 5, "dog": 2, "bird": 1}) and after[3] == 0  # items 0 and 1 agree now
    queries: list[str] = []
    conn.set_trace_callback(queries.append)
    assert _counts_of_status(workspace) == after
    conn.set_trace_callback(None)
    assert not [query for query in queries if re.search(r"\b(items|item_sources)\b", query)], queries


def test_an_upgrade_on_open_says_so_and_only_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade can take a while on a large workspace (v4 counts a million items in about 24 s):
    opening shows what it is doing while it runs; a new workspace and an up-to-date one show nothing."""
    shown: list[str] = []

    @contextmanager
    def recorded(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
        if enabled:
            shown.append(description)
        yield lambda steps=1: None

    monkeypatch.setattr(schema, "progress_bar", recorded)
    Workspace.init(tmp_path / "ws").close()
    assert shown == []
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, "CREATE TABLE added_later (x INTEGER)"))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    Workspace.open(tmp_path / "ws").close()
    Workspace.open(tmp_path / "ws").close()
    assert shown == [f"upgrading the workspace catalogue to schema v{SCHEMA_VERSION + 1} (once)"]


def test_a_failing_migration_leaves_the_previous_version(workspace: Workspace,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    broken = "CREATE TABLE half_done (x INTEGER); CREATE TABLE items (duplicate INTEGER)"
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(sqlite3.OperationalError):
        Workspace.open(workspace.root)
    conn = sqlite3.connect(workspace.database)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None


def test_a_failed_transaction_writes_nothing(workspace: Workspace) -> None:
    with pytest.raises(RuntimeError), workspace.transaction() as conn:
        conn.execute("INSERT INTO meta VALUES ('k', 'v')")
        raise RuntimeError("crash mid-write")
    assert workspace.connect().execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 0


# runs -------------------------------------------------------------------------------------------
def test_runs_record_config_code_version_models_and_counts(workspace: Workspace) -> None:
    run = workspace.runs.start("propose", "clip demo", {"model": "ViT-B-32", "batch": 8})
    workspace.runs.set_models(run.run_id, {"ViT-B-32": "openai"})
    with workspace.transaction() as conn:
        workspace.runs.add_counts(conn, run.run_id, {"evidence": 5})
        workspace.runs.add_counts(conn, run.run_id, {"evidence": 2, "failed": 1})
    done = workspace.runs.finish(run.run_id, RunStatus.COMPLETED)
    assert done.status == RunStatus.COMPLETED and done.finished_at is not None
    assert done.counts == {"evidence": 7, "failed": 1}
    assert done.models == {"ViT-B-32": "openai"}
    assert done.config == {"model": "ViT-B-32", "batch": 8}
    assert done.code_version.startswith("0.")
    assert workspace.runs.get(run.run_id[:-2]).run_id == run.run_id  # unique prefix
    assert [r.run_id for r in workspace.runs.list("propose")] == [run.run_id]
    assert workspace.runs.list("ingest") == []


def test_an_unknown_run_id_is_a_clear_error(workspace: Workspace) -> None:
    with pytest.raises(RunNotFoundError):
        workspace.runs.get("ingest-nothing")


_START_RUN = ("import sys, time; from curate.workspace import Workspace; "
              "run = Workspace.open(sys.argv[1]).runs.start('ingest', 'x', {'path': '/data'}); "
              "print(run.run_id, flush=True); time.sleep(float(sys.argv[2]))")


def _run_in_process(workspace: Workspace, seconds: float) -> tuple[subprocess.Popen[str], str]:
    """A process that starts the run ``ingest x {'path': '/data'}``, holds it ``seconds``, then exits
    without finishing it (as a killed process would)."""
    process = subprocess.Popen([sys.executable, "-c", _START_RUN, str(workspace.root), str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def _dead_run(workspace: Workspace) -> str:
    process, run_id = _run_in_process(workspace, 0)
    process.wait(timeout=60)
    return run_id


def test_a_dead_run_reads_as_interrupted_and_the_same_config_resumes_it(workspace: Workspace) -> None:
    run = workspace.runs.get(_dead_run(workspace))
    assert run.status == RunStatus.INTERRUPTED
    other = workspace.runs.start("ingest", "x", {"path": "/elsewhere"})
    assert other.run_id != run.run_id
    resumed = workspace.runs.start("ingest", "x", {"path": "/data"})
    assert resumed.run_id == run.run_id and resumed.attempts == 2
    assert resumed.status == RunStatus.RUNNING


def test_a_live_run_is_held_by_its_process_and_released_when_it_dies(workspace: Workspace) -> None:
    process, run_id = _run_in_process(workspace, 60)
    try:
        assert workspace.runs.get(run_id).status == RunStatus.RUNNING
        beside = workspace.runs.start("ingest", "x", {"path": "/data"})  # the same config, while it runs
        assert beside.run_id != run_id
        workspace.runs.finish(beside.run_id, RunStatus.FAILED, "made only to look")
    finally:
        process.kill()
        process.wait()
    assert workspace.runs.get(run_id).status == RunStatus.INTERRUPTED
    assert workspace.runs.start("ingest", "x", {"path": "/data"}).run_id in (run_id, beside.run_id)


@pytest.mark.parametrize("fault", ["host name changed", "pid reused"])
def test_a_dead_run_resumes_after_a_host_name_change_or_pid_reuse(workspace: Workspace, fault: str) -> None:
    run_id = _dead_run(workspace)
    host, pid = ("old-container-7f3a", 4242) if fault == "host name changed" else (socket.gethostname(), os.getpid())
    with workspace.transaction() as conn:  # the container restarted under a new name / the pid is live again
        conn.execute("UPDATE runs SET host = ?, pid = ? WHERE run_id = ?", (host, pid, run_id))
    assert workspace.runs.list("ingest")[0].status == RunStatus.INTERRUPTED
    resumed = workspace.runs.start("ingest", "x", {"path": "/data"})
    assert resumed.run_id == run_id and resumed.attempts == 2


def test_a_completed_run_is_not_resumed(workspace: Workspace) -> None:
    first = workspace.runs.start("ingest", "x", {"path": "/data"})
    workspace.runs.finish(first.run_id, RunStatus.COMPLETED)
    assert workspace.runs.start("ingest", "x", {"path": "/data"}).run_id != first.run_id


# cache ------------------------------------------------------------------------------------------
def test_cache_keys_depend_on_model_version_params_and_input(workspace: Workspace) -> None:
    key = CacheKey.make("llm", "gpt-4o-mini", "v1", {"temperature": 0}, "list cues for dog")
    workspace.cache.put_json(key, {"cues": ["leash"]})
    assert workspace.cache.get_json(key) == {"cues": ["leash"]}
    for other in (
        CacheKey.make("llm", "gpt-4o", "v1", {"temperature": 0}, "list cues for dog"),
        CacheKey.make("llm", "gpt-4o-mini", "v2", {"temperature": 0}, "list cues for dog"),
        CacheKey.make("llm", "gpt-4o-mini", "v1", {"temperature": 1}, "list cues for dog"),
        CacheKey.make("llm", "gpt-4o-mini", "v1", {"temperature": 0}, "list cues for cat"),
    ):
        assert workspace.cache.get(other) is None
    assert Workspace.open(workspace.root).cache.get_json(key) == {"cues": ["leash"]}  # persisted


def test_large_cache_values_live_in_files_and_survive_reopen(workspace: Workspace) -> None:
    key = CacheKey.make("clip", "ViT-B-32", "v1", {}, b"image")
    blob = bytes(range(256)) * 1024
    workspace.cache.put(key, blob)
    assert any((workspace.root / "cache").rglob(key.digest))
    assert Workspace.open(workspace.root).cache.get(key) == blob
    assert workspace.cache.stats().entries == {"clip": 1}
    assert workspace.cache.clear("clip") == 1 and workspace.cache.get(key) is None
    assert not any((workspace.root / "cache").rglob(key.digest))


# side tables ------------------------------------------------------------------------------------
def test_side_tables_round_trip_whole_and_in_parts(workspace: Workspace) -> None:
    frame = pl.DataFrame({"item_id": ["a", "b"], "embedding": [[0.1, 0.2], [0.3, 0.4]]})
    workspace.tables.write("embeddings-whole", frame)
    assert workspace.tables.read("embeddings-whole").equals(frame)
    workspace.tables.write("embeddings", frame.head(1), part="run1-0000")
    workspace.tables.write("embeddings", frame.tail(1), part="run1-0001")
    assert workspace.tables.read("embeddings").sort("item_id").equals(frame)
    assert workspace.tables.names() == ["embeddings", "embeddings-whole"]
    assert not list((workspace.root / "tables").rglob("*.tmp"))
    with pytest.raises(ValueError, match="table names"):
        workspace.tables.write("../escape", frame)
    with pytest.raises(KeyError):
        workspace.tables.read("missing")


# evidence and verdicts --------------------------------------------------------------------------
def _add_item(workspace: Workspace, item_id: str) -> None:
    with workspace.transaction() as conn:
        conn.execute("INSERT INTO items (item_id, uri, width, height, mode, format, size_bytes, run_id, "
                     "created_at) VALUES (?, '/x.png', 1, 1, 'RGB', 'PNG', 1, 'r', 'now')", (item_id,))


def test_evidence_and_verdicts_are_stored_apart_and_keyed(workspace: Workspace) -> None:
    _add_item(workspace, "i1")
    claim = Evidence("i1", "water background", "detector", "propose-1", EvidenceRole.SPURIOUS,
                     "Background", 0.8, [[0, 0, 4, 4, 0.8]], "yolov8s-worldv2", "8.4")
    assert workspace.catalog.add_evidence([claim, claim]) == 2
    assert workspace.catalog.evidence(item_id="i1") == [claim]  # the key holds one row
    decision = Verdict("i1", "water background", "ann-1", "round-1", "spurious", "Background")
    workspace.catalog.add_verdicts([decision])
    assert workspace.catalog.verdicts("round-1") == [decision]
    status = workspace.status()
    assert (status.evidence, status.verdicts) == (1, 1)


# two processes ----------------------------------------------------------------------------------
def _write_many(root: str, worker: int, count: int) -> None:
    ws = Workspace.open(root)
    for index in range(count):
        key = CacheKey.make("test", "m", "v", {"worker": worker}, str(index))
        ws.cache.put_json(key, index)
        run = ws.runs.start("test", f"w{worker}-{index}", {"worker": worker, "index": index})
        ws.runs.finish(run.run_id, RunStatus.COMPLETED)


def test_two_processes_writing_one_workspace_lose_nothing(workspace: Workspace) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(workspace.root), w, 60)) for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    assert workspace.cache.stats().entries == {"test": 120}
    assert len(workspace.runs.list("test")) == 120
    assert workspace.connect().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
