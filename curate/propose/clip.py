"""``clip``: per (item, cue) the CLIP similarity and a zero-shot presence probability.

Each cue is embedded as a prompt ensemble (the mean of its templates); the contrast is the
ensemble of neutral prompts for the class. Presence probability (``presence``) is the two-way
softmax of ``logit_scale * [similarity(cue), similarity(contrast)]``: how much better the image matches the
class *with* the cue than the class alone, in the words of the image's own class (also when the cue
is another class's, scored on the negative pool). Image embeddings are stored once per model
version, so a later run on the same images decodes nothing.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from curate.executors import ImageBatch
from curate.models import ClipModel, load_model, model_version
from curate.propose.base import ProposeContext, register_proposer
from curate.propose.embeddings import EmbeddingStore
from curate.propose.scoring import ClassPass, ImageProposer, ImageScorer, Target, class_passes
from curate.records import Evidence, Item

DEFAULT_TEMPLATES = ("a photo of {attribute}.", "a photo of a {label} with {attribute}.",
                     "a picture showing {attribute}.")
DEFAULT_CONTRAST = ("a photo of a {label}.", "a picture of a {label}.")


def ensemble(clip: ClipModel, templates: tuple[str, ...], context: ProposeContext, **fields_: str) -> np.ndarray:
    """Unit-length mean of the text embeddings of ``templates`` filled with ``fields_``."""
    vectors = clip.encode_texts([t.format(**fields_) for t in templates], context.workspace.cache)
    mean = vectors.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def presence(logit_scale: float, similarity: np.ndarray | float, contrast: np.ndarray | float) -> np.ndarray:
    """Zero-shot presence probability: the two-way softmax of ``logit_scale * [similarity,
    contrast]``, i.e. the sigmoid of the scaled margin of the cue over its neutral contrast.

    >>> float(presence(100.0, 0.3, 0.3)), round(float(presence(100.0, 0.32, 0.3)), 3)
    (0.5, 0.881)
    """
    return 1.0 / (1.0 + np.exp(-logit_scale * (similarity - contrast)))


class EmbeddingScorer(ImageScorer):
    """A CLIP scorer working from image embeddings: those this workspace stored for the model
    version (no image decoded for them), else computed from the batch and stored."""

    def __init__(self, context: ProposeContext, model: str, weights: str | None, device: str) -> None:
        self.clip: ClipModel = load_model(model, weights=weights, device=device)
        context.models[self.clip.name] = self.clip.version
        self.store = EmbeddingStore(context.workspace, self.clip, context.run.run_id)
        self.transform = self.clip.preprocess_image
        self._counted = 0

    def needs_image(self, item: Item) -> bool:
        return not self.store.has(item.item_id)

    def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
        fresh = [i for i, item in enumerate(batch.items) if not self.store.has(item.item_id)]
        if fresh:
            vectors = self.clip.encode_images(torch.stack([batch.transformed[i] for i in fresh]))
            self.store.remember([batch.items[i] for i in fresh], vectors)
        return self.evidence(context, batch.items, self.store.vectors(batch.items))

    @abstractmethod
    def evidence(self, context: ProposeContext, items: list[Item], vectors: np.ndarray) -> list[Evidence]:
        """Evidence for ``items`` from their (N, D) unit-length image embeddings."""

    def take_counts(self) -> dict[str, int]:
        computed, self._counted = self.store.computed - self._counted, self.store.computed
        return {"embeddings_computed": computed} if computed else {}

    def finish(self) -> None:
        self.store.flush()


class ClipScorer(EmbeddingScorer):
    """CLIP similarity and presence probability of each cue."""

    source = "clip"

    def __init__(self, context: ProposeContext, model: str, weights: str | None, device: str,
                 templates: tuple[str, ...], contrast: tuple[str, ...]) -> None:
        super().__init__(context, model, weights, device)
        self.templates, self.contrast = templates, contrast
        self.targets: list[Target] = []

    def begin_class(self, context: ProposeContext, label: str | None, targets: list[Target], own: bool = True
                    ) -> None:
        self.targets, self.context = targets, context
        self.text_vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def texts(self, label: str) -> tuple[np.ndarray, np.ndarray]:
        """(cue ensembles, contrast ensemble) of the current cues for images of class ``label``."""
        if label not in self.text_vectors:  # one text-encoder call for every cue's templates
            texts = [t.format(attribute=c.attribute, label=label) for c in self.targets for t in self.templates]
            means = self.clip.encode_texts(texts, self.context.workspace.cache).reshape(
                len(self.targets), len(self.templates), -1).mean(axis=1)
            self.text_vectors[label] = (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12),
                                        ensemble(self.clip, self.contrast, self.context, label=label))
        return self.text_vectors[label]

    def evidence(self, context: ProposeContext, items: list[Item], vectors: np.ndarray) -> list[Evidence]:
        """Each image is scored in the words of its own class, so an (image, cue) pair means the same
        whichever class listed the cue."""
        rows = []
        for row, item in enumerate(items):
            texts, contrast_vector = self.texts(item.label or "")
            similarity, contrast = texts @ vectors[row], float(vectors[row] @ contrast_vector)
            probability = presence(self.clip.logit_scale, similarity, contrast)
            rows += [Evidence(item.item_id, cue.attribute, self.source, context.run.run_id, cue.role,
                              cue.taxonomy_type, float(probability[col]), [], self.clip.name, self.clip.version,
                              {"similarity": float(similarity[col]), "contrast_similarity": contrast,
                               "cue_source": cue.source})
                     for col, cue in enumerate(self.targets)]
        return rows


@register_proposer("clip")
@dataclass
class ClipProposer(ImageProposer):
    """Score every class's candidate cues with a CLIP model on the class's images and on other classes'
    images (all of them, or ``negatives`` per class: see ``curate.propose.scoring``)."""

    model: str = "clip-vit-b-32"
    weights: str | None = None
    cue_source: str | None = None
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    contrast: tuple[str, ...] = DEFAULT_CONTRAST
    negatives: int | None = None

    def scorers(self, context: ProposeContext) -> list[ImageScorer]:
        return [ClipScorer(context, self.model, self.weights, self.device, self.templates, self.contrast)]

    def model_versions(self) -> dict[str, str]:
        return {self.model: model_version(self.model, weights=self.weights)}

    def passes(self, context: ProposeContext) -> Iterable[ClassPass]:
        return class_passes(context, self.cue_source, self.negatives)
