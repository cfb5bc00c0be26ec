"""Image-level scoring shared by the CLIP and detector proposers.

An ``ImageScorer`` is one model inside a proposal: loaded once, set up per class with the class's
cues, then fed batches of decoded images. ``score_images`` runs any number of scorers over the
same batches, so each image is decoded once however many models look at it.

A class's cues are scored on the class's own images and on a negative pool, the images of the
other classes (every one, or a fixed sample of ``negatives`` per class), so that P(class | cue),
lift and PMI compare the class with the rest of the workspace. Rows scored for the pool carry
``extra[NEGATIVE_OF]``: the class whose cue it was. A pair (image, attribute) is scored once per
run, on its own class's terms when that class lists the attribute.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from curate.executors import ImageBatch, image_batches
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, ProposeError
from curate.records import NEGATIVE_OF, Cue, Evidence, Item


def unique_cues(cues: list[Cue]) -> list[Cue]:
    """One cue per attribute (the first listed), in attribute order."""
    return list({cue.attribute: cue for cue in reversed(cues)}.values())[::-1]


class ImageScorer(ABC):
    """One model turning decoded images and a class's cues into Evidence."""

    transform: Callable[[Image.Image], Any] | None = None

    @abstractmethod
    def begin_class(self, context: ProposeContext, label: str, cues: list[Cue], own: bool = True) -> None:
        """Prepare for a class's cues (text embeddings, detector vocabulary), on the class's own images
        (``own``) or on other classes' images."""

    @abstractmethod
    def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
        """Evidence for every (item, cue) of the batch."""


def class_cues(context: ProposeContext, label: str, cue_source: str | None) -> list[Cue]:
    """The cues a class is scored with (all sources, or one)."""
    return unique_cues(context.workspace.catalog.cues(class_label=label, source=cue_source))


def negative_pool(items: Sequence[Item], label: str, negatives: int | None) -> list[Item]:
    """The labelled images of other classes that ``label``'s cues are also scored on: all of them, or
    the ``negatives`` whose hash with the class is smallest (the same sample on every run).

    >>> pool = [Item(f"i{n}", "", "cat" if n % 2 else "dog", 1, 1, "RGB", "PNG", 0) for n in range(6)]
    >>> [i.item_id for i in negative_pool(pool, "dog", None)]
    ['i1', 'i3', 'i5']
    >>> len(negative_pool(pool, "dog", 2)) == 2 and negative_pool(pool, "dog", 2) == negative_pool(pool, "dog", 2)
    True
    """
    others = [item for item in items if item.label is not None and item.label != label]
    if negatives is None or negatives >= len(others):
        return others
    chosen = sorted(others, key=lambda i: hashlib.sha256(f"{label}\n{i.item_id}".encode()).digest())[:negatives]
    return sorted(chosen, key=lambda i: i.item_id)


@dataclass(frozen=True, slots=True)
class ClassPass:
    """One class's cues and the images they are still to be scored on: the class's own (``own``) or
    the negative pool. ``done`` holds, per item, the attributes this run already stored that the
    pass must not write again."""

    label: str
    cues: list[Cue]
    items: list[Item]
    own: bool
    done: dict[str, set[str]]

    @property
    def counter(self) -> str:
        """The run count its images go to."""
        return "items" if self.own else "negative_items"

    def keep(self, rows: Sequence[Evidence]) -> list[Evidence]:
        """The rows to store: pairs not stored yet, pool rows marked with the class they were scored for."""
        kept = [row for row in rows if row.attribute not in self.done.get(row.item_id, ())]
        return kept if self.own else [replace(row, extra={**row.extra, NEGATIVE_OF: self.label}) for row in kept]


def class_passes(context: ProposeContext, cue_source: str | None, negatives: int | None) -> Iterator[ClassPass]:
    """Every class's cues on its own pending images, then on its negative pool (see ``negative_pool``).

    Each pass reads what the run has stored when it starts, so a re-run or a resumed run scores only
    the missing (image, attribute) pairs, and pairs a model now loaded at another version
    (``context.models``) stored are scored again. Own images come first so that a pair both lists share is
    scored on its own class's terms; a pair first scored for the pool is scored again once its own
    class lists the attribute.
    """
    if negatives is not None and negatives < 0:
        raise ProposeError(f"negatives is how many other classes' images to score (0 or more), not {negatives}")
    labels = context.class_labels()
    cues_of = {label: class_cues(context, label, cue_source) for label in labels}
    for label in labels:
        if not cues_of[label]:
            context.count(items_without_cues=len(context.pending_items(label)))
    everything = list(context.workspace.catalog.items())
    by_label: dict[str | None, list[Item]] = {}
    for item in everything:
        by_label.setdefault(item.label, []).append(item)
    for own in (True, False):
        for label in (label for label in labels if cues_of[label]):
            candidates = by_label.get(label, []) if own else negative_pool(everything, label, negatives)
            stored = context.workspace.catalog.evidence_attributes(context.run.run_id, (i.item_id for i in candidates),
                                                                   context.models)
            done = {item_id: {a for a, extra in attributes.items() if not own or NEGATIVE_OF not in extra}
                    for item_id, attributes in stored.items()}
            wanted = {cue.attribute for cue in cues_of[label]}
            pending = [i for i in candidates if not wanted <= done.get(i.item_id, set())]
            yield ClassPass(label, cues_of[label], pending, own, done)


def score_images(context: ProposeContext, scorers: Sequence[ImageScorer], batch_size: int,
                 cue_source: str | None, title: str, vocabulary: Sequence[str] | None = None,
                 negatives: int | None = None) -> None:
    """Run ``scorers`` over every class's cues on its own images and its negative pool (see
    ``class_passes``), or, with a fixed ``vocabulary``, over every pending item of the workspace
    (labelled or not) with those words. Each batch is written in one transaction."""
    transforms = [s.transform for s in scorers if s.transform is not None]
    if len(transforms) > 1:
        raise ValueError("at most one scorer may preprocess images in the loader")
    transform = transforms[0] if transforms else None
    if vocabulary:
        cues = [Cue("*", word, "vocabulary", context.run.run_id) for word in dict.fromkeys(vocabulary)]
        _score(context, scorers, ClassPass("*", cues, context.pending_items(), True, {}), batch_size, transform, title)
        return
    for class_pass in class_passes(context, cue_source, negatives):
        _score(context, scorers, class_pass, batch_size, transform,
               f"{title} {class_pass.label}{'' if class_pass.own else ' (other classes)'}")


def _score(context: ProposeContext, scorers: Sequence[ImageScorer], class_pass: ClassPass, batch_size: int,
           transform: Callable[[Image.Image], Any] | None, title: str) -> None:
    if not class_pass.items:
        return
    for scorer in scorers:
        scorer.begin_class(context, class_pass.label, class_pass.cues, class_pass.own)
    with progress_bar(title, len(class_pass.items), context.progress) as advance:
        for batch in image_batches(context.workspace, class_pass.items, batch_size, transform):
            rows = [row for scorer in scorers for row in (scorer.score(context, batch) if batch.items else [])]
            context.write_evidence(class_pass.keep(rows), **{class_pass.counter: len(batch.items)},
                                   unreadable=len(batch.failures))
            for _ in range(len(batch.items) + len(batch.failures)):
                advance()
