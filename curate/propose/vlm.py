"""``vlm-attributes``: a multimodal model proposes core and spurious attributes of each image in
the MM-SpuBench style (2-5 of each, spurious ones typed into the nine types). The image travels as
a JPEG data URL; answers are cached by content hash like every LLM answer."""

from __future__ import annotations

import base64
import io
from collections import Counter
from dataclasses import dataclass

from PIL import Image
from pydantic import BaseModel, Field, field_validator

from curate.executors import image_batches
from curate.models.llm import LLMClient, Messages
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.llm_common import LLMOptions, count_cost, record_failures, spent
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
class VLMAttributesProposer(LLMOptions, Proposer):
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
                    rows, failures = [], []
                    for item, result in zip(batch.items, client.ask_many(requests), strict=True):
                        if result.ok:
                            rows += self._evidence(context, item, result.value, version)  # type: ignore[arg-type]
                        else:
                            failures.append({"run_id": context.run.run_id, "class_label": label, "step": "attributes",
                                             "cue": item.item_id, "error": result.error or ""})
                    record_failures(context, f"{label}:{batch.items[0].item_id if batch.items else ''}", failures)
                    context.write_evidence(rows, items=len(batch.items) - len(failures), unreadable=len(batch.failures),
                                           llm_failures_recorded=len(failures), **spent(client, before))
                    for _ in range(len(batch.items) + len(batch.failures)):
                        advance()
        count_cost(context, client)

    def _evidence(self, context: ProposeContext, item: Item, answer: ImageAttributes, version: str) -> list[Evidence]:
        core = [Evidence(item.item_id, text.strip().lower(), self.name, context.run.run_id, EvidenceRole.CORE,
                         None, None, [], self.model, version) for text in answer.core_attributes if text.strip()]
        spurious = [Evidence(item.item_id, s.attribute.strip().lower(), self.name, context.run.run_id,
                             EvidenceRole.SPURIOUS, s.type, None, [], self.model, version)
                    for s in answer.spurious_attributes if s.attribute.strip()]
        return core + spurious
