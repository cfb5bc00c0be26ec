"""Throughput of the CLIP and detector proposal stages against the bare model.

On the same images, model and batch size, in one run:
- CLIP stage images/s (decode, preprocess, forward, scoring, SQLite writes) / bare
  ``encode_image`` images/s on tensors already in memory (goal >= 0.9);
- detector stage images/s / bare ``predict`` images/s on images already decoded (goal >= 0.85);
- each stage / a one-image-at-a-time loop (decode, forward, one image per call).
Models are real architectures with random weights (ViT-B-32, YOLO-World v2 s); text and
vocabulary embeddings are warmed first, as they are cached after a workspace's first run. Stage
rates are given without the one-time model load (timed on its own) and with it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp())

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from curate.images import open_image  # noqa: E402
from curate.ingest import FolderSource, ingest  # noqa: E402
from curate.models import load_model  # noqa: E402
from curate.propose import make_proposer, propose  # noqa: E402
from curate.workspace import Workspace  # noqa: E402

CLIP_IMAGES, DETECTOR_IMAGES = 160, 48
CLIP_BATCH, DETECTOR_BATCH, IMGSZ = 32, 8, 640


def make_images(folder: Path, count: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / "dog" / f"{seed}-{index:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def stage_rate(scratch: Path, name: str, model: str, options: dict[str, object], count: int) -> tuple[float, float]:
    """In a fresh workspace with Background priors: warm the caches on 4 images, then time the
    stage on ``count`` new ones (the same run config, so the run only adds the new items).

    Returns images/s including the stage's model load, and excluding it (the load is timed on its own).
    """
    workspace = Workspace.init(scratch / f"ws-{name}")
    make_images(scratch / f"warm-{name}", 4, seed=1)
    ingest(workspace, FolderSource(scratch / f"warm-{name}"), progress=False)
    propose(workspace, make_proposer("priors", types=("Background",)), progress=False)
    propose(workspace, make_proposer(name, **options), progress=False)
    make_images(scratch / f"main-{name}", count, seed=2)
    ingest(workspace, FolderSource(scratch / f"main-{name}"), progress=False)
    started = time.perf_counter()
    result = propose(workspace, make_proposer(name, **options), progress=False)
    seconds = time.perf_counter() - started
    assert result.counts["items"] == count, result.counts
    started = time.perf_counter()
    load_model(model, weights="random")
    load_seconds = time.perf_counter() - started
    return count / seconds, count / max(seconds - load_seconds, 1e-9)


def main() -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as name:
        scratch = Path(name)

        # CLIP -----------------------------------------------------------------------------------
        clip_whole, clip_stage = stage_rate(scratch, "clip", "clip-vit-b-32", {"weights": "random",
                                                                               "batch_size": CLIP_BATCH}, CLIP_IMAGES)
        clip = load_model("clip-vit-b-32", weights="random")
        paths = sorted((scratch / "main-clip").rglob("*.jpg"))
        tensors = torch.stack([clip.preprocess_image(open_image(p)) for p in paths])
        clip.encode_images(tensors[:CLIP_BATCH])  # warm-up, not timed
        started = time.perf_counter()
        for start in range(0, len(tensors), CLIP_BATCH):
            clip.encode_images(tensors[start:start + CLIP_BATCH])
        clip_bare = len(tensors) / (time.perf_counter() - started)
        started = time.perf_counter()
        for path in paths[:48]:
            clip.encode_images(clip.preprocess_image(open_image(path))[None])
        clip_loop = 48 / (time.perf_counter() - started)
        print(f"clip ViT-B-32 batch {CLIP_BATCH}, {CLIP_IMAGES} images: stage {clip_stage:.1f} img/s "
              f"({clip_whole:.1f} with the model load), bare forward {clip_bare:.1f} img/s, "
              f"one-at-a-time {clip_loop:.1f} img/s")
        print(f"ratio clip stage / bare forward: {clip_stage / clip_bare:.2f} (goal >= 0.9)")
        print(f"ratio clip stage / one-image loop: {clip_stage / clip_loop:.2f}")

        # detector -------------------------------------------------------------------------------
        detector_whole, detector_stage = stage_rate(
            scratch, "detector", "yolo-world-v2-s", {"weights": "random", "imgsz": IMGSZ, "batch_size": DETECTOR_BATCH},
            DETECTOR_IMAGES)
        detector = load_model("yolo-world-v2-s", weights="random")
        cues = Workspace.open(scratch / "ws-detector").catalog.cues(class_label="dog")
        detector.set_vocabulary([c.attribute for c in cues])
        paths = sorted((scratch / "main-detector").rglob("*.jpg"))
        images = [open_image(p) for p in paths]
        detector.detect(images[:DETECTOR_BATCH], imgsz=IMGSZ)  # warm-up (predictor set-up), not timed
        started = time.perf_counter()
        for start in range(0, len(images), DETECTOR_BATCH):
            detector.detect(images[start:start + DETECTOR_BATCH], imgsz=IMGSZ)
        detector_bare = len(images) / (time.perf_counter() - started)
        started = time.perf_counter()
        for path in paths[:16]:
            detector.detect([open_image(path)], imgsz=IMGSZ)
        detector_loop = 16 / (time.perf_counter() - started)
        print(f"detector yolov8s-worldv2 {IMGSZ}px batch {DETECTOR_BATCH}, {DETECTOR_IMAGES} images: stage "
              f"{detector_stage:.2f} img/s ({detector_whole:.2f} with the model load), bare predict "
              f"{detector_bare:.2f} img/s, one-at-a-time {detector_loop:.2f} img/s")
        print(f"ratio detector stage / bare predict: {detector_stage / detector_bare:.2f} (goal >= 0.85)")
        print(f"ratio detector stage / one-image loop: {detector_stage / detector_loop:.2f}")


if __name__ == "__main__":
    main()
