"""``local``: batches of decoded images, prepared in background threads while the model runs in
this process.

Decoding and preprocessing overlap with the forward pass: a small pool decodes (Pillow releases
the GIL while decoding) and a bounded queue keeps at most ``prefetch`` batches ready, so memory
stays flat whatever the number of items.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image

from curate.executors.base import BatchWorker, Executor, ImageBatch, Job, ScoredBatch, job_items, register_executor
from curate.images import open_image
from curate.records import Item
from curate.workspace import Workspace

_DONE = object()


def decode(path: Path) -> tuple[Image.Image | None, str | None]:
    """The upright RGB image at ``path``, or the reason it cannot be opened (one line)."""
    try:
        return open_image(path), None
    except (OSError, ValueError, SyntaxError) as error:
        return None, f"{type(error).__name__}: {error}"


def _load(workspace: Workspace, item: Item, transform: Callable[[Image.Image], Any] | None) -> tuple[Any, ...]:
    image, error = decode(workspace.resolve_uri(item.uri))
    if image is None:
        return item, None, None, error
    return item, image, transform(image) if transform else None, None


def image_batches(workspace: Workspace, items: Iterable[Item], batch_size: int,
                  transform: Callable[[Image.Image], Any] | None = None, workers: int = 2,
                  prefetch: int = 2) -> Iterator[ImageBatch]:
    """Yield ``ImageBatch``es of ``items`` in order, decoded ahead in background threads (which also
    take ``items`` from their iterator: a generator may read them as it goes)."""
    ready: queue.Queue[object] = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def produce() -> None:
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                pending = iter(items)
                while chunk := list(itertools.islice(pending, batch_size)):
                    if stop.is_set():
                        return
                    batch = ImageBatch([], [])
                    for item, image, transformed, error in pool.map(lambda i: _load(workspace, i, transform), chunk):
                        if error is not None:
                            batch.failures.append((item, error))
                            continue
                        batch.items.append(item)
                        batch.images.append(image)
                        if transform is not None:
                            batch.transformed.append(transformed)
                    ready.put(batch)
        except BaseException as error:  # handed to the consumer, which re-raises it
            ready.put(error)
        finally:
            ready.put(_DONE)

    thread = threading.Thread(target=produce, name="curate-image-batches", daemon=True)
    thread.start()
    try:
        while (batch := ready.get()) is not _DONE:
            if isinstance(batch, BaseException):
                raise batch
            yield batch  # type: ignore[misc]  # the queue holds batches, exceptions and _DONE; only batches get here
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
        thread.join()


@register_executor("local")
@dataclass
class LocalExecutor(Executor):
    """One worker in this process, jobs one at a time; images decode in ``workers`` threads ahead of
    the model. A job's items whose images the worker does not need come first, in batches of their
    own, undecoded. Items are made from the job's ids a chunk at a time (``job_items``), twice: once
    to sort them by need, once as the decoding threads take them."""

    workers: int = 2
    in_process = True

    def run(self, workspace: Workspace, jobs: Iterable[Job], batch_size: int,
            make_worker: Callable[[], BatchWorker]) -> Iterator[ScoredBatch]:
        worker: BatchWorker | None = None
        for job in jobs:
            worker = worker or make_worker()
            needed: list[pl.Series] = []  # the ids of items to decode, a chunk's at a time (compact)
            undecoded: list[Item] = []
            for items in job_items(workspace, job.item_ids):
                needs = [worker.needs_image(item) for item in items]
                needed.append(pl.Series(list(itertools.compress((i.item_id for i in items), needs)), dtype=pl.String))
                for item in itertools.compress(items, [not need for need in needs]):
                    undecoded.append(item)
                    if len(undecoded) == batch_size:
                        yield worker(job, ImageBatch(undecoded, []))
                        undecoded = []
            if undecoded:
                yield worker(job, ImageBatch(undecoded, []))
            decoded = itertools.chain.from_iterable(job_items(workspace, pl.concat([job.item_ids.clear(), *needed])))
            for batch in image_batches(workspace, decoded, batch_size, worker.transform, self.workers):
                yield worker(job, batch)
