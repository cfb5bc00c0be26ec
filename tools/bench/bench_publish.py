"""Publishing streams: peak memory for 100,000 vs 10,000 rows, and seconds to write the shards of
100,000 rows without images. The release tables are made first; each publish then runs in a fresh
process that reads them lazily, as `curate publish` does."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import polars as pl
from curate.publish.folder import features_for, write_table
from curate.workspace import Workspace
source_path, scratch = Path(sys.argv[1]), Path(sys.argv[2])
workspace = Workspace.init(scratch / "ws")
source = pl.scan_parquet(source_path)
metadata = {"y_names": ["landbird", "waterbird"], "a_names": ["land", "water"]}
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
shards = write_table(workspace, source, features_for(source, metadata), scratch / "out", "train",
                     max_shard_rows=20_000, batch_rows=2_000)
print(json.dumps({"seconds": time.perf_counter() - started, "shards": len(shards),
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "baseline_kb": baseline}))
"""


def release_table(rows: int, path: Path) -> Path:
    rng = np.random.default_rng(0)
    y, a = rng.integers(0, 2, rows), rng.integers(0, 2, rows)
    pl.DataFrame({"id": np.arange(rows), "item_id": [f"{i:064x}" for i in range(rows)], "y": y, "a": a,
                  "g": 2 * y + a, "split": rng.choice(["train", "val", "test"], rows),
                  "attributes": [["grass", "water"]] * rows}).write_parquet(path, row_group_size=2_000)
    return path


def measure(rows: int, scratch: Path) -> dict[str, float]:
    source = release_table(rows, scratch / f"release-{rows}.parquet")
    (scratch / str(rows)).mkdir()
    out = subprocess.run([sys.executable, "-c", CHILD, str(source), str(scratch / str(rows))], check=True,
                         capture_output=True, text=True).stdout
    return {"rows": rows, **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        small, large = measure(10_000, Path(name)), measure(100_000, Path(name))
    for result in (small, large):
        print(f"publish {result['rows']:>7} rows without images: {result['seconds']:.2f}s, {result['shards']} shards, "
              f"peak RSS {result['peak_kb'] / 1024:.0f} MiB")
    print(f"ratio peak RSS 100k / 10k: {large['peak_kb'] / small['peak_kb']:.2f} (goal about 1.0: publishing streams)")


if __name__ == "__main__":
    main()
