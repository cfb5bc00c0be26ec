"""``detector``: an open-set detector queried with every candidate cue of the item's class, and
``clip+detector``: CLIP and the detector on the same decoded images.

Per (item, cue): the highest box confidence (0 if no box above ``conf``, as in SpurLens) and the
boxes, ``[x0, y0, x1, y1, confidence]`` in pixels of the upright image, best first. With
``include_class`` (the default) the class name is queried too and stored with role ``core``: the
spurious-gap analysis blacks those boxes out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from curate.executors import ImageBatch
from curate.models import OpenSetDetector, load_model, model_version
from curate.propose.base import ProposeContext, register_proposer
from curate.propose.clip import DEFAULT_CONTRAST, DEFAULT_TEMPLATES, ClipScorer
from curate.propose.scoring import ClassPass, ImageProposer, ImageScorer, Target, class_passes, vocabulary_pass
from curate.records import Evidence, EvidenceRole

MAX_BOXES_KEPT = 10


class DetectorScorer(ImageScorer):
    """Best box per cue from YOLO-World / YOLOE, one vocabulary per class."""

    source = "detector"

    def __init__(self, context: ProposeContext, model: str, weights: str | None, text_encoder: str | None,
                 device: str, conf: float, imgsz: int, include_class: bool = True) -> None:
        self.detector: OpenSetDetector = load_model(model, weights=weights, device=device, text_encoder=text_encoder)
        context.models[self.detector.name] = self.detector.version
        self.conf, self.imgsz, self.include_class = conf, imgsz, include_class
        self.targets: list[Target] = []

    def begin_class(self, context: ProposeContext, label: str | None, targets: list[Target], own: bool = True
                    ) -> None:
        # on its own images the class object is localised too (role "core"): the spurious gap masks it out
        core = [Target(label, None, EvidenceRole.CORE, "class")] \
            if self.include_class and own and label is not None else []
        self.targets = [*targets, *core] if label not in {t.attribute for t in targets} else targets
        self.detector.set_vocabulary([target.attribute for target in self.targets], context.workspace.cache)

    def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
        rows = []
        for item, detections in zip(batch.items, self.detector.detect(batch.images, self.conf, self.imgsz),
                                    strict=True):
            for cue in self.targets:
                score, boxes = detections.best(cue.attribute)
                rows.append(Evidence(item.item_id, cue.attribute, self.source, context.run.run_id,
                                     cue.role, cue.taxonomy_type, score,
                                     boxes[:MAX_BOXES_KEPT].round(2).tolist(), self.detector.name,
                                     self.detector.version, {"conf_threshold": self.conf, "n_boxes": int(len(boxes)),
                                                             "cue_source": cue.source}))
        return rows


@register_proposer("detector")
@dataclass
class DetectorProposer(ImageProposer):
    """Localise cues with YOLO-World v2 or YOLOE (``model``) on their class's images and on other
    classes' images (all, or ``negatives`` per class). With a ``vocabulary`` (e.g. ``logo``) every
    item of the workspace, labelled or not, is queried with those words instead."""

    model: str = "yolo-world-v2-s"
    weights: str | None = None
    text_encoder: str | None = None
    cue_source: str | None = None
    conf: float = 0.05
    imgsz: int = 640
    batch_size: int = 8
    include_class: bool = True
    vocabulary: tuple[str, ...] | None = None
    negatives: int | None = None

    def scorers(self, context: ProposeContext) -> list[ImageScorer]:
        return [DetectorScorer(context, self.model, self.weights, self.text_encoder, self.device, self.conf,
                               self.imgsz, self.include_class)]

    def model_versions(self) -> dict[str, str]:
        return {self.model: model_version(self.model, weights=self.weights, text_encoder=self.text_encoder)}

    def passes(self, context: ProposeContext) -> Iterable[ClassPass]:
        if self.vocabulary:
            return [vocabulary_pass(context, self.vocabulary)]
        return class_passes(context, self.cue_source, self.negatives)


@register_proposer("clip+detector")
@dataclass
class ClipDetectorProposer(ImageProposer):
    """CLIP scores and detector boxes in one pass: each image is decoded once for both models.

    Evidence rows keep their own sources (``clip``, ``detector``) under this run's id.
    """

    clip_model: str = "clip-vit-b-32"
    clip_weights: str | None = None
    detector_model: str = "yolo-world-v2-s"
    detector_weights: str | None = None
    text_encoder: str | None = None
    cue_source: str | None = None
    conf: float = 0.05
    imgsz: int = 640
    batch_size: int = 8
    include_class: bool = True
    negatives: int | None = None

    def scorers(self, context: ProposeContext) -> list[ImageScorer]:
        return [ClipScorer(context, self.clip_model, self.clip_weights, self.device, DEFAULT_TEMPLATES,
                           DEFAULT_CONTRAST),
                DetectorScorer(context, self.detector_model, self.detector_weights, self.text_encoder,
                               self.device, self.conf, self.imgsz, self.include_class)]

    def model_versions(self) -> dict[str, str]:
        return {self.clip_model: model_version(self.clip_model, weights=self.clip_weights),
                self.detector_model: model_version(self.detector_model, weights=self.detector_weights,
                                                   text_encoder=self.text_encoder)}

    def passes(self, context: ProposeContext) -> Iterable[ClassPass]:
        return class_passes(context, self.cue_source, self.negatives)
