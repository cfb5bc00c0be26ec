"""Manifest streaming: peak memory of reading a 1,000,000-row manifest vs a 100,000-row one.

Each row points at one of a few files and carries a 200-byte note; only the source is read (every
entry is made, nothing is decoded or stored), which is the part whose memory could grow with the
rows. Prints, per format, seconds and the peak RSS above the footprint after imports; the ratio
1M / 100k of the peak RSS (goal about 1.0). Peak RSS is the child's VmHWM, not ru_maxrss (which
carries this process's peak into the child at exec).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

SIZES = (100_000, 1_000_000)
FORMATS = (".csv", ".jsonl", ".parquet")
CHILD = r"""
import json, sys, time
from pathlib import Path
def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
from curate.ingest import ManifestSource
baseline = kb("VmRSS:")
started = time.perf_counter()
count = sum(1 for _ in ManifestSource(Path(sys.argv[1])).entries())
print(json.dumps({"count": count, "seconds": time.perf_counter() - started, "peak_kb": kb("VmHWM:"),
                  "baseline_kb": baseline}))
"""


def write_manifest(folder: Path, rows: int, suffix: str) -> Path:
    target = folder / f"m{rows}{suffix}"
    frame = pl.DataFrame({"path": [f"img/{i % 4}.png" for i in range(rows)],
                          "label": [f"c{i % 10}" for i in range(rows)],
                          "note": [f"{i:09d}" + "x" * 200 for i in range(rows)]})
    if suffix == ".parquet":
        frame.write_parquet(target, row_group_size=65_536)
    else:
        {".csv": frame.write_csv, ".jsonl": frame.write_ndjson}[suffix](target)
    return target


def measure(manifest: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(manifest)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"reading {manifest.name} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for suffix in FORMATS:
            peaks = {}
            for rows in SIZES:
                result = measure(write_manifest(Path(scratch), rows, suffix))
                assert result["count"] == rows, result
                peaks[rows] = result["peak_kb"]
                print(f"manifest {suffix:8} {rows:>9,} rows: {result['seconds']:6.1f} s, peak RSS "
                      f"{result['peak_kb'] / 1024:6.0f} MiB ({(result['peak_kb'] - result['baseline_kb']) / 1024:5.1f} "
                      "MiB above the footprint after imports)")
            print(f"ratio peak RSS {suffix} 1M / 100k rows: {peaks[SIZES[1]] / peaks[SIZES[0]]:.2f} (goal about 1.0)")


if __name__ == "__main__":
    main()
