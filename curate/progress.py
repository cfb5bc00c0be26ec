"""Progress bars for long work (rich, on stderr), with one switch to turn them off.

>>> with progress_bar("demo", total=2, enabled=False) as advance:
...     advance(); advance()
>>> with progress_bars(False), progress_bar("quiet everywhere", total=1) as advance:
...     advance()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_SHOWN = [True]


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Turn every progress bar on or off for the block (what ``curate.open(..., progress=False)`` uses)."""
    before = _SHOWN[0]
    _SHOWN[0] = enabled
    try:
        yield
    finally:
        _SHOWN[0] = before


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield an ``advance(steps=1)`` callable that moves a bar of ``total`` steps (a counter when unknown)."""
    if not (enabled and _SHOWN[0]):
        yield lambda steps=1: None
        return
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda steps=1: bar.advance(task, steps)
