"""open_clip models: image and text embeddings, L2-normalised, with text embeddings cached."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from curate.caching import CacheKey, ModelCache
from curate.models.registry import ModelSpec, register_family, register_version
from curate.models.weights import RANDOM, ResolvedWeights, resolve_open_clip_weights, seeded

TEXT_BATCH = 64


class ClipModel:
    """An open_clip model behind one small interface.

    Usage: ``clip = load_model("clip-vit-b-32")``, then ``clip.encode_texts(["a dog"])`` and
    ``clip.encode_images(torch.stack([clip.preprocess_image(image)]))``.
    """

    def __init__(self, spec: ModelSpec, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], version: str, device: str) -> None:
        self.spec = spec
        self.model: Any = model.eval()  # open_clip's CLIP: encode_image / encode_text are not nn.Module's
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.version = version
        self.device = device

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature (exp of the stored log value), for zero-shot softmax."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.detach().exp()) if scale is not None else 100.0

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """The model's own eval transform of an RGB image (one image, no batch axis)."""
        return self.preprocess(image)

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        """(N, D) unit-length float32 embeddings of a preprocessed batch."""
        features = self.model.encode_image(batch.to(self.device))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH):
            tokens = self.tokenizer(list(texts[start:start + TEXT_BATCH])).to(self.device)
            chunks.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(chunks).cpu().numpy()

    def encode_texts(self, texts: Sequence[str], cache: ModelCache | None = None) -> np.ndarray:
        """(N, D) unit-length text embeddings; with a ``cache`` each text is computed once ever."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        if cache is None:
            return self._encode_texts(texts)
        keys = [CacheKey.make("text-embedding", self.name, self.version, {}, text) for text in texts]
        found: dict[int, np.ndarray] = {}
        for index, key in enumerate(keys):
            raw = cache.get(key)
            if raw is not None:
                found[index] = np.frombuffer(raw, dtype=np.float32)
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            fresh = self._encode_texts([texts[i] for i in missing])
            for index, vector in zip(missing, fresh, strict=True):
                cache.put(keys[index], vector.astype(np.float32).tobytes())
                found[index] = vector
        return np.stack([found[i] for i in range(len(texts))]).astype(np.float32)


def _resolved(spec: ModelSpec) -> tuple[str, ResolvedWeights]:
    """The open_clip name of a spec's architecture (a JSON config's file stem) and its checked weights."""
    architecture = spec.architecture
    if architecture.endswith(".json") and Path(architecture).is_file():
        architecture = Path(architecture).stem
    return architecture, resolve_open_clip_weights(architecture, spec.weights)


@register_version("open_clip")
def open_clip_version(spec: ModelSpec) -> str:
    """The version an open_clip model of ``spec`` records, its weights checked, nothing loaded."""
    return _resolved(spec)[1].version


@register_family("open_clip")
def load_open_clip(spec: ModelSpec, device: str) -> ClipModel:
    """Build an open_clip model; ``spec.architecture`` may be a path to an open_clip JSON config."""
    import open_clip

    if spec.architecture.endswith(".json") and Path(spec.architecture).is_file():
        open_clip.add_model_config(spec.architecture)
    architecture, resolved = _resolved(spec)
    if resolved.kind in ("local-dir", "hf-hub"):
        model_name, pretrained = f"{resolved.kind}:{resolved.location}", None
    else:
        model_name, pretrained = architecture, (resolved.location or None) if resolved.kind != RANDOM else None
    with seeded():
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                     device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipModel(spec, model, preprocess, tokenizer, resolved.version, device)
