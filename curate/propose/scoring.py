"""The one scoring driver of image-level proposers, and what they supply to it.

An ``ImageProposer`` supplies only what it predicts: ``scorers`` (models built from its options, on
this machine or on a worker) and ``passes`` (which images to score with which cues). An
``ImageScorer`` is one model inside a proposal: loaded once, set up per class with the class's cues,
then fed batches of decoded images. ``score_images`` moves every pass through an executor
(``curate.executors``: threads here, or a Ray cluster) and stores each batch's rows with the run's
counts in one transaction, so a killed run resumes from what is stored. Several scorers share the
same batches, so each image is decoded once however many models look at it.

A class's cues are scored on the class's own images and on a negative pool, the images of the
other classes (every one, or a fixed sample of ``negatives`` per class), so that P(class | cue),
lift and PMI compare the class with the rest of the workspace. Rows scored for the pool carry
``extra[NEGATIVE_OF]``: the class whose cue it was. A pair (image, attribute) is scored once per
run, on its own class's terms when that class lists the attribute.
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import polars as pl
from PIL import Image

from curate.executors import BatchWorker, Executor, ImageBatch, Job, ScoredBatch, make_executor
from curate.item_keys import item_keys, text_key
from curate.models import ModelSpec, UnknownModelError, add_model, get_spec, list_models
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, ProposeError, Proposer
from curate.records import NEGATIVE_OF, Cue, Evidence, EvidenceRole, Item, Run
from curate.workspace import Workspace


@dataclass(frozen=True, slots=True)
class Target:
    """What a scorer looks for in a pass: an attribute, with the role, type and source its rows
    carry (a class's cue, the class object itself, or a word of a fixed vocabulary)."""

    attribute: str
    taxonomy_type: str | None = None
    role: EvidenceRole = EvidenceRole.CANDIDATE
    source: str = "vocabulary"

    @classmethod
    def of(cls, cue: Cue) -> Target:
        """A class's cue as a target."""
        return cls(cue.attribute, cue.taxonomy_type, cue.role, cue.source)


def class_of(label: str | None) -> str:
    """The class of a pass, for scorers that work in a class's words (settings, a VLM's attributes).

    >>> class_of("dog")
    'dog'
    """
    if label is None:
        raise ProposeError("this scorer works on one class's images at a time, not on a pass of no class")
    return label


def unique_cues(cues: list[Cue]) -> list[Cue]:
    """One cue per attribute (the first listed), in attribute order."""
    return list({cue.attribute: cue for cue in reversed(cues)}.values())[::-1]


class ImageScorer(ABC):
    """One model turning decoded images and a class's cues into Evidence."""

    transform: Callable[[Image.Image], Any] | None = None

    def needs_image(self, item: Item) -> bool:
        """Whether scoring ``item`` needs its image (not when its embedding is stored)."""
        return True

    @abstractmethod
    def begin_class(self, context: ProposeContext, label: str | None, targets: list[Target], own: bool = True
                    ) -> None:
        """Prepare for a pass's targets (text embeddings, detector vocabulary): a class's on the class's
        own images (``own``) or on other classes' images, or (``label`` None) a pass of no class."""

    @abstractmethod
    def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
        """Evidence for every (item, cue) of the batch."""

    def take_counts(self) -> dict[str, int]:
        """What the scorer counted since last asked, beyond rows and items (embeddings computed)."""
        return {}

    def take_records(self) -> list[dict[str, object]]:
        """Side-table rows the scorer made since last asked (requests that failed), which the
        proposer records on the driver when a pass ends (``score_images``'s ``end_pass``)."""
        return []

    def finish(self) -> None:  # noqa: B027  (most scorers hold nothing back)
        """Write what the scorer still holds (embeddings computed since its last flush)."""


ScorerFactory = Callable[[ProposeContext], Sequence[ImageScorer]]
"""Builds a proposal's scorers (loading their models) in a context; picklable to run on a worker."""


def class_cues(context: ProposeContext, label: str, cue_source: str | None) -> list[Cue]:
    """The cues a class is scored with (all sources, or one)."""
    return unique_cues(context.workspace.catalog.cues(class_label=label, source=cue_source))


def negative_pool(items: pl.DataFrame, label: str, negatives: int | None) -> pl.Series:
    """The ids of the labelled images of other classes that ``label``'s cues are also scored on: all of
    them (in the order of ``items``), or the ``negatives`` of smallest order key for the class (then in
    id order): each item's key (``item_keys``) XOR the class's (the first 15 hex digits of the sha256 of
    its name), ties by id. The same sample on every run, machine and polars version, a different one
    for each class, each image equally likely; one vectorised pass, no record made.

    ``items``: ``item_id`` and ``label`` of the workspace's items, and ``key`` (their ``item_keys``,
    which a proposal computes once; computed here where it is missing).

    >>> pool = pl.DataFrame({"item_id": [f"i{n}" for n in range(6)], "label": ["dog", "cat"] * 3})
    >>> negative_pool(pool, "dog", None).to_list()
    ['i1', 'i3', 'i5']
    >>> len(negative_pool(pool, "dog", 2)) == 2 and negative_pool(pool, "dog", 2).equals(negative_pool(pool, "dog", 2))
    True
    """
    other = pl.col("label").is_not_null() & (pl.col("label") != label)
    if negatives is None or negatives >= items.select(other.sum()).item():
        return items.filter(other)["item_id"]
    if negatives == 0:
        return items["item_id"].clear()
    if "key" not in items.columns:
        items = items.with_columns(item_keys(items["item_id"]))
    last = pl.lit(2**64 - 1, dtype=pl.UInt64)  # past every key (60 bits): the class's own images
    order = items.select(pl.when(other).then(pl.col("key").xor(pl.lit(text_key(label), dtype=pl.UInt64)))
                         .otherwise(last).alias("order")).to_series()
    # the keys alone find the cut (ordering the ids as well would encode every id); ties at it go by id
    chosen = items.select("item_id", order).filter(pl.col("order") <= order.bottom_k(negatives).max())
    return chosen.sort("order", "item_id").head(negatives)["item_id"].sort()


Stored = frozenset[tuple[str, str | None, str | None]]
"""What a run stored on an item: (attribute, model, model version) of each row."""
_NOTHING: Stored = frozenset()
_FIELD, _ROW = "\x1f", "\x1e"


@functools.lru_cache(maxsize=4096)
def _counted(stored: Stored, models: tuple[tuple[str, str], ...]) -> frozenset[str]:
    loaded = dict(models)
    return frozenset(attribute for attribute, model, version in stored
                     if model is None or model not in loaded or loaded[model] == version)


class RunPairs:
    """The (item, attribute) pairs a run has stored, read in one scan when a proposal's first pass is
    made, and the pairs this invocation wrote since that another of its passes may also want.

    Passes of several classes may share a pair: a class's own images are scored on cues another
    class lists too (that class's negative pool), and two classes' pools overlap. An executor that
    takes every pass at once (Ray) makes them all before anything is stored, so a pair one pass
    stores must not be stored again by a later one: ``record`` keeps, in memory, the written pairs
    whose attribute a class other than the writer's lists (``listed_by``), the only ones another
    pass can want. Everything else a pass needs was stored before it was made.

    >>> pairs = RunPairs({}, {}, {"ball": {"cat", "dog"}, "yarn": {"cat"}})
    >>> pairs.record("cat", [Evidence("i1", "ball", "clip", "r"), Evidence("i1", "yarn", "clip", "r")], own=True)
    >>> sorted(pairs.done("i1", own=False, models={}))
    ['ball']
    """

    def __init__(self, own: dict[str, Stored], every: dict[str, Stored], listed_by: dict[str, set[str]]) -> None:
        self.own, self.every, self.listed_by = own, every, listed_by
        self.written: dict[str, dict[str, bool]] = {}

    @classmethod
    def read(cls, context: ProposeContext, listed_by: dict[str, set[str]]) -> RunPairs:
        """The run's stored pairs per item: those on their own class's terms (not scored for another
        class's pool) and all of them."""
        scan = context.workspace.catalog.evidence_scan(run_id=context.run.run_id).select(
            "item_id", pl.concat_str(pl.col("attribute"), pl.col("model").fill_null(""),
                                     pl.col("model_version").fill_null(""), separator=_FIELD).alias("row"),
            pl.col(NEGATIVE_OF).is_not_null().alias("pooled"))
        stored = scan.collect()
        return cls(_per_item(stored.filter(~pl.col("pooled"))), _per_item(stored), listed_by)

    def pending(self, item_ids: pl.Series, wanted: set[str], own: bool, models: dict[str, str]) -> pl.Series:
        """Those of ``item_ids`` that lack some ``wanted`` attribute (see ``done``)."""
        if not (self.every or self.written):
            return item_ids
        return item_ids.filter(pl.Series([not wanted <= self.done(item_id, own, models) for item_id in item_ids],
                                         dtype=pl.Boolean))

    def done(self, item_id: str, own: bool, models: dict[str, str]) -> frozenset[str]:
        """The attributes ``item_id`` has with the models now loaded (a pair another version of a
        loaded model stored is missing), on its own class's terms (``own``) or any."""
        stored = _counted((self.own if own else self.every).get(item_id, _NOTHING), tuple(sorted(models.items())))
        written = self.written.get(item_id)
        if not written:
            return stored
        return stored | {attribute for attribute, by_own in written.items() if by_own or not own}

    def record(self, label: str | None, rows: Iterable[Evidence], own: bool) -> None:
        """Note the stored ``rows`` of a pass of ``label`` that another class's pass may also want."""
        for row in rows:
            if self.listed_by.get(row.attribute, set()) - {label}:
                wrote = self.written.setdefault(row.item_id, {})
                wrote[row.attribute] = wrote.get(row.attribute, False) or own


def _per_item(stored: pl.DataFrame) -> dict[str, Stored]:
    """Stored rows (``item_id``, ``row``: attribute, model and version joined) as one frozenset per
    item; items that stored the same rows share one."""
    grouped = stored.group_by("item_id").agg(pl.col("row").unique().sort().str.join(_ROW))
    sets: dict[str, Stored] = {}
    for joined in grouped["row"].unique():
        sets[joined] = frozenset((attribute, model or None, version or None) for attribute, model, version in
                                 (row.split(_FIELD) for row in joined.split(_ROW)))
    return {item_id: sets[joined] for item_id, joined in grouped.iter_rows()}


@dataclass(frozen=True, slots=True)
class ClassPass:
    """One class's cues (as targets) and the ids of the images they are still to be scored on: the
    class's own (``own``) or the negative pool; ``label`` None is a pass of no class (a fixed
    vocabulary on every image, or one question of every image). ``pairs``: what the run stored on
    them before, where some is (None: its images have nothing stored, and share no pair with another
    pass). Executors make the images' records a batch at a time."""

    label: str | None
    targets: list[Target]
    item_ids: pl.Series
    own: bool
    pairs: RunPairs | None = None

    @property
    def counter(self) -> str:
        """The run count its images go to."""
        return "items" if self.own else "negative_items"

    def keep(self, rows: Sequence[Evidence], models: dict[str, str]) -> list[Evidence]:
        """The rows to store, noted as written: pairs not done yet with the ``models`` now loaded,
        pool rows marked with the class they were scored for."""
        kept = list(rows)
        if self.pairs is not None:
            pairs = self.pairs
            done = {item_id: pairs.done(item_id, self.own, models) for item_id in {row.item_id for row in rows}}
            kept = [row for row in rows if row.attribute not in done[row.item_id]]
            pairs.record(self.label, kept, self.own)
        return kept if self.own else [replace(row, extra={**row.extra, NEGATIVE_OF: self.label}) for row in kept]


def class_passes(context: ProposeContext, cue_source: str | None, negatives: int | None) -> Iterator[ClassPass]:
    """Every class's cues on its own pending images, then on its negative pool (see ``negative_pool``).

    The run's stored pairs are read once, when the first pass is made (``RunPairs``), so a re-run or
    a resumed run scores only the missing (image, attribute) pairs, and pairs a model now loaded at
    another version (``context.models``) stored are scored again. Own images come first so that a
    pair both lists share is scored on its own class's terms; a pair first scored for the pool is
    scored again once its own class lists the attribute.
    """
    if negatives is not None and negatives < 0:
        raise ProposeError(f"negatives is how many other classes' images to score (0 or more), not {negatives}")
    labels = context.class_labels()
    cues_of = {label: class_cues(context, label, cue_source) for label in labels}
    for label in labels:
        if not cues_of[label]:
            context.count(items_without_cues=len(context.pending_items(label)))
    listed_by: dict[str, set[str]] = {}
    for label, cues in cues_of.items():
        for cue in cues:
            listed_by.setdefault(cue.attribute, set()).add(label)
    labelled = _labelled_items(context.workspace, keys=negatives is not None)
    pairs: RunPairs | None = None
    for own in (True, False):
        for label in (label for label in labels if cues_of[label]):
            pairs = pairs or RunPairs.read(context, listed_by)
            candidates = (labelled.filter(pl.col("label") == label)["item_id"] if own
                          else negative_pool(labelled, label, negatives))
            pending = pairs.pending(candidates, {cue.attribute for cue in cues_of[label]}, own, context.models)
            yield ClassPass(label, [Target.of(cue) for cue in cues_of[label]], pending, own, pairs)


def _labelled_items(workspace: Workspace, keys: bool) -> pl.DataFrame:
    """``item_id`` and ``label`` of every labelled item, in id order, and their ``item_keys`` (``key``)
    when asked (``Catalog.items_frame`` reads ids and labels only, never a record per item)."""
    labelled = workspace.catalog.items_frame(columns=["label"]).filter(pl.col("label").is_not_null())
    return labelled.with_columns(item_keys(labelled["item_id"])) if keys else labelled


def class_item_passes(context: ProposeContext) -> Iterator[ClassPass]:
    """Each class's pending images (items with no evidence from this run), no cues: for scorers that
    ask the same of every image of a class (settings, a VLM's attributes)."""
    for label in context.class_labels():
        yield ClassPass(label, [], context.pending_items(label), True)


def vocabulary_pass(context: ProposeContext, vocabulary: Sequence[str]) -> ClassPass:
    """Every pending item of the workspace (labelled or not) with the words of a fixed vocabulary."""
    return ClassPass(None, [Target(word) for word in dict.fromkeys(vocabulary)], context.pending_items(), True)


@dataclass
class ScoringWorker:
    """A proposal's scorers as the ``BatchWorker`` an executor runs: set up for each job's class as
    its batches arrive (a job's setup is ``(label, targets, own)``)."""

    context: ProposeContext
    scorers: Sequence[ImageScorer]
    job_key: int | None = None

    def __post_init__(self) -> None:
        transforms = [s.transform for s in self.scorers if s.transform is not None]
        if len(transforms) > 1:
            raise ValueError("at most one scorer may preprocess images in the loader")
        self.transform = transforms[0] if transforms else None

    def needs_image(self, item: Item) -> bool:
        """Whether any scorer needs the item's image."""
        return any(scorer.needs_image(item) for scorer in self.scorers)

    def __call__(self, job: Job, batch: ImageBatch) -> ScoredBatch:
        if job.key != self.job_key:
            label, targets, own = job.setup
            for scorer in self.scorers:
                scorer.begin_class(self.context, label, targets, own)
            self.job_key = job.key
        rows = [row for scorer in self.scorers for row in (scorer.score(self.context, batch) if batch.items else [])]
        counts: Counter[str] = Counter()
        for scorer in self.scorers:
            counts.update(scorer.take_counts())
        records = [record for scorer in self.scorers for record in scorer.take_records()]
        return ScoredBatch(job.key, batch.items, batch.failures, rows, dict(counts), dict(self.context.models),
                           records)

    def close(self) -> None:
        """Let every scorer write what it still holds."""
        for scorer in self.scorers:
            scorer.finish()


def remote_worker(make_scorers: ScorerFactory, models: list[ModelSpec], root: str, run: Run) -> ScoringWorker:
    """A proposal's worker built where an executor runs it: the driver's model registry (``models``,
    with any ``add_model`` of its own), the workspace opened from ``root`` (shared storage), the
    scorers loaded from their options."""
    for spec in models:
        add_model(spec)
    context = ProposeContext(Workspace.open(root), run, None, progress=False)
    return ScoringWorker(context, make_scorers(context))


PassEnd = Callable[[ProposeContext, ClassPass, list[dict[str, object]]], None]
"""What a proposer does on the driver once a pass is stored, with the records its scorers made."""


def score_images(context: ProposeContext, make_scorers: ScorerFactory, passes: Iterable[ClassPass],
                 batch_size: int, title: str, executor: Executor | None = None, end_pass: PassEnd | None = None
                 ) -> None:
    """Score every pass with the scorers ``make_scorers`` builds, through ``executor`` (``local`` by
    default), storing each batch with its counts in one transaction; ``end_pass`` is called once
    each pass is stored, with the records its scorers made.

    An in-process executor uses one set of scorers for the whole run; others rebuild them from
    ``make_scorers`` wherever they run (so it must pickle: a proposer's bound method does), and may
    take every pass at once: which pairs a batch adds is decided when it is stored (``ClassPass.keep``),
    so the rows are the same either way.
    """
    executor = executor or make_executor("local")
    here: Sequence[ImageScorer] = ()
    make_worker: Callable[[], BatchWorker]
    if executor.in_process:
        here = make_scorers(context)
        make_worker = functools.partial(ScoringWorker, context, here)
    else:
        make_worker = functools.partial(remote_worker, make_scorers, [get_spec(m) for m in list_models()],
                                        str(context.workspace.root), context.run)
    opened: dict[int, ClassPass] = {}

    def jobs() -> Iterator[Job]:
        for key, class_pass in enumerate(passes):
            if len(class_pass.item_ids):
                opened[key] = class_pass
                yield Job(key, (class_pass.label, class_pass.targets, class_pass.own), class_pass.item_ids)

    records: list[dict[str, object]] = []

    def ended(key: int | None) -> None:
        if key is not None and end_pass is not None:
            end_pass(context, opened[key], records[:])
        records.clear()

    with contextlib.ExitStack() as bar:
        showing: int | None = None
        for scored in executor.run(context.workspace, jobs(), batch_size, make_worker):
            class_pass = opened[scored.key]
            if scored.key != showing:
                ended(showing)
                bar.close()
                named = title if class_pass.label is None else f"{title} {class_pass.label}"
                advance = bar.enter_context(progress_bar(f"{named}{'' if class_pass.own else ' (other classes)'}",
                                                         len(class_pass.item_ids), context.progress))
                showing = scored.key
            context.models.update(scored.models)
            rows = class_pass.keep(scored.rows, context.models)
            # an image counts once it adds a pair: one scored for a pass taken up at once may have none left
            context.write_evidence(rows, **{class_pass.counter: len({row.item_id for row in rows})},
                                   unreadable=len(scored.failures), **scored.counts)
            records.extend(scored.records)
            for _ in range(len(scored.items) + len(scored.failures)):
                advance()
        ended(showing)
    for scorer in here:
        scorer.finish()


EXECUTION_OPTIONS = ("executor", "address", "actors")


@dataclass
class Execution:
    """Where a proposal that scores images runs: ``executor`` (``local`` or ``ray``), ``address`` (a
    Ray cluster's head) and ``actors`` (model copies at once). They change where and how fast it
    runs, not its rows, so they stay out of the run config: a run killed under one executor resumes
    under the other.

    >>> Execution(executor="ray", actors=2).make_executor().actors
    2
    """

    executor: str = "local"
    address: str | None = None
    actors: int = 1

    def __post_init__(self) -> None:
        if self.executor == "local" and (self.address is not None or self.actors != 1):
            raise ProposeError("address and actors are options of the ray executor (executor=ray)")
        self.make_executor()  # an unknown executor or a bad option is a one-line error now, not mid-run

    def options(self) -> dict[str, Any]:
        """The options that change results, recorded in the run config."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in EXECUTION_OPTIONS}

    def gpus_per_actor(self) -> float:
        """GPUs each Ray actor takes (none: the work is a server's)."""
        return 0.0

    def make_executor(self) -> Executor:
        """The executor these options choose."""
        if self.executor == "local":
            return make_executor("local")
        return make_executor(self.executor, address=self.address, actors=self.actors,
                             gpus_per_actor=self.gpus_per_actor())


@dataclass
class ImageProposer(Execution, Proposer):
    """A proposer that scores images: it supplies ``scorers`` and ``passes``; ``run`` is the driver.

    Where it runs is its ``Execution`` options; with ``device`` ``cuda`` every Ray actor takes a GPU.
    """

    batch_size: int = 32
    device: str = "cpu"

    def gpus_per_actor(self) -> float:
        """One GPU per Ray actor when the models run on ``cuda``."""
        return 1.0 if self.device.startswith("cuda") else 0.0

    @abstractmethod
    def scorers(self, context: ProposeContext) -> list[ImageScorer]:
        """The loaded scorers these options describe (recording their models in ``context.models``)."""

    @abstractmethod
    def passes(self, context: ProposeContext) -> Iterable[ClassPass]:
        """What to score (``class_passes``, ``vocabulary_pass`` or passes of the proposer's own)."""

    def model_versions(self) -> dict[str, str]:
        """The models (name -> version) ``scorers`` will load, known without loading them
        (``curate.models.model_version``): what ``class_passes`` needs to score again the pairs an
        older version stored, on a driver that loads no model (Ray). None where no pass looks at
        versions (passes of items with no row from the run)."""
        return {}

    def run(self, context: ProposeContext) -> None:
        # before any pass is made, whoever loads the models; a family registered without a versioner
        # has its version known once loaded (locally)
        with contextlib.suppress(UnknownModelError):
            context.models.update(self.model_versions())
        score_images(context, self.scorers, self.passes(context), self.batch_size, self.name, self.make_executor())
