"""The spurious gap of a model under test (SpurLens, spuriosity rankings).

For each (class X, cue): rank X's images by the cue's score (ties broken by a seeded shuffle) and
take the top K and bottom K.

- natural gap = Acc(top K) - Acc(bottom K), where a model is right when it says X is there;
- masked gap = Acc_masked(bottom K) - Acc_masked(top K): X's own boxes (detector evidence with role
  ``core``) are blacked out, so the right answer becomes "no X"; a model that still sees X where the
  cue is strong is hallucinating from the cue;
- score = (natural gap + masked gap) / 2. Cues are ranked by it; there is no cut-off.

Models under test come through one small interface, ``ModelUnderTest.says_present``: a table of
predictions, an open_clip zero-shot classifier, or an OpenAI-compatible VLM asked three yes/no
questions. The masked images are written once into ``derived/masked/`` in the workspace.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw

from curate.analyze.cues import presence_from_evidence
from curate.images import open_image, pil_open
from curate.progress import progress_bar
from curate.records import EvidenceRole, Item
from curate.registry import Registry
from curate.workspace import Workspace

YES_NO_QUESTIONS = ("Is there a {label} in the image?", "Does this image contain a {label}?",
                    "Can you see a {label} in this picture?")
GAP_COLUMNS = ("class_label", "attribute", "taxonomy_type", "k", "natural_top_acc", "natural_bottom_acc",
               "natural_gap", "masked_top_acc", "masked_bottom_acc", "masked_gap", "n_masked_top", "n_masked_bottom",
               "score")


class ModelUnderTest(ABC):
    """Anything that can say, per image, whether an object of class ``label`` is in it."""

    name: str
    version: str

    @abstractmethod
    def says_present(self, items: Sequence[Item], images: Sequence[Image.Image], label: str, variant: str,
                     classes: Sequence[str]) -> list[float]:
        """Per image, the share of answers saying ``label`` is present (0 to 1). ``variant`` is
        ``natural`` or ``masked``; ``classes`` are all the benchmark's classes."""


MODELS_UNDER_TEST: Registry[type[ModelUnderTest]] = Registry("model under test", ValueError, attribute="kind")


@MODELS_UNDER_TEST.register("table")
class PredictionTable(ModelUnderTest):
    """Answers given as a table: ``item_id``, ``variant`` (natural / masked) and either ``present``
    (1 or 0) or ``prediction`` (a class name; present when it equals the label)."""

    def __init__(self, path: str | Path, name: str = "table") -> None:
        from curate.ingest.base import read_table

        frame = read_table(Path(path))
        missing = {"item_id", "variant"} - set(frame.columns)
        if missing or not {"present", "prediction"} & set(frame.columns):
            raise ValueError(f"{path} needs item_id, variant and present or prediction; it has {frame.columns}")
        self.frame, self.name = frame, name
        self.version = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]

    def says_present(self, items: Sequence[Item], images: Sequence[Image.Image], label: str, variant: str,
                     classes: Sequence[str]) -> list[float]:
        rows = {r["item_id"]: r for r in self.frame.filter(pl.col("variant") == variant).iter_rows(named=True)}
        answers = []
        for item in items:
            if item.item_id not in rows:
                raise ValueError(f"the prediction table has no {variant} answer for item {item.item_id}")
            row = rows[item.item_id]
            answers.append(float(row["present"]) if "present" in row else float(row["prediction"] == label))
        return answers


