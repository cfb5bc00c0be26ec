"""What every executor shares: the jobs and batches it moves, the worker that scores them, the
registry.

An executor takes ``Job``s (the ids of items to score with one setup of the worker: a class's cues) and a
factory of ``BatchWorker`` (the model side of a proposal: it preprocesses and scores a decoded
batch) and yields ``ScoredBatch``es, in job order, for the driver to store. Where decoding and the
model run (threads of this process, a Ray cluster) is the executor's business; what comes back is
the same. A job holds ids, not records: an executor makes the ``Item``s a chunk at a time
(``job_items``), so a pass of a million images is never a million records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import polars as pl
from PIL import Image

from curate.records import Evidence, Item
from curate.registry import Registry
from curate.workspace import Workspace


class ExecutorError(ValueError):
    """An executor cannot run as asked (unknown name, bad option, Ray missing or unreachable)."""


@dataclass(slots=True)
class ImageBatch:
    """Items whose images opened, their upright RGB images, the transform of each (when asked),
    and the items whose files could not be opened any more, with the error. Items whose images no
    model needs come with no images at all."""

    items: list[Item]
    images: list[Image.Image]
    transformed: list[Any] = field(default_factory=list)
    failures: list[tuple[Item, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Job:
    """The items (``item_ids``, in order) to score with one ``setup`` of the worker (picklable: a
    class's cues); ``key`` names it."""

    key: int
    setup: Any
    item_ids: pl.Series


CHUNK = 4096
"""Items made into records at once from a job's ids (one catalogue query)."""


def job_items(workspace: Workspace, item_ids: pl.Series, size: int = CHUNK) -> Iterator[list[Item]]:
    """A job's items as records, ``size`` at a time in the order of ``item_ids``.

    >>> import tempfile
    >>> list(job_items(Workspace.init(tempfile.mkdtemp()), pl.Series(["no such id"], dtype=pl.String)))
    [[]]
    """
    for start in range(0, len(item_ids), size):
        yield workspace.catalog.items_by_id(item_ids.slice(start, size).to_list())


@dataclass(slots=True)
class ScoredBatch:
    """What a worker made of one batch of job ``key``: its rows, counts beyond rows and items
    (embeddings computed), the models (name -> version) that scored it, and side-table rows for the
    driver to record when the job ends (``records``: requests that failed)."""

    key: int
    items: list[Item]
    failures: list[tuple[Item, str]]
    rows: list[Evidence]
    counts: dict[str, int]
    models: dict[str, str]
    records: list[dict[str, object]] = field(default_factory=list)


class BatchWorker(Protocol):
    """The model side of a pass, built where the model runs (``make_worker()``)."""

    transform: Callable[[Image.Image], Any] | None

    def needs_image(self, item: Item) -> bool:
        """Whether scoring ``item`` needs its image decoded (not when an embedding is stored)."""

    def __call__(self, job: Job, batch: ImageBatch) -> ScoredBatch:
        """Rows and counts for a decoded batch of ``job`` (its items are not used)."""


class Executor(ABC):
    """A registered way of running a pass; subclasses are dataclasses of their options."""

    name: ClassVar[str]
    in_process: ClassVar[bool] = False
    """Whether the worker runs in this process (then ``make_worker`` may close over live models)."""

    @abstractmethod
    def run(self, workspace: Workspace, jobs: Iterable[Job], batch_size: int,
            make_worker: Callable[[], BatchWorker]) -> Iterator[ScoredBatch]:
        """Score every job's items in batches of ``batch_size`` with workers from ``make_worker``,
        yielding batches in job order. In-process executors take jobs one at a time (a job may
        depend on what the driver stored for the ones before)."""


EXECUTORS: Registry[type[Executor]] = Registry("executor", ExecutorError, attribute="name")
register_executor = EXECUTORS.register


def make_executor(name: str, **options: Any) -> Executor:
    """A registered executor from its options; unknown names and options are one-line errors.

    >>> make_executor("local").name
    'local'
    >>> make_executor("spark")
    Traceback (most recent call last):
    ...
    curate.executors.base.ExecutorError: unknown executor 'spark'; known: local, ray
    """
    return EXECUTORS.create(name, **options)
