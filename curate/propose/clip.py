"""``clip``: per (item, cue) the CLIP similarity and a zero-shot presence probability.

Each cue is embedded as a prompt ensemble (the mean of its templates); the contrast is the
ensemble of neutral prompts for the class. Presence probability is the two-way softmax of
``logit_scale * [similarity(cue), similarity(contrast)]``: how much better the image matches the
class *with* the cue than the class alone. Image embeddings are stored once per model version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.models import ClipModel, load_model
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.embeddings import EmbeddingStore
from curate.records import Cue, Evidence, EvidenceRole, Item

DEFAULT_TEMPLATES = ("a photo of {attribute}.", "a photo of a {label} with {attribute}.",
                     "a picture showing {attribute}.")
DEFAULT_CONTRAST = ("a photo of a {label}.", "a picture of a {label}.")


def ensemble(clip: ClipModel, templates: tuple[str, ...], context: ProposeContext, **fields_: str) -> np.ndarray:
    """Unit-length mean of the text embeddings of ``templates`` filled with ``fields_``."""
    vectors = clip.encode_texts([t.format(**fields_) for t in templates], context.workspace.cache)
    mean = vectors.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def unique_cues(cues: list[Cue]) -> list[Cue]:
    """One cue per attribute (the first listed), in attribute order."""
    return list({cue.attribute: cue for cue in reversed(cues)}.values())[::-1]


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

    def run(self, context: ProposeContext) -> None:
        clip = load_model(self.model, weights=self.weights, device=self.device)
        context.models[clip.name] = clip.version
        store = EmbeddingStore(context.workspace, clip, context.run.run_id)
        for label in context.class_labels():
            cues = unique_cues(context.workspace.catalog.cues(class_label=label, source=self.cue_source))
            items = context.pending_items(label)
            if not cues:
                context.count(items_without_cues=len(items))
                continue
            texts = np.stack([ensemble(clip, self.templates, context, attribute=c.attribute, label=label)
                              for c in cues])
            contrast = ensemble(clip, self.contrast, context, label=label)
            with progress_bar(f"clip {label}", len(items), context.progress) as advance:
                for batch in store.batches(items, self.batch_size):
                    rows = self._evidence(context, clip, cues, batch.items, batch.vectors @ texts.T,
                                          batch.vectors @ contrast)
                    context.write_evidence(rows, items=len(batch.items), unreadable=len(batch.failures))
                    for _ in range(len(batch.items) + len(batch.failures)):
                        advance()
        context.count(embeddings_computed=store.computed)

    def _evidence(self, context: ProposeContext, clip: ClipModel, cues: list[Cue], items: list[Item],
                  similarity: np.ndarray, contrast: np.ndarray) -> list[Evidence]:
        scale = clip.logit_scale
        presence = 1.0 / (1.0 + np.exp(-scale * (similarity - contrast[:, None])))
        return [
            Evidence(item.item_id, cue.attribute, self.name, context.run.run_id, EvidenceRole.CANDIDATE,
                     cue.taxonomy_type, float(presence[row, col]), [], clip.name, clip.version,
                     {"similarity": float(similarity[row, col]), "contrast_similarity": float(contrast[row]),
                      "cue_source": cue.source})
            for row, item in enumerate(items) for col, cue in enumerate(cues)
        ]
