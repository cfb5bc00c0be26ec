"""``focus-settings``: time, weather and locations of every image by CLIP zero-shot scoring
(FOCUS-style), as evidence rows ``time:<value>``, ``weather:<value>``, ``location:<value>``.

Time and weather are a softmax over their values (one winner each); every location is scored on
its own against a neutral contrast (several may hold). The ``focus`` builder reads these rows when
no human verdict on the setting exists and machine labels are allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.models import ClipModel, load_model
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.clip import ensemble
from curate.propose.embeddings import EmbeddingStore
from curate.records import Setting, SettingKind

TIMES = ("day", "night")
WEATHERS = ("cloudy", "foggy", "partly cloudy", "raining", "snowing", "sunny")
LOCATIONS = ("forest", "grass", "indoors", "rocks", "sand", "street", "snow", "water")
TEMPLATES = {
    "time": ("a photo taken during the {value}.", "a picture of a {label} at {value}."),
    "weather": ("a photo taken on a {value} day.", "a picture of a {label}, the weather is {value}."),
    "location": ("a photo of a {label} in the {value}.", "a picture taken on {value}."),
}
CONTRAST = ("a photo of a {label}.",)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@register_proposer("focus-settings")
@dataclass
class FocusSettingsProposer(Proposer):
    """Zero-shot time, weather and locations per image with a CLIP model."""

    model: str = "clip-vit-b-32"
    weights: str | None = None
    batch_size: int = 32
    device: str = "cpu"

    def run(self, context: ProposeContext) -> None:
        clip: ClipModel = load_model(self.model, weights=self.weights, device=self.device)
        context.models[clip.name] = clip.version
        store = EmbeddingStore(context.workspace, clip, context.run.run_id)
        for label in context.class_labels():
            texts = {kind: np.stack([ensemble(clip, TEMPLATES[kind], context, value=value, label=label)
                                     for value in values])
                     for kind, values in (("time", TIMES), ("weather", WEATHERS), ("location", LOCATIONS))}
            contrast = ensemble(clip, CONTRAST, context, label=label)
            items = context.pending_items(label)
            with progress_bar(f"focus {label}", len(items), context.progress) as advance:
                for batch in store.batches(items, self.batch_size):
                    if not batch.items:
                        context.count(unreadable=len(batch.failures))
                        continue
                    scale = clip.logit_scale
                    scores = {"time": _softmax(scale * batch.vectors @ texts["time"].T),
                              "weather": _softmax(scale * batch.vectors @ texts["weather"].T),
                              "location": 1 / (1 + np.exp(-scale * (batch.vectors @ texts["location"].T
                                                                   - (batch.vectors @ contrast)[:, None])))}
                    rows = [Setting(SettingKind(kind), value).evidence(item.item_id, self.name, context.run.run_id,
                                                                       float(scores[kind][row, col]), clip.name,
                                                                       clip.version)
                            for row, item in enumerate(batch.items)
                            for kind, values in (("time", TIMES), ("weather", WEATHERS), ("location", LOCATIONS))
                            for col, value in enumerate(values)]
                    context.write_evidence(rows, items=len(batch.items), unreadable=len(batch.failures))
                    for _ in range(len(batch.items) + len(batch.failures)):
                        advance()
        store.flush()
        context.count(embeddings_computed=store.computed)
