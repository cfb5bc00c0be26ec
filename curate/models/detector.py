"""Open-set detectors (ultralytics YOLO-World v2, YOLOE) whose vocabulary is embedded by our own
open_clip text encoder: no ``clip`` package, no download. Vocabulary embeddings are cached.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from curate.caching import ModelCache
from curate.models.clip import ClipModel
from curate.models.registry import ModelSpec, load_model, model_version, register_family, register_version
from curate.models.weights import RANDOM, ResolvedWeights, find_weight_file, seeded

# ultralytics must never install packages or phone home at run time; set before it is imported.
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_OFFLINE", "1")

_FETCH_HINT = "ultralytics publishes these files at github.com/ultralytics/assets/releases"


@dataclass(frozen=True, slots=True)
class Detections:
    """Boxes found in one image: ``xyxy`` (K, 4) pixels, ``scores`` (K,), ``labels`` (K,) vocabulary
    strings. The same small record whatever detector produced it."""

    xyxy: np.ndarray
    scores: np.ndarray
    labels: tuple[str, ...]

    @classmethod
    def from_ultralytics(cls, result: Any) -> Detections:
        """Convert one ``ultralytics.engine.results.Results``."""
        boxes = result.boxes
        classes = boxes.cls.cpu().numpy().astype(int)
        return cls(boxes.xyxy.cpu().numpy().astype(np.float32), boxes.conf.cpu().numpy().astype(np.float32),
                   tuple(result.names[int(c)] for c in classes))

    def best(self, label: str) -> tuple[float, np.ndarray]:
        """Highest score for ``label`` (0.0 if no box) and that label's boxes, best first."""
        mask = np.array([name == label for name in self.labels], dtype=bool)
        if not mask.any():
            return 0.0, np.zeros((0, 5), dtype=np.float32)
        order = np.argsort(-self.scores[mask])
        boxes = np.concatenate([self.xyxy[mask], self.scores[mask, None]], axis=1)[order]
        return float(boxes[0, 4]), boxes


class OpenSetDetector:
    """YOLO-World / YOLOE with a settable vocabulary.

    Usage: ``detector = load_model("yolo-world-v2-s")``, ``detector.set_vocabulary(["leash", "grass"])``,
    ``detector.detect([image])`` -> one ``Detections`` per image.
    """

    def __init__(self, spec: ModelSpec, yolo: Any, text_encoder: ClipModel, version: str) -> None:
        self.spec = spec
        self.yolo = yolo
        self.text_encoder = text_encoder
        self.version = version
        self.vocabulary: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    def set_vocabulary(self, names: Sequence[str], cache: ModelCache | None = None) -> None:
        """Query the detector with these names from now on (embeddings cached when ``cache`` is given)."""
        names = tuple(dict.fromkeys(names))
        if names == self.vocabulary:
            return
        if not names:
            raise ValueError("a detector vocabulary needs at least one name")
        embeddings = torch.from_numpy(self.text_encoder.encode_texts(list(names), cache)).reshape(1, len(names), -1)
        model = self.yolo.model
        with torch.no_grad():
            if self.spec.family == "yoloe":
                self.yolo.set_classes(list(names), model.model[-1].get_tpe(embeddings))
            else:  # YOLO-World: the same state its own set_classes would leave
                model.txt_feats = embeddings
                model.model[-1].nc = len(names)
                model.names = dict(enumerate(names))
        self.yolo.predictor = None  # rebuilt with the new names on the next predict
        self.vocabulary = names

    def detect(self, images: Sequence[Image.Image], conf: float = 0.05, imgsz: int = 640,
               max_det: int = 300) -> list[Detections]:
        """Detect the vocabulary in a batch of RGB images."""
        if not self.vocabulary:
            raise ValueError("set_vocabulary() first")
        results = self.yolo.predict(list(images), conf=conf, imgsz=imgsz, max_det=max_det, verbose=False,
                                    device=self.text_encoder.device, save=False)
        return [Detections.from_ultralytics(result) for result in results]


def _resolve(spec: ModelSpec) -> ResolvedWeights:
    if spec.weights in (None, "", RANDOM):
        return ResolvedWeights(RANDOM, f"{spec.architecture}.yaml", f"{spec.architecture}@{RANDOM}")
    if spec.weights.endswith((".yaml", ".yml")):
        return ResolvedWeights(RANDOM, spec.weights, f"{Path(spec.weights).stem}@{RANDOM}")
    return find_weight_file(spec.weights, spec.architecture, _FETCH_HINT)


def _encoder(spec: ModelSpec) -> tuple[str, str | None]:
    """A detector's text encoder and the weights it takes: a randomly initialised detector gets a
    randomly initialised text encoder (nothing is fetched)."""
    if not spec.text_encoder:
        raise ValueError(f"model {spec.name!r} names no text_encoder")
    return spec.text_encoder, RANDOM if _resolve(spec).kind == RANDOM else None


def _detector_version(spec: ModelSpec) -> str:
    """The version a detector of ``spec`` records (its weights', then its text encoder's), nothing loaded."""
    return f"{_resolve(spec).version}+{model_version(*_encoder(spec))}"


def _load_detector(spec: ModelSpec, device: str) -> OpenSetDetector:
    from ultralytics import YOLOE, YOLOWorld

    text_encoder, encoder_weights = _encoder(spec)
    resolved = _resolve(spec)
    encoder = load_model(text_encoder, weights=encoder_weights, device=device, kind=ClipModel)
    with seeded():
        yolo = (YOLOE if spec.family == "yoloe" else YOLOWorld)(resolved.location)
    network: Any = yolo.model  # ultralytics declares it str | None (a path before loading): here the nn.Module
    network.to(device)
    return OpenSetDetector(spec, yolo, encoder, _detector_version(spec))


for _family in ("yolo-world", "yoloe"):
    register_family(_family)(_load_detector)
    register_version(_family)(_detector_version)
