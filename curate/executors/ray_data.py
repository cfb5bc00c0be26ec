"""``ray``: a pass on a Ray cluster (the ``curate[ray]`` extra), through Ray Data.

The driver cuts the pass's items into batches and resolves their image paths; Ray Data decodes
each batch in a CPU task, then a pool of ``actors`` (``map_batches`` with a callable class) builds
the model once per actor from the worker factory, preprocesses and scores; the rows come back to the
driver in order, which stores each batch in one transaction. Paths must therefore be readable
where the tasks run: on a multi-node cluster the workspace (and any image it points to) sits on
shared storage at the same path (see the README).

>>> RayExecutor(actors=2).actors
2
"""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from curate.executors.base import BatchWorker, Executor, ExecutorError, ImageBatch, ScoredBatch, register_executor
from curate.executors.local import decode
from curate.records import Item
from curate.workspace import Workspace


def connect(address: str | None) -> ModuleType:
    """The ``ray`` module, connected: to the cluster at ``address`` (``host:port`` of its head,
    ``auto``, or ``ray://``), else to the one this process already joined, else to a new local one.
    A clear error when Ray is not installed or nothing answers at ``address``."""
    try:
        import ray
    except ImportError:
        raise ExecutorError("the ray executor needs Ray: pip install 'curate[ray]'") from None
    if ray.is_initialized():
        return ray
    if address and address != "auto" and "://" not in address:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise ExecutorError(f"no Ray cluster answers at {address} (give the head's host:port, "
                                "as `ray start --head` prints it)") from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as error:
        raise ExecutorError(f"cannot join the Ray cluster at {address}: {error}") from None
    return ray


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """A Ray Data task: open the images of one batch (``(item, path)`` pairs)."""
    items, images, failures = [], [], []
    for item, path in pickle.loads(row["payload"]):  # noqa: S301  (our own driver's batches)
        image, error = decode(Path(path))
        if image is None:
            failures.append((item, error))
        else:
            items.append(item)
            images.append(image)
    return {"payload": pickle.dumps((items, images, failures))}


class _ScoringActor:
    """A Ray Data actor: one worker (one model load) scoring decoded batches."""

    def __init__(self, make_worker: Callable[[], BatchWorker]) -> None:
        self.worker = make_worker()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scored = []
        for payload in batch["payload"]:
            items, images, failures = pickle.loads(payload)  # noqa: S301  (our own tasks' output)
            transform = self.worker.transform
            transformed = [transform(image) for image in images] if transform is not None else []
            scored.append(pickle.dumps(self.worker(ImageBatch(items, images, transformed, failures))))
        return {"payload": np.array(scored, dtype=object)}

    def __del__(self) -> None:  # Ray Data deletes the actor's callable on a graceful shutdown
        close = getattr(self.worker, "close", None)
        if close is not None:
            close()


@register_executor("ray")
@dataclass
class RayExecutor(Executor):
    """Decode in Ray Data CPU tasks, score in ``actors`` actors of ``cpus_per_actor`` CPUs and
    ``gpus_per_actor`` GPUs each, on the cluster at ``address`` (else a local one)."""

    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ExecutorError(f"actors is how many model copies run at once (1 or more), not {self.actors}")

    def run(self, workspace: Workspace, items: Sequence[Item], batch_size: int,
            make_worker: Callable[[], BatchWorker]) -> Iterator[ScoredBatch]:
        if not items:
            return
        ray = connect(self.address)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # batches come back as the driver cut them
        context.enable_progress_bars = False  # the driver shows its own
        chunks = [{"payload": pickle.dumps([(item, str(workspace.resolve_uri(item.uri)))
                                            for item in items[start:start + batch_size]])}
                  for start in range(0, len(items), batch_size)]
        dataset = (ray.data.from_items(chunks, override_num_blocks=len(chunks))
                   .map(_decode)
                   .map_batches(_ScoringActor, fn_constructor_args=(make_worker,), batch_size=1,
                                concurrency=self.actors, num_cpus=self.cpus_per_actor,
                                num_gpus=self.gpus_per_actor or None))
        for row in dataset.iter_rows():
            yield pickle.loads(row["payload"])  # noqa: S301  (our own actors' output)
