"""`make bench`: run every tools/bench/bench_*.py in turn and print what each measured.

Benchmarks print ratios measured within one run (pipeline vs bare loop, 10k vs 1k), because
absolute times drift on shared machines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    failures = 0
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"== {script.stem}", flush=True)
        failures += subprocess.run([sys.executable, str(script)], check=False).returncode != 0
    return failures


if __name__ == "__main__":
    sys.exit(main())
