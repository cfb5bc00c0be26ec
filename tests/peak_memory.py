"""Peak resident memory of a short script run in a fresh interpreter (Linux only: read from /proc).

VmHWM, not ru_maxrss: Linux carries the parent's peak (the test's own frames) into a child's
ru_maxrss at exec.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

needs_proc = pytest.mark.skipif(not Path("/proc/self/status").is_file(),
                                reason="peak memory is read from Linux /proc")

_PRINT_PEAK = """
import re as _re
from pathlib import Path as _Path
print(_re.search(r"VmHWM:\\s+(\\d+) kB", _Path("/proc/self/status").read_text()).group(1))
"""


def peak_kib(script: str, *args: str) -> tuple[list[str], int]:
    """Run ``script`` with ``args`` in a child Python; what it printed, split in words, and its peak
    resident memory in KiB."""
    done = subprocess.run([sys.executable, "-c", script + _PRINT_PEAK, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    *words, peak = done.stdout.split()
    return words, int(peak)
