"""Evidence at scale: bytes per row, analyze over 10x the rows, status / export / build groups over 10x the items.

Items and evidence are written through the catalogue's public writers (no image decoding; every item
points at one small PNG). Each measurement runs in a child process of its own so its peak memory
(``VmHWM``) is its own. ``CURATE_BENCH_SIZE`` scales everything (1.0 is the issue's size:
500k items x 20 cues = 10M evidence rows against 50k x 20 = 1M, and 1M items against 100k; analyze
also runs on 50k items x 200 cues, 10x the rows over the same items); the default is small, for a
shared machine. Prints each ratio with its goal.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from PIL import Image  # noqa: E402

from curate.analyze.cues import labels_frame  # noqa: E402
from curate.analyze.gap import Answers, ModelUnderTest  # noqa: E402
from curate.records import Evidence, EvidenceRole, Item, RunStatus, SourceRef  # noqa: E402
from curate.workspace import Workspace  # noqa: E402

SIZE = float(os.environ.get("CURATE_BENCH_SIZE", "0.02"))
CUES = 20
CLASSES = 10
BATCH_ITEMS = 64  # one proposer batch: 64 images x 20 cues per write
THRESHOLD = 0.5


def make_items(root: Path, n_items: int) -> Workspace:
    """A workspace of ``n_items`` labelled items."""
    workspace = Workspace.init(root)
    picture = root / "img.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(picture)
    source = workspace.catalog.register_source("folder", str(root), {})
    ingest = workspace.runs.start("ingest", "bench", {"n": n_items})
    ids = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(n_items)]
    for start in range(0, n_items, 20_000):
        found = [(Item(ids[n], str(picture), f"class{n % CLASSES}", 4, 4, "RGB", "PNG", 75),
                  SourceRef(source.source_id, f"{n}.png", ids[n], "f", f"class{n % CLASSES}"))
                 for n in range(start, min(start + 20_000, n_items))]
        workspace.catalog.record_ingest_batch(ingest.run_id, found, [])
    workspace.runs.finish(ingest.run_id, RunStatus.COMPLETED)
    return workspace


def add_evidence(workspace: Workspace, n_items: int, cues: int) -> None:
    """``cues`` evidence rows on each item, written as a proposal writes them (a batch at a time)."""
    ids = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(n_items)]
    rng = np.random.default_rng(0)
    run = workspace.runs.start("propose", "clip", {"bench": n_items})
    for start in range(0, n_items, BATCH_ITEMS):
        batch = ids[start:start + BATCH_ITEMS]
        scores = rng.random((len(batch), cues))
        rows = [Evidence(item_id, f"cue {c}", "clip", run.run_id, EvidenceRole.CANDIDATE, "Background",
                         float(scores[r, c]), [], "clip-vit-b-32", "openai@1", {"similarity": float(scores[r, c])})
                for r, item_id in enumerate(batch) for c in range(cues)]
        workspace.catalog.add_evidence(rows, (run.run_id, {"evidence": len(rows), "items": len(batch)}))
    workspace.evidence.compact(run.run_id)
    workspace.runs.finish(run.run_id, RunStatus.COMPLETED)


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# child processes: one measurement each ------------------------------------------------------------
def child(task: str, root: str, out: str) -> None:
    """One measurement; the modules are imported before the clock starts (a constant of every
    command, not work that grows with the rows)."""
    from curate.analyze import analyze_cues
    from curate.analyze.gap import spurious_gaps
    from curate.builders import make_builder

    workspace = Workspace.open(root)
    started = time.perf_counter()
    if task == "analyze":
        analyze_cues(workspace, source="clip", threshold=THRESHOLD, strip_k=1, heatmap_top=4)
    elif task == "gap":  # every class's cues ranked, their top and bottom 2 shown to a model that says yes
        spurious_gaps(workspace, SaysYes(), source="clip", k=2, bootstrap=20, progress=False)
    elif task in ("bare", "counts"):  # polars alone on the same shards, labels (and fold keys) from parquet
        files = [workspace.root / row[0] for row in workspace.connect().execute("SELECT path FROM evidence_shards")]
        rows = pl.scan_parquet(files, hive_partitioning=False).join(
            pl.scan_parquet(Path(out).with_name(Path(root).name + ".labels.parquet")), on="item_id")
        if task == "bare":  # the aggregation analyze's statistics come from: by cue, class, fold key and type
            score = pl.col("score")
            rows.group_by("attribute", "class_label", "fold_key", "taxonomy_type").agg(
                n=pl.len(), n_both=(score >= THRESHOLD).sum(), listed=pl.col("negative_of").is_null().any(),
                total=score.sum(), squares=(score * score).sum(), low=score.min(), high=score.max()).collect()
        else:  # counts alone: cue presence per class
            rows.group_by("attribute", "class_label").agg(pl.len(), (pl.col("score") >= THRESHOLD).sum()).collect()
    elif task == "status":
        workspace.status()
    elif task == "export":
        workspace.export("items", Path(out).with_suffix(".items.parquet"))
    elif task == "groups":
        make_builder("groups", attribute="cue 0", allow_machine=True, evidence_source="clip", threshold=THRESHOLD,
                     near_duplicates="ignore").build(workspace)
    seconds = time.perf_counter() - started
    Path(out).write_text(json.dumps({"seconds": seconds, "peak_mib": peak_mib()}))


class SaysYes(ModelUnderTest):
    """A model under test that says every class is there (the gap's own work, without a model's)."""

    name, version = "says-yes", "1"

    def says_present(self, items: Sequence[Item], images: Sequence[Image.Image], label: str, variant: str,
                     classes: Sequence[str]) -> list[Answers]:
        return [Answers(yes=1) for _ in items]


def peak_mib() -> float:
    """This process's peak resident memory since it started (``VmHWM``: unlike ``ru_maxrss`` it does
    not inherit the parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(task: str, root: Path, repeats: int = 1) -> dict[str, float]:
    """One child's time and peak; with ``repeats``, the shortest time and the highest peak of that many
    children (a short run on a shared machine swings with its neighbours)."""
    out = root.parent / f"{root.name}.{task}.json"
    runs = []
    for _ in range(repeats):
        subprocess.run([sys.executable, __file__, task, str(root), str(out)], check=True)
        runs.append(json.loads(out.read_text()))
    return {"seconds": min(run["seconds"] for run in runs), "peak_mib": max(run["peak_mib"] for run in runs)}


