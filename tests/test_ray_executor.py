"""The ``ray`` executor on a local Ray cluster the tests start once per session (every test here
that needs Ray, the killed CLI included, uses that one): each image-level proposer stores the same
rows as under the ``local`` executor, and a SIGKILLed Ray-executed proposal resumes to the same rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_CLIP_CONFIG, distinct_image
from llm_standin import standin

from curate.executors import ExecutorError
from curate.images import open_image
from curate.ingest import FolderSource, ingest
from curate.propose import ProposeError, make_proposer, propose
from curate.propose.llm_common import FAILURES_TABLE
from curate.propose.vlm import data_url
from curate.records import Cue, Evidence, RunStatus
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


def _rows(workspace: Workspace, source: str = "clip") -> list[tuple[object, ...]]:
    rows: list[Evidence] = workspace.catalog.evidence(source=source)
    return sorted((r.item_id, r.attribute, r.role, r.taxonomy_type, r.score, r.boxes, r.model, r.model_version,
                   sorted(r.extra.items())) for r in rows)


def _local_and_ray(tmp_path: Path, name: str, per_class: int, **options: Any) -> dict[str, tuple[Workspace, Any]]:
    """The proposal ``name`` under each executor, each in a fresh workspace of the same images:
    per executor, the workspace and the proposal's result."""
    done = {}
    for executor in ("local", "ray"):
        workspace = _pool(tmp_path / executor, tmp_path, per_class)
        done[executor] = workspace, propose(workspace, make_proposer(name, executor=executor, **options),
                                            progress=False)
    return done


@pytest.mark.timeout(900)
def test_ray_and_local_executors_store_the_same_rows(tmp_path: Path, tiny_clip: str, ray_cluster: str,
                                                    one_thread: None) -> None:
    done = _local_and_ray(tmp_path, "clip", 3, model=tiny_clip, batch_size=2)
    (local, expected), (ray, result) = done["local"], done["ray"]
    assert ray.runs.get(result.run.run_id).models == {tiny_clip: "curate-tiny-clip@random"}
    # each image scored for its own class's cues and for the other class's cue it lacks, once
    assert expected.counts == {"embeddings_computed": 6, "evidence": 6 * 3, "items": 6, "negative_items": 6}
    assert _rows(ray) == _rows(local) and result.counts == expected.counts


@pytest.mark.timeout(900)
def test_an_image_an_older_model_version_stored_is_scored_again_under_ray_as_locally(
        tmp_path: Path, tiny_clip: str, ray_cluster: str, one_thread: None) -> None:
    """The Ray driver loads no model, yet knows the version its actors will load (from the model's
    spec and weights), so an image whose every row an older version stored is pending there too."""
    done = {}
    for executor in ("local", "ray"):
        workspace = _pool(tmp_path / executor, tmp_path, 2)
        propose(workspace, make_proposer("clip", model=tiny_clip, batch_size=2), progress=False)
        rows = workspace.catalog.evidence(source="clip")
        workspace.catalog.add_evidence([replace(row, model_version="old") for row in rows
                                        if row.item_id == rows[0].item_id])
        clip = make_proposer("clip", model=tiny_clip, batch_size=2, executor=executor)
        done[executor] = workspace, propose(workspace, clip, progress=False)
    (local, expected), (ray, result) = done["local"], done["ray"]
    assert expected.counts["evidence"] == 3 and result.counts == expected.counts  # the image's 3 rows, again
    assert _rows(ray) == _rows(local) and "old" not in {row[7] for row in _rows(ray)}


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("name", "options"), [
    ("focus-settings", {}),
    ("logo-mining", {}),
    ("detector", {"weights": "random", "conf": 1e-9, "imgsz": 96}),
])
def test_every_image_proposer_stores_the_same_rows_under_ray(tmp_path: Path, tiny_clip: str, ray_cluster: str,
                                                             one_thread: None, name: str,
                                                             options: dict[str, Any]) -> None:
    model = {"text_encoder": tiny_clip} if name == "detector" else {"model": tiny_clip}
    done = _local_and_ray(tmp_path, name, 1, batch_size=2, **model, **options)
    (local, expected), (ray, result) = done["local"], done["ray"]
    rows = _rows(local, name)
    assert rows and _rows(ray, name) == rows and result.counts == expected.counts
    assert ray.runs.get(result.run.run_id).models == local.runs.get(expected.run.run_id).models
    if name == "detector":  # the class itself on its own images, a cue on the other class's (the pool)
        evidence = local.catalog.evidence(source=name)
        assert any(r.role == "core" for r in evidence) and any("negative_of" in r.extra for r in evidence)


