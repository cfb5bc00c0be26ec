"""``logo-mining``: how much each image of a pool looks like a logo (SLANT's mining step).

Every item is scored, labelled or not: the CLIP presence probability of a logo prompt ensemble
against a neutral contrast, stored as evidence ``logo``. The ``logobank`` builder keeps the top
fraction, drops near-duplicates by embedding similarity and sends the rest to verification.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.models import ClipModel, load_model
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.embeddings import EmbeddingStore
from curate.records import Evidence, EvidenceRole

LOGO_PROMPTS = ("a logo of a company.", "a brand logo.", "a photo of a logo.", "a company logo printed on a product.")
CONTRAST_PROMPTS = ("a photo.", "a photo of an object.", "a photo of a scene.")


def _mean(clip: ClipModel, texts: tuple[str, ...], context: ProposeContext) -> np.ndarray:
    vectors = clip.encode_texts(list(texts), context.workspace.cache).mean(axis=0)
    return vectors / max(float(np.linalg.norm(vectors)), 1e-12)


@register_proposer("logo-mining")
@dataclass
class LogoMiningProposer(Proposer):
    """Score every item of the workspace against logo prompts with a CLIP model."""

    model: str = "clip-vit-b-32"
    weights: str | None = None
    prompts: tuple[str, ...] = LOGO_PROMPTS
    contrast: tuple[str, ...] = CONTRAST_PROMPTS
    batch_size: int = 32
    device: str = "cpu"

    def run(self, context: ProposeContext) -> None:
        clip: ClipModel = load_model(self.model, weights=self.weights, device=self.device)
        context.models[clip.name] = clip.version
        store = EmbeddingStore(context.workspace, clip, context.run.run_id)
        logo, contrast = _mean(clip, self.prompts, context), _mean(clip, self.contrast, context)
        items = context.pending_items()
        with progress_bar("logo-mining", len(items), context.progress) as advance:
            for batch in store.batches(items, self.batch_size):
                if batch.items:
                    similarity, neutral = batch.vectors @ logo, batch.vectors @ contrast
                    presence = 1 / (1 + np.exp(-clip.logit_scale * (similarity - neutral)))
                    rows = [Evidence(item.item_id, "logo", self.name, context.run.run_id, EvidenceRole.CANDIDATE,
                                     None, float(p), [], clip.name, clip.version, {"similarity": float(s)})
                            for item, p, s in zip(batch.items, presence, similarity, strict=True)]
                else:
                    rows = []
                context.write_evidence(rows, items=len(batch.items), unreadable=len(batch.failures))
                for _ in range(len(batch.items) + len(batch.failures)):
                    advance()
        store.flush()
        context.count(embeddings_computed=store.computed)