def main() -> None:
    small_items, large_items = max(int(50_000 * SIZE), 200), max(int(500_000 * SIZE), 2_000)
    print(f"size {SIZE}: analyze {small_items * CUES:,} vs {large_items * CUES:,} evidence rows; "
          f"status/export/groups {max(int(100_000 * SIZE), 200):,} vs {max(int(1_000_000 * SIZE), 2_000):,} items")
    with tempfile.TemporaryDirectory() as name:
        scratch = Path(name)
        results = {}
        # "wide": the large run's rows over the small run's items (10x the cues), so that what grows
        # with the rows is told apart from what grows with the items
        for label, n_items, cues in (("small", small_items, CUES), ("large", large_items, CUES),
                                     ("wide", small_items, CUES * large_items // small_items)):
            root = scratch / label
            workspace = make_items(root, n_items)
            workspace.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            before = folder_bytes(root)
            add_evidence(workspace, n_items, cues)
            workspace.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            stored = folder_bytes(root) - before
            rows = workspace.evidence.scan().collect()
            alone = scratch / f"{label}.alone.parquet"
            rows.write_parquet(alone, compression="zstd")
            labels_frame(workspace.catalog.items_frame(columns=["label"])).select(
                "item_id", "class_label", "fold_key").sink_parquet(scratch / f"{label}.labels.parquet")
            results[label] = {"bytes_ratio": stored / alone.stat().st_size, "rows": rows.height,
                              **{task: measure(task, root) for task in ("analyze", "bare", "counts", "gap")}}
            del rows
            print(f"{label}: {results[label]['rows']:,} rows, {n_items:,} items; workspace bytes / zstd parquet bytes "
                  f"{results[label]['bytes_ratio']:.2f} (goal <= 1.5); analyze "
                  f"{results[label]['analyze']['seconds']:.1f}s {results[label]['analyze']['peak_mib']:.0f} MiB; "
                  f"bare polars group-by {results[label]['bare']['seconds']:.2f}s "
                  f"(counts alone {results[label]['counts']['seconds']:.2f}s)", flush=True)
        small, large, wide = results["small"], results["large"], results["wide"]
        print(f"analyze peak memory {large['rows']:,} / {small['rows']:,} rows: "
              f"{large['analyze']['peak_mib'] / small['analyze']['peak_mib']:.2f} (goal <= 1.3; the same items "
              f"with 10x the cues: {wide['analyze']['peak_mib'] / small['analyze']['peak_mib']:.2f})")
        print(f"analyze time / bare polars group-by of the same statistics at {large['rows']:,} rows: "
              f"{large['analyze']['seconds'] / large['bare']['seconds']:.1f} (goal <= 3; "
              "against counts per (class, cue) alone "
              f"{large['analyze']['seconds'] / large['counts']['seconds']:.1f})")
        print(f"gap (every class's cues ranked, a model that says yes) peak memory {large['rows']:,} / "
              f"{small['rows']:,} rows: {large['gap']['peak_mib'] / small['gap']['peak_mib']:.2f} (no goal; it held "
              f"every row before) [{large['gap']['seconds']:.1f}s, {large['gap']['peak_mib']:.0f} MiB]")

        sizes = {"small": max(int(100_000 * SIZE), 200), "large": max(int(1_000_000 * SIZE), 2_000)}
        timings: dict[str, dict[str, dict[str, float]]] = {}
        for label, n_items in sizes.items():
            root = scratch / f"items-{label}"
            add_evidence(make_items(root, n_items), n_items, 1)  # one cue: machine evidence for `build groups`
            timings[label] = {task: measure(task, root, repeats=3) for task in ("status", "export", "groups")}
        for task in ("status", "export", "groups"):
            small_run, large_run = timings["small"][task], timings["large"][task]
            print(f"{task} on {sizes['large']:,} vs {sizes['small']:,} items: time ratio "
                  f"{large_run['seconds'] / small_run['seconds']:.1f} (goal <= 12), peak memory ratio "
                  f"{large_run['peak_mib'] / small_run['peak_mib']:.2f} (goal <= 1.3) "
                  f"[{large_run['seconds']:.2f}s, {large_run['peak_mib']:.0f} MiB]")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        child(*sys.argv[1:])
    else:
        main()
