"""The ``ray`` executor on a local Ray cluster the tests start (one per session): the same rows as
the ``local`` executor, and a SIGKILLed Ray-executed proposal resumes to the same rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY_CLIP_CONFIG, distinct_image

from curate.executors import ExecutorError
from curate.ingest import FolderSource, ingest
from curate.propose import ProposeError, make_proposer, propose
from curate.records import Cue, Evidence
from curate.workspace import Workspace

CUES = {"dog": ["leash", "ball"], "cat": ["yarn", "ball"]}  # class-specific cues: negative pools have work
# the CLI with tiny-clip registered, as a process of its own (to be killed)
CLI = ("import sys; from curate.models import ModelSpec, add_model; "
       f"add_model(ModelSpec('tiny-clip', 'open_clip', {str(TINY_CLIP_CONFIG)!r}, 'random')); "
       "from curate.cli import app; sys.argv[0] = 'curate'; app()")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A two-CPU Ray cluster on 127.0.0.1 for the session; yields its address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread here, as in a one-CPU Ray actor: float sums depend on the thread count, so
    rows are bit-identical across executors only with the same one (restored after the test)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pool(root: Path, tmp_path: Path, per_class: int) -> Workspace:
    """A workspace of ``per_class`` images of dog and cat (the same images for every ``root``)."""
    images = tmp_path / "images"
    for label, offset in (("dog", 0), ("cat", 100)):
        (images / label).mkdir(parents=True, exist_ok=True)
        for seed in range(offset, offset + per_class):
            if not (images / label / f"{seed}.png").exists():
                distinct_image(seed, (48, 40)).save(images / label / f"{seed}.png")
    workspace = Workspace.init(root)
    ingest(workspace, FolderSource(images), progress=False)
    workspace.catalog.add_cues([Cue(label, attribute, "llm", "propose-llm", "Co-occurring Objects")
                                for label, attributes in CUES.items() for attribute in attributes])
    return workspace


def _rows(workspace: Workspace) -> list[tuple[object, ...]]:
    rows: list[Evidence] = workspace.catalog.evidence(source="clip")
    return sorted((r.item_id, r.attribute, r.role, r.taxonomy_type, r.score, r.boxes, r.model, r.model_version,
                   sorted(r.extra.items())) for r in rows)


@pytest.mark.timeout(900)
def test_ray_and_local_executors_store_the_same_rows(tmp_path: Path, tiny_clip: str, ray_cluster: str,
                                                    one_thread: None) -> None:
    rows, counts = {}, {}
    for executor in ("local", "ray"):
        workspace = _pool(tmp_path / executor, tmp_path, per_class=3)
        result = propose(workspace, make_proposer("clip", model=tiny_clip, batch_size=2, executor=executor),
                         progress=False)
        rows[executor], counts[executor] = _rows(workspace), result.counts
        assert workspace.runs.get(result.run.run_id).models == {tiny_clip: "curate-tiny-clip@random"}
    # each image scored for its own class's cues and for the other class's cue it lacks, once
    assert counts["local"] == {"embeddings_computed": 6, "evidence": 6 * 3, "items": 6, "negative_items": 6}
    assert rows["ray"] == rows["local"] and counts["ray"] == counts["local"]


def test_ray_executor_errors_are_one_line(tmp_path: Path, tiny_clip: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from curate.executors.ray_data import connect

    with pytest.raises(ExecutorError, match="unknown executor 'spark'; known: local, ray"):
        make_proposer("clip", executor="spark")
    with pytest.raises(ProposeError, match="options of the ray executor"):
        make_proposer("clip", address="127.0.0.1:6379")
    with pytest.raises(ProposeError, match="has no option executor"):
        make_proposer("priors", executor="ray")
    with pytest.raises(ExecutorError, match="actors is how many model copies run at once"):
        make_proposer("clip", executor="ray", actors=0)
    # where a proposal runs is not part of its run config: a run killed under one executor resumes under the other
    assert make_proposer("clip", executor="ray", actors=4).options() == make_proposer("clip").options()
    workspace = _pool(tmp_path / "ws", tmp_path, per_class=1)
    with pytest.raises(ExecutorError, match=r"no Ray cluster answers at 127\.0\.0\.1:9 "):
        propose(workspace, make_proposer("clip", model=tiny_clip, executor="ray", address="127.0.0.1:9"),
                progress=False)
    assert workspace.catalog.evidence() == []
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ExecutorError, match=r"needs Ray: pip install 'curate\[ray\]'"):
        connect(None)


@pytest.mark.timeout(900)
def test_a_killed_ray_proposal_resumes_to_the_rows_of_an_uninterrupted_one(tmp_path: Path, tiny_clip: str,
                                                                           ray_cluster: str, one_thread: None) -> None:
    workspace = _pool(tmp_path / "killed", tmp_path, per_class=5)
    command = [sys.executable, "-c", CLI, "propose", "clip", "--model", tiny_clip, "--executor", "ray",
               "--address", ray_cluster, "--set", "batch_size=1", "-w", str(workspace.root), "-q"]
    killed = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not workspace.catalog.evidence(source="clip") and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert killed.poll() is None, killed.communicate()[0].decode()[-2000:]  # still running: killed mid-run
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    stored = len(workspace.catalog.evidence(source="clip"))
    assert 0 < stored < 10 * 3
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed (attempt 2)" in again.stdout

    reference = _pool(tmp_path / "uninterrupted", tmp_path, per_class=5)
    expected = propose(reference, make_proposer("clip", model=tiny_clip, batch_size=1), progress=False)
    rows = _rows(workspace)
    assert rows == _rows(reference) and len({row[:2] for row in rows}) == len(rows) == 10 * 3
    (run,) = [run for run in workspace.runs.list("propose") if run.config["proposer"] == "clip"]
    assert {key: run.counts[key] for key in ("evidence", "items", "negative_items")} == \
        {key: expected.counts[key] for key in ("evidence", "items", "negative_items")}
