"""The ingest loop: entries -> checked images -> Items, batch by batch, resumable.

Entries already stored with the same fingerprint (looked up a batch at a time) are skipped, so
running an ingest again changes nothing, and a run that was killed resumes where its last
committed batch ended. Reading, hashing and decoding happen in worker threads with a bounded
window, so memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from curate.images import DEFAULT_MAX_PIXELS, ImageRejected, inspect_image
from curate.ingest.base import Entry, IngestSource
from curate.progress import progress_bar
from curate.records import Item, Quarantined, Run, SourceRef
from curate.workspace import Source, Workspace
from curate.workspace._sql import digest

LOOKUP_BATCH = 128
"""Entries whose stored locators are looked up in one query: a re-ingest holds these, not the source's."""
_SUFFIX_BY_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
                     "TIFF": ".tif", "MPO": ".jpg"}


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """How entries become items. ``batch_size`` and ``workers`` change speed, not results.

    ``copy`` stores the bytes of local files in the workspace too (a self-contained workspace);
    ``license`` applies to every item whose source row names none.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    copy: bool = False
    license: str | None = None
    batch_size: int = 256
    workers: int = 2

    def recorded(self) -> dict[str, object]:
        """The options that change results, as recorded in the run config."""
        return {"max_pixels": self.max_pixels, "copy": self.copy, "license": self.license}


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one ingest did; ``counts`` are this invocation's, ``run.counts`` the run's total."""

    run: Run
    source: Source
    counts: dict[str, int]
    seconds: float

    def summary(self) -> str:
        """One line for the end of a command."""
        c = self.counts
        reasons = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("quarantined:"))
        resumed = f", resumed (attempt {self.run.attempts})" if self.run.attempts > 1 else ""
        return (f"ingest {self.source.kind} {self.source.location}: {c.get('new_items', 0)} new items, "
                f"{c.get('duplicates', 0)} duplicates, {c.get('unchanged', 0)} unchanged, "
                f"{c.get('quarantined', 0)} quarantined{f' ({reasons})' if reasons else ''} "
                f"in {self.seconds:.1f}s [run {self.run.run_id}{resumed}]")


def _process(workspace: Workspace, source_id: str, entry: Entry, fingerprint: str,
             options: IngestOptions) -> tuple[Item, SourceRef] | Quarantined:
    try:
        if entry.rejection is not None:
            raise entry.rejection
        try:
            data = entry.read()
        except OSError as error:
            raise ImageRejected("unreadable", f"{type(error).__name__}: {error}") from error
        info = inspect_image(data, options.max_pixels)
    except ImageRejected as rejection:
        return Quarantined(source_id, entry.locator, rejection.reason, rejection.detail, fingerprint,
                           entry.label, entry.split, entry.metadata)
    item_id = hashlib.sha256(data).hexdigest()
    if entry.local_path is not None and not options.copy:
        uri = str(entry.local_path.absolute())
    else:
        uri = workspace.put_blob(item_id, data, _SUFFIX_BY_FORMAT.get(info.format, ""))
    item = Item(item_id=item_id, uri=uri, label=entry.label, size_bytes=len(data),
                license=entry.license or options.license, metadata=entry.metadata, **asdict(info))
    ref = SourceRef(source_id, entry.locator, item_id, fingerprint, entry.label, entry.split, entry.metadata)
    return item, ref


def _bounded_map(pool: ThreadPoolExecutor, jobs: Iterable[tuple[Entry, str]], window: int,
                 work: Callable[[Entry, str], tuple[Item, SourceRef] | Quarantined],
                 ) -> Iterator[tuple[Item, SourceRef] | Quarantined]:
    """Like ``pool.map`` in order, but with at most ``window`` jobs in flight."""
    pending: deque[Future[tuple[Item, SourceRef] | Quarantined]] = deque()
    for job in jobs:
        pending.append(pool.submit(work, *job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def ingest(workspace: Workspace, source: IngestSource, options: IngestOptions | None = None,
           *, progress: bool = True) -> IngestResult:
    """Ingest every entry of ``source`` into ``workspace`` as a recorded, resumable run.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from curate.ingest import FolderSource
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> ingest(ws, FolderSource(Path(tempfile.mkdtemp())), progress=False).counts
    {}
    """
    options = options or IngestOptions()
    started = time.perf_counter()
    registered = workspace.catalog.register_source(source.kind, source.location, source.options())
    config = {"source": {"kind": source.kind, "location": source.location, "options": source.options()},
              "ingest": options.recorded()}
    totals: Counter[str] = Counter()
    # The run's stored counts gain the entries unchanged since an earlier run once, with the last
    # batch (an attempt killed before it counts none of them; entries this run itself stored
    # before an interruption are already counted as what they became).
    unchanged_since_earlier_runs = 0

    def fresh_entries(run_id: str, advance: Callable[[], None]) -> Iterator[tuple[Entry, str]]:
        nonlocal unchanged_since_earlier_runs
        stream = iter(source.entries())
        while entries := list(itertools.islice(stream, LOOKUP_BATCH)):  # what is stored: a batch at a time
            known = workspace.catalog.known_locators(registered.source_id, [entry.locator for entry in entries])
            for entry in entries:
                fingerprint = digest([entry.fingerprint, entry.label, entry.split, entry.metadata,
                                      entry.license or options.license])
                stored = known.get(entry.locator)
                if stored is not None and stored[0] == fingerprint:
                    totals["unchanged"] += 1
                    unchanged_since_earlier_runs += stored[1] != run_id
                    advance()
                    continue
                yield entry, fingerprint

    uncommitted_blobs: dict[str, Item] = {}  # blobs written for items not committed yet

    def work(entry: Entry, fingerprint: str) -> tuple[Item, SourceRef] | Quarantined:
        result = _process(workspace, registered.source_id, entry, fingerprint, options)
        if not isinstance(result, Quarantined) and result[0].uri.startswith("blob:"):
            uncommitted_blobs[result[0].item_id] = result[0]
        return result

    def flush(run_id: str, found: list[tuple[Item, SourceRef]], held: list[Quarantined], unchanged: int = 0) -> None:
        added = workspace.catalog.record_ingest_batch(run_id, found, held, unchanged)
        for item, _ in found:
            uncommitted_blobs.pop(item.item_id, None)
        totals.update({k: v for k, v in added.items() if k != "unchanged"})
        found.clear()
        held.clear()

    try:
        with workspace.runs.track("ingest", f"{source.kind} {source.location}", config) as run, \
                progress_bar(f"ingest {source.kind}", source.estimate(), enabled=progress) as advance, \
                ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
            workspace.remove_orphaned_blobs()
            found: list[tuple[Item, SourceRef]] = []
            held: list[Quarantined] = []
            for result in _bounded_map(pool, fresh_entries(run.run_id, advance), 4 * max(1, options.workers), work):
                (held.append(result) if isinstance(result, Quarantined) else found.append(result))
                advance()
                if len(found) + len(held) >= options.batch_size:
                    flush(run.run_id, found, held)
            flush(run.run_id, found, held, unchanged_since_earlier_runs)
    except BaseException:  # the pool has finished its jobs: no blob may outlive the rows it was for
        workspace.discard_unstored_blobs(uncommitted_blobs.values())
        raise
    return IngestResult(workspace.runs.get(run.run_id), registered,
                        {k: v for k, v in sorted(totals.items()) if v}, time.perf_counter() - started)
