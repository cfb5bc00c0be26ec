"""SIGKILL at a random batch of `curate propose clip`: the same command again resumes the same run and
ends with the evidence (parquet shards) and embeddings of a run that was never interrupted, none twice."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from faultkit import IMAGES, intact, make_image_folder

from curate.ingest import FolderSource, ingest
from curate.propose import make_proposer, propose
from curate.records import RunStatus
from curate.workspace import Workspace
from curate.workspace.tables import embeddings_table

COMMAND = ("from curate.models import ModelSpec, add_model; import sys; "
           "add_model(ModelSpec('tiny-clip', 'open_clip', sys.argv[1], 'random', description='test')); "
           "from curate.cli import app; sys.argv = ['curate', *sys.argv[2:]]; app()")


def _evidence(database: Path) -> int:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT COALESCE(SUM(rows), 0) FROM evidence_shards").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _prepared(root: Path, images: Path) -> Workspace:
    workspace = Workspace.init(root)
    ingest(workspace, FolderSource(images), progress=False)
    propose(workspace, make_proposer("priors", types=("Orientation",)), progress=False)
    return workspace


def _evidence_rows(workspace: Workspace) -> list[tuple[object, ...]]:
    return sorted((e.item_id, e.attribute, e.role, e.taxonomy_type, round(float(e.score or 0), 5))
                  for e in workspace.catalog.evidence(source="clip"))


def test_sigkill_at_a_random_batch_of_propose_clip_then_resume(tmp_path: Path, tiny_clip: str) -> None:
    from conftest import TINY_CLIP_CONFIG

    images = make_image_folder(tmp_path)
    options = {"model": tiny_clip, "batch_size": 4, "negatives": 0}
    reference = _prepared(tmp_path / "reference", images)
    propose(reference, make_proposer("clip", **options), progress=False)
    expected = _evidence_rows(reference)
    assert len(expected) == IMAGES * 5  # five Orientation priors per image

    workspace = _prepared(tmp_path / "ws", images)
    seed = int(os.environ.get("CURATE_FAULT_SEED", random.randrange(1_000_000)))
    batch = random.Random(seed).randrange(1, IMAGES // 4 // 2)
    print(f"killing after batch {batch} (CURATE_FAULT_SEED={seed})")
    process = subprocess.Popen(
        [sys.executable, "-c", COMMAND, str(TINY_CLIP_CONFIG), "propose", "clip", "--model", tiny_clip,
         "--set", "batch_size=4", "--set", "negatives=0", "-w", str(workspace.root), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while _evidence(workspace.database) < batch * 4 * 5:
        assert process.poll() is None, process.stderr.read() if process.stderr else "propose ended early"
        assert time.monotonic() < deadline, "propose made no progress"
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stored = _evidence(workspace.database)
    assert 0 < stored < len(expected), "the kill came too late to test resuming"
    [killed] = [r for r in workspace.runs.list("propose") if r.name == "clip"]
    assert killed.status == RunStatus.INTERRUPTED and intact(workspace)

    resumed = propose(workspace, make_proposer("clip", **options), progress=False)
    assert resumed.run.run_id == killed.run_id and resumed.run.attempts == 2
    assert _evidence_rows(workspace) == expected  # nothing lost, nothing twice
    stored_files = workspace.evidence.scan(source="clip").collect()
    assert stored_files.height == stored_files.select("item_id", "attribute").n_unique() == len(expected)
    registered = {row[0] for row in workspace.connect().execute("SELECT path FROM evidence_shards")}
    on_disk = {p.relative_to(workspace.root).as_posix() for p in (workspace.root / "evidence").rglob("*.parquet")}
    assert on_disk == registered and len(registered) == 1  # the clip run compacted, no leftovers
    embeddings = workspace.tables.read(embeddings_table(tiny_clip))
    # no embedding twice; those the killed process held unflushed are computed again when next needed
    assert embeddings.height == embeddings["item_id"].n_unique() <= IMAGES
    assert intact(workspace) and not list(workspace.root.rglob("*.tmp"))
