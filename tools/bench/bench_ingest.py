"""Ingest throughput and streaming memory.

Prints, for a folder of 1,000 and of 10,000 small JPEGs: items/s, peak RSS and the peak RSS above
the process's footprint after imports. Ratios: 10k vs 1k peak memory (goal about 1.0: ingest
streams), and ingest vs a bare single-thread read + sha256 + decode loop over the same files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = (1_000, 10_000)
SHAPE = (240, 320)  # height, width: a small photo
CHILD = r"""
import json, sys, time
from pathlib import Path
def rss_kb(field="VmRSS:"):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
from curate.ingest import FolderSource, IngestOptions, ingest
from curate.workspace import Workspace
import hashlib
from curate.images import inspect_image
baseline = rss_kb()
mode, folder, ws = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
started = time.perf_counter()
if mode == "ingest":
    count = sum(ingest(Workspace.init(ws), FolderSource(folder), progress=False).counts.values())
else:
    count = 0
    for path in sorted(folder.rglob("*.jpg")):
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        inspect_image(data)
        count += 1
seconds = time.perf_counter() - started
peak = rss_kb("VmHWM:")  # not ru_maxrss: Linux carries the parent's peak into it at exec
print(json.dumps({"count": count, "seconds": seconds, "peak_kb": peak, "baseline_kb": baseline}))
"""


def make_images(root: Path, count: int) -> Path:
    folder = root / f"n{count}-{SHAPE[1]}x{SHAPE[0]}"
    if folder.exists() and sum(1 for _ in folder.rglob("*.jpg")) == count:
        return folder
    rng = np.random.default_rng(count)
    for index in range(count):
        target = folder / f"class{index % 10}" / f"{index:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (SHAPE[0], SHAPE[1], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(target, quality=90)
    return folder


def measure(mode: str, folder: Path, workspace: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(workspace)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    cache = Path(".bench")
    cache.mkdir(exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for count in SIZES:
            folder = make_images(cache, count)
            results[count] = measure("ingest", folder, Path(scratch) / f"ws{count}")
            assert results[count]["count"] == count, results[count]
            rate = count / results[count]["seconds"]
            peak = results[count]["peak_kb"] / 1024
            grown = peak - results[count]["baseline_kb"] / 1024
            print(f"ingest {count:>6} images: {rate:8.0f} items/s, peak RSS {peak:6.0f} MiB "
                  f"({grown:5.1f} MiB above the footprint after imports)")
        bare = measure("bare", make_images(cache, SIZES[0]), Path(scratch) / "unused")
    small, large = results[SIZES[0]], results[SIZES[-1]]
    bare_rate = SIZES[0] / bare["seconds"]
    ingest_rate = SIZES[0] / small["seconds"]
    print(f"ratio peak RSS 10k / 1k: {large['peak_kb'] / small['peak_kb']:.2f} (goal about 1.0: streaming)")
    print(f"ratio ingest / bare read+hash+decode loop, 1k images: {ingest_rate / bare_rate:.2f} "
          f"(ingest {ingest_rate:.0f}/s with 2 worker threads and SQLite writes; bare loop {bare_rate:.0f}/s)")


if __name__ == "__main__":
    main()
