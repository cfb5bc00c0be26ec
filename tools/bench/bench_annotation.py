"""Pushing 10,000 verification tasks with predictions to a real Label Studio, and pulling them back.

Prints tasks/s for the bridge's bulk push (chunks of 500) and for one-task-per-request creation
measured in the same run on 200 tasks, and their ratio (goal >= 10x); then the pull (export
snapshot, checks, verdicts) of all 10,000 tasks.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from annotation import server  # noqa: E402
from annotation.rounds import RoundSpec, pull, push  # noqa: E402
from annotation.transport import client  # noqa: E402
from curate.ingest import FolderSource, ingest  # noqa: E402
from curate.records import Evidence, EvidenceRole  # noqa: E402
from curate.workspace import Workspace  # noqa: E402

TASKS, SINGLE = 10_000, 200
CUES = {"grass": 0.2, "leash": 0.04, "sofa": 0.07}


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        scratch = Path(name)
        rng = np.random.default_rng(0)
        for index in range(TASKS + SINGLE):
            path = scratch / "img" / f"class{index % 4}" / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(path)
        workspace = Workspace.init(scratch / "ws")
        ingest(workspace, FolderSource(scratch / "img"), progress=False)
        items = list(workspace.catalog.items())
        workspace.catalog.add_evidence(Evidence(i.item_id, cue, "detector", "propose-bench", EvidenceRole.CANDIDATE,
                                                "Background", score) for i in items for cue, score in CUES.items())
        running = server.serve(workspace.root).connection
        try:
            started = time.perf_counter()
            report = push(workspace, running, RoundSpec("bench", budget=TASKS))
            bulk = report.counts["tasks_pushed"] / (time.perf_counter() - started)
            ls = client(running)
            config = ("<View><Image name='i' value='$image'/>"
                      "<Choices name='c' toName='i'><Choice value='a'/></Choices></View>")
            single_project = ls.projects.create(title="one by one", label_config=config)
            started = time.perf_counter()
            for index in range(SINGLE):
                ls.projects.import_tasks(id=single_project.id, request=[{
                    "data": {"image": f"/data/local-files/?d=x/{index}.png", "item_id": str(index)},
                    "predictions": [{"model_version": "propose-bench", "score": 0.5, "result": []}]}])
            one_by_one = SINGLE / (time.perf_counter() - started)
            print(f"push {report.counts['tasks_pushed']} tasks with predictions: {bulk:.0f} tasks/s in bulk, "
                  f"{one_by_one:.1f} tasks/s one task per request")
            print(f"ratio bulk / one-by-one push: {bulk / one_by_one:.0f}x (goal >= 10x)", flush=True)
            started = time.perf_counter()
            pulled = pull(workspace, running, RoundSpec("bench", budget=TASKS))
            pull_seconds = time.perf_counter() - started
        finally:
            server.stop(workspace.root)
    print(f"pull {TASKS} tasks (export snapshot, checks, {pulled.counts['verdicts']} verdicts): {pull_seconds:.1f}s, "
          f"{TASKS / pull_seconds:.0f} tasks/s")


if __name__ == "__main__":
    main()
