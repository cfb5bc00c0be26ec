"""``vlm-attributes``: a multimodal model proposes core and spurious attributes of each image in
the MM-SpuBench style (2-5 of each, spurious ones typed into the nine types). The image travels as
a JPEG data URL; answers are cached by content hash like every LLM answer. An item whose request
failed has no evidence, so a re-run asks for it again; each class's failures are recorded once it is
done (``llm-failures``), replacing those recorded before.

Under ``--executor ray`` the client is built on each actor from the options (the key is read from
``api_key_env`` there); the failed requests travel back with each batch and the driver records them,
so a run's failures and status are the same under both executors.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from dataclasses import dataclass

from PIL import Image
from pydantic import BaseModel, Field, field_validator

from curate.executors import ImageBatch
from curate.llm_settings import LLMSettings
from curate.models.llm import LLMClient, Messages
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.llm_common import (
    failure,
    failure_counts,
    record_failures,
    recorded_failures,
    retryable,
    spent,
)
from curate.propose.prompts import load_prompts
from curate.propose.scoring import (
    ClassPass,
    Execution,
    ImageScorer,
    Target,
    class_item_passes,
    class_of,
    score_images,
)
from curate.records import Evidence, EvidenceRole, Item
from curate.taxonomy import SPURIOUS_TYPES, canonical_type


class SpuriousAttribute(BaseModel):
    attribute: str
    type: str

    @field_validator("type")
    @classmethod
    def _nine_types(cls, value: str) -> str:
        return canonical_type(value)


class ImageAttributes(BaseModel):
    core_attributes: list[str] = Field(min_length=1)
    spurious_attributes: list[SpuriousAttribute] = Field(min_length=1)


def data_url(image: Image.Image, max_side: int, quality: int = 90) -> str:
    """The image as a ``data:image/jpeg;base64,...`` URL, its longer side at most ``max_side``.

    >>> data_url(Image.new("RGB", (4, 4)), 512)[:23]
    'data:image/jpeg;base64,'
    """
    view = image.copy()
    view.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    view.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


class VLMScorer(ImageScorer):
    """Asks the model for each image's attributes, in the words of its class; hands back the
    requests that failed (``take_records``) and counts the tokens and cost spent per batch."""

    def __init__(self, context: ProposeContext, options: VLMAttributesProposer) -> None:
        self.options = options
        self.prompts = load_prompts(options.prompts)
        self.client = LLMClient(options.settings(), context.workspace.cache)
        self.version = f"{options.settings().server()} prompts={self.prompts.version}"
        context.models[options.model] = self.version
        self.label: str | None = None
        self.failures: list[dict[str, object]] = []
        self.counts: Counter[str] = Counter()
        self.cost_counted = 0

    def begin_class(self, context: ProposeContext, label: str | None, targets: list[Target], own: bool = True
                    ) -> None:
        self.label = class_of(label)
        self.earlier = retryable(recorded_failures(context, self.label))
        self.text = self.prompts.render("attributes", label=self.label, types="\n".join(SPURIOUS_TYPES))

    def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
        before = Counter(self.client.stats.counts)
        requests: list[tuple[Messages, type[BaseModel]]] = [
            ([{"role": "system", "content": self.prompts.render("system")},
              {"role": "user", "content": [
                  {"type": "text", "text": self.text},
                  {"type": "image_url", "image_url": {"url": data_url(image, self.options.image_max_side)}}]}],
             ImageAttributes) for image in batch.images]
        rows, failed = [], []
        for item, result in zip(batch.items, self.client.ask_many(requests), strict=True):
            if result.ok:
                rows += self._evidence(context, item, result.value)  # type: ignore[arg-type]  # ok: value set
            else:
                failed.append(failure(context, str(self.label), "attributes", result, item.item_id))
        self.counts.update(failure_counts(self.earlier, failed, {("attributes", i.item_id) for i in batch.items}))
        self.counts.update(spent(self.client, before))
        cost = self.client.cost_usd()
        if cost is not None:  # in micro-dollars, rounded once over the run's total
            self.counts["llm_cost_microusd"] += round(cost * 1e6) - self.cost_counted
            self.cost_counted = round(cost * 1e6)
        self.failures += failed
        return rows

    def take_counts(self) -> dict[str, int]:
        counts, self.counts = +self.counts, Counter()
        return dict(counts)

    def take_records(self) -> list[dict[str, object]]:
        failures, self.failures = self.failures, []
        return failures

    def _evidence(self, context: ProposeContext, item: Item, answer: ImageAttributes) -> list[Evidence]:
        name, model = self.options.name, self.options.model
        core = [Evidence(item.item_id, text.strip().lower(), name, context.run.run_id, EvidenceRole.CORE,
                         None, None, [], model, self.version) for text in answer.core_attributes if text.strip()]
        spurious = [Evidence(item.item_id, s.attribute.strip().lower(), name, context.run.run_id,
                             EvidenceRole.SPURIOUS, s.type, None, [], model, self.version)
                    for s in answer.spurious_attributes if s.attribute.strip()]
        return core + spurious


@register_proposer("vlm-attributes")
@dataclass
class VLMAttributesProposer(LLMSettings, Execution, Proposer):
    """Ask a vision-language model (OpenAI-compatible) for the attributes of every image, here or on
    a Ray cluster's actors (``executor``; the work is the server's, so actors take no GPU)."""

    prompts: str = "vlm-attributes-v1"
    image_max_side: int = 768
    batch_size: int = 16

    def scorers(self, context: ProposeContext) -> list[ImageScorer]:
        """The scorer asking the model."""
        return [VLMScorer(context, self)]

    def end_pass(self, context: ProposeContext, class_pass: ClassPass, failures: list[dict[str, object]]) -> None:
        """Record a class's failed requests in place of those recorded before."""
        record_failures(context, class_of(class_pass.label), failures)

    def run(self, context: ProposeContext) -> None:
        score_images(context, self.scorers, class_item_passes(context), self.batch_size, "vlm", self.make_executor(),
                     self.end_pass)
