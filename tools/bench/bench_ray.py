"""Throughput of the ``ray`` executor against the ``local`` one, on the same proposal.

A random-weight ViT-B-32 CLIP proposal over ``--images`` images the bench makes (2,000 by default),
in two fresh workspaces, one per executor; the ray one runs on a local Ray cluster started before the
clock (its start-up is not timed; the actors' start-up and model loads are). Both run the model on
one thread per model copy (one actor of one CPU against one local thread), since float sums depend
on the thread count and the rows must be identical. Goal: ray / local images/s >= 0.7, identical rows.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from curate.ingest import FolderSource, ingest  # noqa: E402
from curate.propose import make_proposer, propose  # noqa: E402
from curate.workspace import Workspace  # noqa: E402

BATCH = 32


def make_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    (folder / "dog").mkdir(parents=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(
            folder / "dog" / f"{index:05d}.jpg", quality=90)


def timed(scratch: Path, images: Path, executor: str) -> tuple[float, list[tuple[object, ...]]]:
    """Seconds of the clip proposal under ``executor`` in a fresh workspace, and its rows."""
    workspace = Workspace.init(scratch / f"ws-{executor}")
    ingest(workspace, FolderSource(images), progress=False)
    propose(workspace, make_proposer("priors", types=("Background",)), progress=False)
    started = time.perf_counter()
    result = propose(workspace, make_proposer("clip", weights="random", batch_size=BATCH, executor=executor),
                     progress=False)
    seconds = time.perf_counter() - started
    rows = sorted((r.item_id, r.attribute, r.score, sorted(r.extra.items()))
                  for r in workspace.catalog.evidence(source="clip", run_id=result.run.run_id))
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    count = parser.parse_args().images
    import ray

    torch.set_num_threads(1)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as name:
        scratch = Path(name)
        make_images(scratch / "images", count)
        local_seconds, local_rows = timed(scratch, scratch / "images", "local")
        ray_seconds, ray_rows = timed(scratch, scratch / "images", "ray")
    ray.shutdown()
    print(f"clip ViT-B-32 (random weights) batch {BATCH}, {count} images: local {count / local_seconds:.1f} img/s, "
          f"ray {count / ray_seconds:.1f} img/s (1 actor, model loads included)")
    print(f"rows identical: {ray_rows == local_rows} ({len(local_rows)} rows)")
    print(f"ratio ray / local executor: {local_seconds / ray_seconds:.2f} (goal >= 0.7)")


if __name__ == "__main__":
    main()
