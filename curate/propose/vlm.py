"""``vlm-attributes``: a multimodal model proposes core and spurious attributes of each image in
the MM-SpuBench style (2-5 of each, spurious ones typed into the nine types). The image travels as
a JPEG data URL; answers are cached by content hash like every LLM answer. An item whose request
failed has no evidence, so a re-run asks for it again; each class's failures are recorded once it is
done (``llm-failures``), replacing those recorded before."""

from __future__ import annotations

import base64
import io
from collections import Counter
from dataclasses import dataclass

from PIL import Image
from pydantic import BaseModel, Field, field_validator

from curate.executors import image_batches
from curate.llm_settings import LLMSettings
from curate.models.llm import LLMClient, Messages
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.llm_common import (
    count_cost,
    failure,
    failure_counts,
    record_failures,
    recorded_failures,
    retryable,
    spent,
)
from curate.propose.prompts import load_prompts
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


@register_proposer("vlm-attributes")
@dataclass
class VLMAttributesProposer(LLMSettings, Proposer):
    """Ask a vision-language model (OpenAI-compatible) for the attributes of every image."""

    prompts: str = "vlm-attributes-v1"
    image_max_side: int = 768
    batch_size: int = 16

    def run(self, context: ProposeContext) -> None:
        prompts = load_prompts(self.prompts)
        client = LLMClient(self.settings(), context.workspace.cache)
        version = f"{self.settings().server()} prompts={prompts.version}"
        context.models[self.model] = version
        for label in context.class_labels():
            items = context.pending_items(label)
            if not items:
                continue
            earlier, failures = retryable(recorded_failures(context, label)), []
            text = prompts.render("attributes", label=label, types="\n".join(SPURIOUS_TYPES))
            with progress_bar(f"vlm {label}", len(items), context.progress) as advance:
                for batch in image_batches(context.workspace, items, self.batch_size):
                    before = Counter(client.stats.counts)
                    requests: list[tuple[Messages, type[BaseModel]]] = [
                        ([{"role": "system", "content": prompts.render("system")},
                          {"role": "user", "content": [
                              {"type": "text", "text": text},
                              {"type": "image_url", "image_url": {"url": data_url(image, self.image_max_side)}}]}],
                         ImageAttributes) for image in batch.images]
                    rows, failed = [], []
                    for item, result in zip(batch.items, client.ask_many(requests), strict=True):
                        if result.ok:
                            # ignored below (arg-type): value is set when result.ok
                            rows += self._evidence(context, item, result.value, version)  # type: ignore[arg-type]
                        else:
                            failed.append(failure(context, label, "attributes", result, item.item_id))
                    context.write_evidence(rows, items=len(batch.items) - len(failed), unreadable=len(batch.failures),
                                           **failure_counts(earlier, failed, {("attributes", i.item_id)
                                                                              for i in batch.items}),
                                           **spent(client, before))
                    failures += failed
                    for _ in range(len(batch.items) + len(batch.failures)):
                        advance()
            record_failures(context, label, failures)
        count_cost(context, client)

    def _evidence(self, context: ProposeContext, item: Item, answer: ImageAttributes, version: str) -> list[Evidence]:
        core = [Evidence(item.item_id, text.strip().lower(), self.name, context.run.run_id, EvidenceRole.CORE,
                         None, None, [], self.model, version) for text in answer.core_attributes if text.strip()]
        spurious = [Evidence(item.item_id, s.attribute.strip().lower(), self.name, context.run.run_id,
                             EvidenceRole.SPURIOUS, s.type, None, [], self.model, version)
                    for s in answer.spurious_attributes if s.attribute.strip()]
        return core + spurious
