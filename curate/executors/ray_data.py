"""``ray``: a pass on a Ray cluster (the ``curate[ray]`` extra), through Ray Data.

The driver cuts every job's items into batches (making their records a chunk at a time, held
pickled until Ray Data's object store has them) and resolves their image paths; Ray Data decodes
each batch in a CPU task, then a pool of ``actors`` (``map_batches`` with a callable class) builds
the model once per actor from the worker factory, preprocesses and scores (setting the worker up
for each job as its batches arrive); the rows come back to the driver in job order, which stores
each batch in one transaction. Paths must therefore be readable
where the tasks run: on a multi-node cluster the workspace (and any image it points to) sits on
shared storage at the same path (see the README).

>>> RayExecutor(actors=2).actors
2
"""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import polars as pl

from curate.executors.base import (
    CHUNK,
    BatchWorker,
    Executor,
    ExecutorError,
    ImageBatch,
    Job,
    ScoredBatch,
    job_items,
    register_executor,
)
from curate.executors.local import decode
from curate.workspace import Workspace


def connect(address: str | None) -> ModuleType:
    """The ``ray`` module, connected: to the cluster this process already joined, else to the one at
    ``address`` (``host:port`` of its head, ``auto``, or ``ray://``), else to a new local one. A clear
    error when Ray is not installed or nothing answers at ``address``."""
    try:
        import ray
    except ImportError:
        raise ExecutorError("the ray executor needs Ray: pip install 'curate[ray]'") from None
    if address and address != "auto" and "://" not in address:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise ExecutorError(f"no Ray cluster answers at {address} (give the head's host:port, "
                                "as `ray start --head` prints it)") from None
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as error:
        raise ExecutorError(f"cannot join the Ray cluster at {address}: {error}") from None
    return ray


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """A Ray Data CPU task: open the images of one batch (``(item, path)`` pairs)."""
    key, setup, pairs = pickle.loads(row["payload"])  # noqa: S301  (our own driver's batches)
    items, images, failures = [], [], []
    for item, path in pairs:
        image, error = decode(Path(path))
        if image is None:
            failures.append((item, str(error)))
        else:
            items.append(item)
            images.append(image)
    return {"payload": pickle.dumps((key, setup, ImageBatch(items, images, [], failures)))}


class _ScoringActor:
    """A Ray Data actor: one worker (one model load) scoring decoded batches of every job."""

    def __init__(self, make_worker: Callable[[], BatchWorker]) -> None:
        self.worker = make_worker()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scored = []
        for payload in batch["payload"]:
            key, setup, images = pickle.loads(payload)  # noqa: S301  (our own tasks' output)
            if self.worker.transform is not None:
                images.transformed = [self.worker.transform(image) for image in images.images]
            scored.append(pickle.dumps(self.worker(Job(key, setup, pl.Series(dtype=pl.String)), images)))
        return {"payload": np.array(scored, dtype=object)}

    def __del__(self) -> None:  # Ray Data deletes the actor's callable on a graceful shutdown
        close = getattr(self.worker, "close", None)
        if close is not None:
            close()


@register_executor("ray")
@dataclass
class RayExecutor(Executor):
    """Decode in Ray Data CPU tasks of ``decode_cpus`` CPUs, score in ``actors`` actors of
    ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs each, on the cluster at ``address`` (else a
    local one). Every job of a run goes through one dataset, so each actor loads its model once."""

    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    decode_cpus: float = 0.5

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ExecutorError(f"actors is how many model copies run at once (1 or more), not {self.actors}")

    def run(self, workspace: Workspace, jobs: Iterable[Job], batch_size: int,
            make_worker: Callable[[], BatchWorker]) -> Iterator[ScoredBatch]:
        many = batch_size * max(1, CHUNK // batch_size)  # records made a whole number of batches at a time
        chunks = [{"payload": pickle.dumps((job.key, job.setup, [(item, str(workspace.resolve_uri(item.uri)))
                                                                 for item in items[start:start + batch_size]]))}
                  for job in jobs for items in job_items(workspace, job.item_ids, many)
                  for start in range(0, len(items), batch_size)]
        if not chunks:
            return
        ray = connect(self.address)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # batches come back in job order
        context.enable_progress_bars = False  # the driver shows its own
        dataset = (ray.data.from_items(chunks, override_num_blocks=len(chunks))
                   .map(_decode, num_cpus=self.decode_cpus)  # CPU tasks: not fused into the actors
                   .map_batches(_ScoringActor, fn_constructor_args=(make_worker,), batch_size=1,
                                compute=ray.data.ActorPoolStrategy(size=self.actors),
                                num_cpus=self.cpus_per_actor, num_gpus=self.gpus_per_actor or None))
        del chunks  # from_items put them in Ray's object store: the driver holds none while the run goes
        for row in dataset.iter_rows():
            yield pickle.loads(row["payload"])  # noqa: S301  (our own actors' output)
