"""``logo-mining``: how much each image of a pool looks like a logo (SLANT's mining step).

Every item is scored, labelled or not: the CLIP presence probability of a logo prompt ensemble
against a neutral contrast, stored as evidence ``logo``. The ``logobank`` builder keeps the top
fraction, drops near-duplicates by embedding similarity and sends the rest to verification.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from curate.models import ClipModel
from curate.propose.base import ProposeContext, register_proposer
from curate.propose.clip import EmbeddingScorer, presence
from curate.propose.scoring import ClassPass, ImageProposer, ImageScorer, Target
from curate.records import Evidence, EvidenceRole, Item

LOGO_PROMPTS = ("a logo of a company.", "a brand logo.", "a photo of a logo.", "a company logo printed on a product.")
CONTRAST_PROMPTS = ("a photo.", "a photo of an object.", "a photo of a scene.")


def _mean(clip: ClipModel, texts: tuple[str, ...], context: ProposeContext) -> np.ndarray:
    vectors = clip.encode_texts(list(texts), context.workspace.cache).mean(axis=0)
    return vectors / max(float(np.linalg.norm(vectors)), 1e-12)


class LogoScorer(EmbeddingScorer):
    """The presence probability of the logo prompts against the neutral ones."""

    source = "logo-mining"

    def __init__(self, context: ProposeContext, model: str, weights: str | None, device: str,
                 prompts: tuple[str, ...], contrast: tuple[str, ...]) -> None:
        super().__init__(context, model, weights, device)
        self.logo, self.contrast = _mean(self.clip, prompts, context), _mean(self.clip, contrast, context)

    def begin_class(self, context: ProposeContext, label: str | None, targets: list[Target], own: bool = True
                    ) -> None:
        """Logo prompts name no class: nothing to prepare."""

    def evidence(self, context: ProposeContext, items: list[Item], vectors: np.ndarray) -> list[Evidence]:
        similarity = vectors @ self.logo
        probability = presence(self.clip.logit_scale, similarity, vectors @ self.contrast)
        return [Evidence(item.item_id, "logo", self.source, context.run.run_id, EvidenceRole.CANDIDATE, None,
                         float(p), [], self.clip.name, self.clip.version, {"similarity": float(s)})
                for item, p, s in zip(items, probability, similarity, strict=True)]


@register_proposer("logo-mining")
@dataclass
class LogoMiningProposer(ImageProposer):
    """Score every item of the workspace against logo prompts with a CLIP model."""

    model: str = "clip-vit-b-32"
    weights: str | None = None
    prompts: tuple[str, ...] = LOGO_PROMPTS
    contrast: tuple[str, ...] = CONTRAST_PROMPTS

    def scorers(self, context: ProposeContext) -> list[ImageScorer]:
        return [LogoScorer(context, self.model, self.weights, self.device, self.prompts, self.contrast)]

    def passes(self, context: ProposeContext) -> Iterable[ClassPass]:
        return [ClassPass(None, [], context.pending_items(), True)]
