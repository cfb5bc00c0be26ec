"""The scoring driver's store: time per stored batch late in a run against early in it.

A proposal over ``--items`` items (``CURATE_BENCH_SIZE`` scales the default) of 10 classes with 8
cues each, 2 of them listed by every class (so negative pools have work and passes share pairs),
through ``score_images`` with a scorer that needs no image and no model: what is timed is the
driver's work per batch (which rows to keep, the transaction that stores them). The store used to
read everything the run had stored for every batch (quadratic in the run's size); it should cost
the same per batch whatever the run holds. Batches of the negative pools (one per class) are left
out of the ratio: each starts a pass. Goal: the last tenth of the batches / the first tenth
<= 1.5 (about 1). Also printed: resident memory at the end of the first tenth of the batches and at
the end of the run (what the driver holds should not grow with what the run stored; a shared machine
slows time, not memory).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from curate.executors import ImageBatch  # noqa: E402
from curate.propose.base import ProposeContext  # noqa: E402
from curate.propose.scoring import ImageScorer, Target, class_passes, score_images  # noqa: E402
from curate.records import Cue, Evidence, Item  # noqa: E402
from curate.workspace import Workspace  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evidence import CLASSES, make_items  # noqa: E402  (the same labelled items)

SIZE = float(os.environ.get("CURATE_BENCH_SIZE", "0.02"))
OWN_CUES, SHARED_CUES, BATCH = 6, 2, 32


class Constant(ImageScorer):
    """A score for every (item, target) without looking at the image."""

    def needs_image(self, item: Item) -> bool:
        return False

    def begin_class(self, context: ProposeContext, label: str | None, targets: list[Target], own: bool = True
                    ) -> None:
        self.targets = targets

    def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
        return [Evidence(item.item_id, target.attribute, "bench", context.run.run_id, target.role,
                         target.taxonomy_type, 0.5, [], "constant", "1")
                for item in batch.items for target in self.targets]


def make_workspace(root: Path, n_items: int) -> Workspace:
    """``n_items`` labelled items (one small PNG behind them all) and every class's cues."""
    workspace = make_items(root, n_items)
    workspace.catalog.add_cues([Cue(f"class{c}", attribute, "llm", "bench", "Background") for c in range(CLASSES)
                                for attribute in [f"cue {c}-{k}" for k in range(OWN_CUES)] +
                                [f"shared {k}" for k in range(SHARED_CUES)]])
    return workspace


def resident_mib() -> float:
    """This process's resident memory now (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def store_times(workspace: Workspace, resident: list[float] | None = None) -> list[float]:
    """Seconds between one stored batch of the classes' own images and the next (scoring, choosing
    the rows to keep, storing them) in a proposal over the workspace (and 10 images of other classes
    per class, timed apart); ``resident`` gets the resident MiB after each of them."""
    times: list[float] = []
    write = ProposeContext.write_evidence
    last = [time.perf_counter()]

    def timed(self: ProposeContext, rows: list[Evidence], **counts: int) -> None:
        write(self, rows, **counts)
        now = time.perf_counter()
        if counts.get("items"):
            times.append(now - last[0])
            if resident is not None:
                resident.append(resident_mib())
        last[0] = now

    ProposeContext.write_evidence = timed  # type: ignore[method-assign]  # the bench times the driver's store
    try:
        with workspace.runs.track("propose", "bench", {"proposer": "bench"}) as run:
            context = ProposeContext(workspace, run, None, progress=False)
            score_images(context, lambda context: [Constant()], class_passes(context, "llm", 10), BATCH, "bench")
    finally:
        ProposeContext.write_evidence = write  # type: ignore[method-assign]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=max(1_000, round(500_000 * SIZE)))
    n_items = parser.parse_args().items
    with tempfile.TemporaryDirectory() as name:
        workspace = make_workspace(Path(name), n_items)
        started, resident = time.perf_counter(), []
        times = store_times(workspace, resident)
        seconds = time.perf_counter() - started
    tenth = max(1, len(times) // 10)
    early, late = float(np.median(times[:tenth])), float(np.median(times[-tenth:]))
    print(f"{n_items} items, {len(times)} batches of {BATCH} in {seconds:.1f}s: first tenth {early * 1e3:.1f} ms "
          f"a batch, last tenth {late * 1e3:.1f} ms (medians)")
    print(f"ratio late / early stored batch: {late / early:.2f} (goal <= 1.5, about 1)")
    print(f"resident memory after the first tenth of the batches {resident[tenth - 1]:.0f} MiB, after the last "
          f"{resident[-1]:.0f} MiB: ratio {resident[-1] / resident[tenth - 1]:.2f} (about 1)")


if __name__ == "__main__":
    main()
