"""``clip``: per (item, cue) the CLIP similarity and a zero-shot presence probability.

Each cue is embedded as a prompt ensemble (the mean of its templates); the contrast is the
ensemble of neutral prompts for the class. Presence probability is the two-way softmax of
``logit_scale * [similarity(cue), similarity(contrast)]``: how much better the image matches the
class *with* the cue than the class alone, in the words of the image's own class (also when the cue
is another class's, scored on the negative pool). Image embeddings are stored once per model
version, so a later run on the same images decodes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from curate.executors import ImageBatch
from curate.models import ClipModel, load_model
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.embeddings import EmbeddingStore
from curate.propose.scoring import ImageScorer, class_passes
from curate.records import Cue, Evidence, Item

DEFAULT_TEMPLATES = ("a photo of {attribute}.", "a photo of a {label} with {attribute}.",
                     "a picture showing {attribute}.")
DEFAULT_CONTRAST = ("a photo of a {label}.", "a picture of a {label}.")


def ensemble(clip: ClipModel, templates: tuple[str, ...], context: ProposeContext, **fields_: str) -> np.ndarray:
    """Unit-length mean of the text embeddings of ``templates`` filled with ``fields_``."""
    vectors = clip.encode_texts([t.format(**fields_) for t in templates], context.workspace.cache)
    mean = vectors.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


class ClipScorer(ImageScorer):
    """CLIP similarity and presence probability of each cue, from stored or fresh embeddings."""

    source = "clip"

    def __init__(self, context: ProposeContext, model: str, weights: str | None, device: str,
                 templates: tuple[str, ...], contrast: tuple[str, ...]) -> None:
        self.clip: ClipModel = load_model(model, weights=weights, device=device)
        context.models[self.clip.name] = self.clip.version
        self.store = EmbeddingStore(context.workspace, self.clip, context.run.run_id)
        self.transform = self.clip.preprocess_image
        self.templates, self.contrast = templates, contrast
        self.cues: list[Cue] = []

    def begin_class(self, context: ProposeContext, label: str, cues: list[Cue], own: bool = True) -> None:
        self.cues, self.context = cues, context
        self.text_vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def texts(self, label: str) -> tuple[np.ndarray, np.ndarray]:
        """(cue ensembles, contrast ensemble) of the current cues for images of class ``label``."""
        if label not in self.text_vectors:  # one text-encoder call for every cue's templates
            texts = [t.format(attribute=c.attribute, label=label) for c in self.cues for t in self.templates]
            means = self.clip.encode_texts(texts, self.context.workspace.cache).reshape(
                len(self.cues), len(self.templates), -1).mean(axis=1)
            self.text_vectors[label] = (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12),
                                        ensemble(self.clip, self.contrast, self.context, label=label))
        return self.text_vectors[label]

    def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
        fresh = [i for i, item in enumerate(batch.items) if item.item_id not in self.store.known]
        if fresh:
            vectors = self.clip.encode_images(torch.stack([batch.transformed[i] for i in fresh]))
            self.store.remember([batch.items[i] for i in fresh], vectors)
        return self.evidence(context, batch.items, np.stack([self.store.known[i.item_id] for i in batch.items]))

    def evidence(self, context: ProposeContext, items: list[Item], vectors: np.ndarray) -> list[Evidence]:
        """Evidence for ``items`` from their (N, D) image embeddings; each image is scored in the words
        of its own class, so an (image, cue) pair means the same whichever class listed the cue."""
        rows = []
        for row, item in enumerate(items):
            texts, contrast_vector = self.texts(item.label or "")
            similarity, contrast = texts @ vectors[row], float(vectors[row] @ contrast_vector)
            presence = 1.0 / (1.0 + np.exp(-self.clip.logit_scale * (similarity - contrast)))
            rows += [Evidence(item.item_id, cue.attribute, self.source, context.run.run_id, cue.role,
                              cue.taxonomy_type, float(presence[col]), [], self.clip.name, self.clip.version,
                              {"similarity": float(similarity[col]), "contrast_similarity": contrast,
                               "cue_source": cue.source})
                     for col, cue in enumerate(self.cues)]
        return rows


@register_proposer("clip")
@dataclass
class ClipProposer(Proposer):
    """Score every class's candidate cues with a CLIP model on the class's images and on other classes'
    images (all of them, or ``negatives`` per class: see ``curate.propose.scoring``)."""

    model: str = "clip-vit-b-32"
    weights: str | None = None
    cue_source: str | None = None
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    contrast: tuple[str, ...] = DEFAULT_CONTRAST
    batch_size: int = 32
    device: str = "cpu"
    negatives: int | None = None

    def scorer(self, context: ProposeContext) -> ClipScorer:
        """The loaded scorer these options describe."""
        return ClipScorer(context, self.model, self.weights, self.device, self.templates, self.contrast)

    def run(self, context: ProposeContext) -> None:
        scorer = self.scorer(context)
        for class_pass in class_passes(context, self.cue_source, self.negatives):
            if not class_pass.items:
                continue
            scorer.begin_class(context, class_pass.label, class_pass.cues, class_pass.own)
            title = f"clip {class_pass.label}{'' if class_pass.own else ' (other classes)'}"
            with progress_bar(title, len(class_pass.items), context.progress) as advance:
                for batch in scorer.store.batches(class_pass.items, self.batch_size):  # stored ones skip decoding
                    rows = scorer.evidence(context, batch.items, batch.vectors) if batch.items else []
                    context.write_evidence(class_pass.keep(rows), **{class_pass.counter: len(batch.items)},
                                           unreadable=len(batch.failures))
                    for _ in range(len(batch.items) + len(batch.failures)):
                        advance()
        scorer.store.flush()
        context.count(embeddings_computed=scorer.store.computed)
