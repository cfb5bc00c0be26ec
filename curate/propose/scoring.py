"""Image-level scoring shared by the CLIP and detector proposers.

An ``ImageScorer`` is one model inside a proposal: loaded once, set up per class with the class's
cues, then fed batches of decoded images. ``score_images`` runs any number of scorers over the
same batches, so each image is decoded once however many models look at it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from curate.executors import ImageBatch, image_batches
from curate.progress import progress_bar
from curate.propose.base import ProposeContext
from curate.records import Cue, Evidence, Item


def unique_cues(cues: list[Cue]) -> list[Cue]:
    """One cue per attribute (the first listed), in attribute order."""
    return list({cue.attribute: cue for cue in reversed(cues)}.values())[::-1]


class ImageScorer(ABC):
    """One model turning decoded images and a class's cues into Evidence."""

    transform: Callable[[Image.Image], Any] | None = None

    @abstractmethod
    def begin_class(self, context: ProposeContext, label: str, cues: list[Cue]) -> None:
        """Prepare for a class (text embeddings, detector vocabulary)."""

    @abstractmethod
    def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
        """Evidence for every (item, cue) of the batch."""


def class_cues(context: ProposeContext, label: str, cue_source: str | None) -> list[Cue]:
    """The cues a class is scored with (all sources, or one)."""
    return unique_cues(context.workspace.catalog.cues(class_label=label, source=cue_source))


def score_images(context: ProposeContext, scorers: Sequence[ImageScorer], batch_size: int,
                 cue_source: str | None, title: str, vocabulary: Sequence[str] | None = None) -> None:
    """Run ``scorers`` over the pending items of every class with the class's cues, or, with a fixed
    ``vocabulary``, over every pending item of the workspace (labelled or not) with those words.
    Each batch is written in one transaction."""
    transforms = [s.transform for s in scorers if s.transform is not None]
    if len(transforms) > 1:
        raise ValueError("at most one scorer may preprocess images in the loader")
    transform = transforms[0] if transforms else None
    if vocabulary:
        items = context.pending_items()
        cues = [Cue("*", word, "vocabulary", context.run.run_id) for word in dict.fromkeys(vocabulary)]
        _score(context, scorers, "*", cues, items, batch_size, transform, title)
        return
    for label in context.class_labels():
        cues = class_cues(context, label, cue_source)
        items = context.pending_items(label)
        if not cues:
            context.count(items_without_cues=len(items))
            continue
        _score(context, scorers, label, cues, items, batch_size, transform, f"{title} {label}")


def _score(context: ProposeContext, scorers: Sequence[ImageScorer], label: str, cues: list[Cue], items: list[Item],
           batch_size: int, transform: Callable[[Image.Image], Any] | None, title: str) -> None:
    for scorer in scorers:
        scorer.begin_class(context, label, cues)
    with progress_bar(title, len(items), context.progress) as advance:
        for batch in image_batches(context.workspace, items, batch_size, transform):
            rows = [row for scorer in scorers for row in (scorer.score(context, batch) if batch.items else [])]
            context.write_evidence(rows, items=len(batch.items), unreadable=len(batch.failures))
            for _ in range(len(batch.items) + len(batch.failures)):
                advance()