def _attributes(body: dict[str, Any]) -> dict[str, Any]:
    """The stand-in VLM: dogs have a leash; cats get an off-taxonomy type (asked again, then recorded)."""
    text = body["messages"][1]["content"][0]["text"]
    kind = "Material" if "shows a cat" in text else "Co-occurring Objects"
    return {"core_attributes": ["fur"], "spurious_attributes": [{"attribute": "leash", "type": kind}]}


@pytest.mark.timeout(900)
def test_vlm_attributes_run_on_ray_with_failures_recorded_by_the_driver(tmp_path: Path, ray_cluster: str) -> None:
    """The client is built on the actor; each class's failed requests come back to the driver, which
    records them: the same rows, counts, failures and run status as the local executor."""
    pool = {executor: _pool(tmp_path / executor, tmp_path, per_class=2) for executor in ("local", "ray")}
    dog = next(pool["local"].catalog.items(label="dog"))
    cut_short = data_url(open_image(pool["local"].resolve_uri(dog.uri)), 32)
    done = {}
    with standin(_attributes) as server:
        # one dog's answer is cut short (the server never answered properly: a re-run asks again)
        server.faults_when.append((lambda body: cut_short in json.dumps(body), ("invalid-json",)))
        for executor, workspace in pool.items():
            done[executor] = workspace, propose(workspace, make_proposer(
                "vlm-attributes", base_url=server.base_url, image_max_side=32, max_retries=0, batch_size=2,
                executor=executor), progress=False)
    (local, expected), (ray, result) = done["local"], done["ray"]
    assert result.run.status == expected.run.status == RunStatus.COMPLETED_WITH_FAILURES
    assert _rows(ray, "vlm-attributes") == _rows(local, "vlm-attributes") != []
    assert result.counts == expected.counts and result.counts["llm_failures_recorded"] == 3
    failures = {executor: workspace.tables.read(FAILURES_TABLE).drop("run_id").sort("class_label", "cue").rows()
                for executor, (workspace, _) in done.items()}
    assert failures["ray"] == failures["local"]
    assert [(label, retryable) for label, _, _, _, retryable in failures["ray"]] == \
        [("cat", False), ("cat", False), ("dog", True)]


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
    assert make_proposer("vlm-attributes", executor="ray", actors=4).options() == \
        make_proposer("vlm-attributes").options()
    with pytest.raises(ProposeError, match="options of the ray executor"):
        make_proposer("vlm-attributes", actors=2)
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
    """The CLI joins the session's cluster by address and is SIGKILLed mid-run (the cluster lives on);
    the same proposal again, here, resumes the run and adds exactly what is missing."""
    workspace = _pool(tmp_path / "killed", tmp_path, per_class=3)
    command = [sys.executable, "-c", CLI, "propose", "clip", "--model", tiny_clip, "--executor", "ray",
               "--address", ray_cluster, "--set", "batch_size=1", "-w", str(workspace.root), "-q"]
    killed = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600

    def stored() -> int:  # read from the run's counts: polling the evidence itself would compete for the CPUs
        return sum(run.counts.get("evidence", 0) for run in workspace.runs.list("propose"))

    while not stored() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert killed.poll() is None, killed.communicate()[0].decode()[-2000:]  # still running: killed mid-run
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert 0 < len(workspace.catalog.evidence(source="clip")) < 6 * 3
    again = propose(workspace, make_proposer("clip", model=tiny_clip, executor="ray", address=ray_cluster,
                                             batch_size=1), progress=False)
    assert again.run.attempts == 2 and again.run.status == RunStatus.COMPLETED

    reference = _pool(tmp_path / "uninterrupted", tmp_path, per_class=3)
    expected = propose(reference, make_proposer("clip", model=tiny_clip, batch_size=1), progress=False)
    rows = _rows(workspace)
    assert rows == _rows(reference) and len({row[:2] for row in rows}) == len(rows) == 6 * 3
    (run,) = [run for run in workspace.runs.list("propose") if run.config["proposer"] == "clip"]
    assert {key: run.counts[key] for key in ("evidence", "items", "negative_items")} == \
        {key: expected.counts[key] for key in ("evidence", "items", "negative_items")}
