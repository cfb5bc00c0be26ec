"""``detector``: an open-set detector queried with every candidate cue of the item's class.

Per (item, cue): the highest box confidence (0 if no box above ``conf``, as in SpurLens) and the
boxes, ``[x0, y0, x1, y1, confidence]`` in pixels of the upright image, best first.
"""

from __future__ import annotations

from dataclasses import dataclass

from curate.executors import image_batches
from curate.models import Detections, OpenSetDetector, load_model
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.clip import unique_cues
from curate.records import Cue, Evidence, EvidenceRole, Item

MAX_BOXES_KEPT = 10


@register_proposer("detector")
@dataclass
class DetectorProposer(Proposer):
    """Localise cues with YOLO-World v2 or YOLOE (``model``), one vocabulary per class."""

    model: str = "yolo-world-v2-s"
    weights: str | None = None
    text_encoder: str | None = None
    cue_source: str | None = None
    conf: float = 0.05
    imgsz: int = 640
    batch_size: int = 8
    device: str = "cpu"

    def run(self, context: ProposeContext) -> None:
        detector: OpenSetDetector = load_model(self.model, weights=self.weights, device=self.device,
                                               text_encoder=self.text_encoder)
        context.models[detector.name] = detector.version
        for label in context.class_labels():
            cues = unique_cues(context.workspace.catalog.cues(class_label=label, source=self.cue_source))
            items = context.pending_items(label)
            if not cues:
                context.count(items_without_cues=len(items))
                continue
            detector.set_vocabulary([cue.attribute for cue in cues], context.workspace.cache)
            with progress_bar(f"detector {label}", len(items), context.progress) as advance:
                for batch in image_batches(context.workspace, items, self.batch_size):
                    found = detector.detect(batch.images, self.conf, self.imgsz) if batch.items else []
                    rows = [row for item, detections in zip(batch.items, found, strict=True)
                            for row in self._evidence(context, detector, cues, item, detections)]
                    context.write_evidence(rows, items=len(batch.items), unreadable=len(batch.failures))
                    for _ in range(len(batch.items) + len(batch.failures)):
                        advance()

    def _evidence(self, context: ProposeContext, detector: OpenSetDetector, cues: list[Cue], item: Item,
                  detections: Detections) -> list[Evidence]:
        rows = []
        for cue in cues:
            score, boxes = detections.best(cue.attribute)
            rows.append(Evidence(item.item_id, cue.attribute, self.name, context.run.run_id, EvidenceRole.CANDIDATE,
                                 cue.taxonomy_type, score, boxes[:MAX_BOXES_KEPT].round(2).tolist(), detector.name,
                                 detector.version, {"conf_threshold": self.conf, "n_boxes": int(len(boxes)),
                                                    "cue_source": cue.source}))
        return rows
