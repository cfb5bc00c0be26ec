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


_EACH_STEP = """
import gc as _gc
import re as _re
import sys as _sys
from pathlib import Path as _Path


def _kib(field):
    return int(_re.search(field + r":\\s+(\\d+) kB", _Path("/proc/self/status").read_text()).group(1))


for _arg in _sys.argv[1:]:
    _gc.collect()
    _Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from what is held now
    _held = _kib("VmRSS")
    print(step(_arg), _kib("VmHWM") - _held)
"""


def peak_growths_kib(script: str, *args: str) -> list[tuple[str, int]]:
    """Run ``script`` (it imports what it needs once and defines ``step(arg) -> str``) in a child Python,
    then ``step`` for each of ``args``: what each returned and how far the peak resident memory rose
    above what was held when it started, in KiB."""
    done = subprocess.run([sys.executable, "-c", script + _EACH_STEP, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [(returned, int(growth)) for returned, growth in (line.split() for line in done.stdout.splitlines())]
