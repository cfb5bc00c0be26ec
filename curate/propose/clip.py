"""``clip``: per (item, cue) the CLIP similarity and a zero-shot presence probability.

Each cue is embedded as a prompt ensemble (the mean of its templates); the contrast is the
ensemble of neutral prompts for the class. Presence probability is the two-way softmax of
``logit_scale * [similarity(cue), similarity(contrast)]``: how much better the image matches the
class *with* the cue than the class alone. Image embeddings are stored once per model version, so
a later run on the same images decodes nothing.
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
from curate.propose.scoring import ImageScorer, class_cues
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

    def begin_class(self, context: ProposeContext, label: str, cues: list[Cue]) -> None:
        self.cues = cues
        self.texts = np.stack([ensemble(self.clip, self.templates, context, attribute=c.attribute, label=label)
                               for c in cues])
        self.contrast_vector = ensemble(self.clip, self.contrast, context, label=label)

    def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
        fresh = [i for i, item in enumerate(batch.items) if item.item_id not in self.store.known]
        if fresh:
            vectors = self.clip.encode_images(torch.stack([batch.transformed[i] for i in fresh]))
            self.store.remember([batch.items[i] for i in fresh], vectors)
        return self.evidence(context, batch.items, np.stack([self.store.known[i.item_id] for i in batch.items]))

    def evidence(self, context: ProposeContext, items: list[Item], vectors: np.ndarray) -> list[Evidence]:
        """Evidence for ``items`` from their (N, D) image embeddings."""
        similarity, contrast = vectors @ self.texts.T, vectors @ self.contrast_vector
        presence = 1.0 / (1.0 + np.exp(-self.clip.logit_scale * (similarity - contrast[:, None])))
        return [
            Evidence(item.item_id, cue.attribute, self.source, context.run.run_id, cue.role,
                     cue.taxonomy_type, float(presence[row, col]), [], self.clip.name, self.clip.version,
                     {"similarity": float(similarity[row, col]), "contrast_similarity": float(contrast[row]),
                      "cue_source": cue.source})
            for row, item in enumerate(items) for col, cue in enumerate(self.cues)
        ]


@register_proposer("clip")
@dataclass
class ClipProposer(Proposer):
    """Score every candidate cue of an item's class on the item with a CLIP model."""

    model: str = "clip-vit-b-32"
    weights: str | None = None
    cue_source: str | None = None
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    contrast: tuple[str, ...] = DEFAULT_CONTRAST
    batch_size: int = 32
    device: str = "cpu"

    def scorer(self, context: ProposeContext) -> ClipScorer:
        """The loaded scorer these options describe."""
        return ClipScorer(context, self.model, self.weights, self.device, self.templates, self.contrast)

    def run(self, context: ProposeContext) -> None:
        scorer = self.scorer(context)
        for label in context.class_labels():
            cues = class_cues(context, label, self.cue_source)
            items = context.pending_items(label)
            if not cues:
                context.count(items_without_cues=len(items))
                continue
            scorer.begin_class(context, label, cues)
            with progress_bar(f"clip {label}", len(items), context.progress) as advance:
                for batch in scorer.store.batches(items, self.batch_size):  # stored embeddings skip decoding
                    rows = scorer.evidence(context, batch.items, batch.vectors) if batch.items else []
                    context.write_evidence(rows, items=len(batch.items), unreadable=len(batch.failures))
                    for _ in range(len(batch.items) + len(batch.failures)):
                        advance()
        scorer.store.flush()
        context.count(embeddings_computed=scorer.store.computed)
