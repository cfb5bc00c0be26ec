"""``focus-settings``: time, weather and locations of every image by CLIP zero-shot scoring
(FOCUS-style), as evidence rows ``time:<value>``, ``weather:<value>``, ``location:<value>``.

Time and weather are a softmax over their values (one winner each); every location is scored on
its own against a neutral contrast (several may hold). The ``focus`` builder reads these rows when
no human verdict on the setting exists and machine labels are allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from curate.propose.base import ProposeContext, register_proposer
from curate.propose.clip import EmbeddingScorer, ensemble, presence
from curate.propose.scoring import ClassPass, ImageProposer, ImageScorer, Target, class_item_passes, class_of
from curate.records import Evidence, Item, Setting, SettingKind

TIMES = ("day", "night")
WEATHERS = ("cloudy", "foggy", "partly cloudy", "raining", "snowing", "sunny")
LOCATIONS = ("forest", "grass", "indoors", "rocks", "sand", "street", "snow", "water")
SETTINGS = (("time", TIMES), ("weather", WEATHERS), ("location", LOCATIONS))
TEMPLATES = {
    "time": ("a photo taken during the {value}.", "a picture of a {label} at {value}."),
    "weather": ("a photo taken on a {value} day.", "a picture of a {label}, the weather is {value}."),
    "location": ("a photo of a {label} in the {value}.", "a picture taken on {value}."),
}
CONTRAST = ("a photo of a {label}.",)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class FocusScorer(EmbeddingScorer):
    """Time, weather and location values of each image, in the words of its class."""

    source = "focus-settings"

    def begin_class(self, context: ProposeContext, label: str | None, targets: list[Target], own: bool = True
                    ) -> None:
        label = class_of(label)
        self.texts = {kind: np.stack([ensemble(self.clip, TEMPLATES[kind], context, value=value, label=label)
                                      for value in values]) for kind, values in SETTINGS}
        self.contrast = ensemble(self.clip, CONTRAST, context, label=label)

    def evidence(self, context: ProposeContext, items: list[Item], vectors: np.ndarray) -> list[Evidence]:
        scale = self.clip.logit_scale
        scores = {"time": _softmax(scale * vectors @ self.texts["time"].T),
                  "weather": _softmax(scale * vectors @ self.texts["weather"].T),
                  "location": presence(scale, vectors @ self.texts["location"].T, (vectors @ self.contrast)[:, None])}
        return [Setting(SettingKind(kind), value).evidence(item.item_id, self.source, context.run.run_id,
                                                           float(scores[kind][row, col]), self.clip.name,
                                                           self.clip.version)
                for row, item in enumerate(items) for kind, values in SETTINGS for col, value in enumerate(values)]


@register_proposer("focus-settings")
@dataclass
class FocusSettingsProposer(ImageProposer):
    """Zero-shot time, weather and locations per image with a CLIP model."""

    model: str = "clip-vit-b-32"
    weights: str | None = None

    def scorers(self, context: ProposeContext) -> list[ImageScorer]:
        return [FocusScorer(context, self.model, self.weights, self.device)]

    def passes(self, context: ProposeContext) -> Iterable[ClassPass]:
        return class_item_passes(context)