@MODELS_UNDER_TEST.register("clip")
class ClipZeroShot(ModelUnderTest):
    """An open_clip zero-shot classifier over the benchmark's classes: it says X when X wins."""

    def __init__(self, model: str = "clip-vit-b-32", weights: str | None = None, device: str = "cpu",
                 template: str = "a photo of a {label}.") -> None:
        from curate.models import load_model

        self.clip = load_model(model, weights=weights, device=device)
        self.name, self.version, self.template = model, self.clip.version, template

    def predict(self, images: Sequence[Image.Image], classes: Sequence[str], batch_size: int = 32) -> list[str]:
        """The winning class of each image."""
        import torch

        texts = self.clip.encode_texts([self.template.format(label=c) for c in classes])
        winners: list[str] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            vectors = self.clip.encode_images(torch.stack([self.clip.preprocess_image(i) for i in chunk]))
            winners += [classes[w] for w in (vectors @ texts.T).argmax(axis=1)]
        return winners

    def says_present(self, items: Sequence[Item], images: Sequence[Image.Image], label: str, variant: str,
                     classes: Sequence[str]) -> list[float]:
        return [float(winner == label) for winner in self.predict(images, classes)]


@MODELS_UNDER_TEST.register("vlm")
class VLMYesNo(ModelUnderTest):
    """An OpenAI-compatible VLM asked three yes/no questions per image; the share of yeses."""

    def __init__(self, model: str = "gpt-4o-mini", base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 workspace: Workspace | None = None, image_max_side: int = 768) -> None:
        from curate.models.llm import LLMClient, LLMSettings

        settings = LLMSettings(model=model, base_url=base_url, api_key_env=api_key_env)
        self.client = LLMClient(settings, workspace.cache if workspace else None)
        self.name, self.version, self.image_max_side = model, settings.server(), image_max_side

    def says_present(self, items: Sequence[Item], images: Sequence[Image.Image], label: str, variant: str,
                     classes: Sequence[str]) -> list[float]:
        from curate.propose.llm_cues import YesNo
        from curate.propose.vlm import data_url

        requests = []
        for image in images:
            url = data_url(image, self.image_max_side)
            for question in YES_NO_QUESTIONS:
                content = [{"type": "text", "text": question.format(label=label)
                            + ' Answer as JSON: {"answer": "yes"} or {"answer": "no"}.'},
                           {"type": "image_url", "image_url": {"url": url}}]
                requests.append(([{"role": "user", "content": content}], YesNo))
        results = self.client.ask_many(requests)
        answers = [1.0 if r.ok and r.value.answer == "yes" else 0.0 for r in results]  # type: ignore[union-attr]
        per_image = len(YES_NO_QUESTIONS)
        return [float(np.mean(answers[i:i + per_image])) for i in range(0, len(answers), per_image)]


def masked_image(workspace: Workspace, item: Item, boxes: list[list[float]]) -> Image.Image:
    """The item's upright image with ``boxes`` filled black, written once to ``derived/masked/``."""
    key = hashlib.sha256(json.dumps([item.item_id, boxes]).encode()).hexdigest()[:16]
    path = workspace.root / "derived" / "masked" / f"{item.item_id[:16]}-{key}.png"
    if path.is_file():
        return pil_open(path).convert("RGB")
    image = open_image(workspace.resolve_uri(item.uri))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1, *_ in boxes:
        draw.rectangle([x0, y0, x1, y1], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image


@dataclass(frozen=True, slots=True)
class GapResult:
    """Per (class, cue) gaps, ranked by score within each class."""

    table: pl.DataFrame
    skipped_without_boxes: int


def _gap_row(label: str, attribute: str, taxonomy_type: str | None, size: int, natural: dict[str, list[float]],
             masked: dict[str, list[float]]) -> dict[str, object]:
    natural_gap = float(np.mean(natural["top"]) - np.mean(natural["bottom"]))
    has_masked = bool(masked["top"] and masked["bottom"])
    masked_gap = float(np.mean(masked["bottom"]) - np.mean(masked["top"])) if has_masked else None
    return {
        "class_label": label, "attribute": attribute, "taxonomy_type": taxonomy_type, "k": size,
        "natural_top_acc": float(np.mean(natural["top"])), "natural_bottom_acc": float(np.mean(natural["bottom"])),
        "natural_gap": natural_gap,
        "masked_top_acc": float(np.mean(masked["top"])) if masked["top"] else None,
        "masked_bottom_acc": float(np.mean(masked["bottom"])) if masked["bottom"] else None,
        "masked_gap": masked_gap, "n_masked_top": len(masked["top"]), "n_masked_bottom": len(masked["bottom"]),
        "score": (natural_gap + masked_gap) / 2 if masked_gap is not None else None,
    }


def spurious_gaps(workspace: Workspace, model: ModelUnderTest, source: str = "detector", run_id: str | None = None,
                  k: int = 50, seed: int = 0, classes: Sequence[str] | None = None, mask: str = "object",
                  progress: bool = True) -> GapResult:
    """The natural, masked and combined spurious gap of ``model`` for every (class, cue).

    ``mask="object"`` (SpurLens) blacks out the class object, so a right answer is "no X";
    ``mask="cue"`` blacks out the cue's own boxes instead, and a right answer stays "X".
    """
    if mask not in ("object", "cue"):
        raise ValueError(f"mask is 'object' or 'cue', not {mask!r}")
    from curate.analyze import rank_by_score

    items = {item.item_id: item for item in workspace.catalog.items()}
    evidence = workspace.catalog.evidence(source=source, run_id=run_id)
    boxes_of = {(e.item_id, e.attribute): e.boxes for e in evidence
                if (e.role == EvidenceRole.CORE) == (mask == "object")}
    presence = presence_from_evidence(evidence, items, threshold=0.0).filter(pl.col("own"))  # the class's own cues
    all_classes = sorted({i.label for i in items.values() if i.label})
    wanted = set(classes) if classes else set(all_classes)
    rows, skipped = [], 0
    # Answers depend on the image (and, masked, on which boxes are blacked out), not on the cue that
    # ranked it: each image is shown to the model once, whatever number of cues ranks it.
    answered: dict[tuple[str, str, str], float] = {}

    def says_present(group: list[Item], label: str, variant: str, target: str) -> list[float]:
        fresh = [i for i in group if (i.item_id, variant, target) not in answered]
        if fresh:
            images = [open_image(workspace.resolve_uri(i.uri)) if variant == "natural"
                      else masked_image(workspace, i, boxes_of[(i.item_id, target)]) for i in fresh]
            for item, answer in zip(fresh, model.says_present(fresh, images, label, variant, all_classes),
                                    strict=True):
                answered[(item.item_id, variant, target)] = answer
        return [answered[(i.item_id, variant, target)] for i in group]

    groups = [(key, scored) for key, scored in presence.group_by(["class_label", "attribute"], maintain_order=True)
              if key[0] in wanted]
    with progress_bar(f"spurious gap ({model.name})", len(groups), progress) as advance:
        for (label, attribute), scored in groups:
            advance()
            order = rank_by_score(dict(zip(scored["item_id"], scored["score"], strict=True)), seed)
            size = min(k, len(order) // 2)
            if size == 0:
                continue
            top, bottom = [items[i] for i in order[:size]], [items[i] for i in order[-size:]]
            natural = {name: says_present(group, label, "natural", "") for name, group in (("top", top),
                                                                                          ("bottom", bottom))}
            masked: dict[str, list[float]] = {}
            target = label if mask == "object" else attribute
            for name, group in (("top", top), ("bottom", bottom)):
                maskable = [i for i in group if boxes_of.get((i.item_id, target))]
                skipped += len(group) - len(maskable)
                answers = says_present(maskable, label, "masked", target) if maskable else []
                masked[name] = [1.0 - p for p in answers] if mask == "object" else answers
            rows.append(_gap_row(label, attribute, scored["taxonomy_type"][0], size, natural, masked))
    if not rows:
        return GapResult(pl.DataFrame(schema={c: pl.Float64 for c in GAP_COLUMNS}), skipped)
    table = pl.DataFrame(rows, infer_schema_length=None).sort(["class_label", "score"], descending=[False, True],
                                                               nulls_last=True)
    return GapResult(table.select(GAP_COLUMNS), skipped)
