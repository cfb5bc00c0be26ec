from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from peak_memory import needs_proc, peak_growths_kib, peak_kib

from curate.ingest import ManifestSource, SourceError, base, ingest
from curate.workspace import Workspace


@pytest.fixture
def manifest_root(tmp_path: Path, write_image: Callable[..., Path]) -> Path:
    root = tmp_path / "data"
    for index in range(4):
        write_image(root / "img" / f"{index}.png", index)
    outside = write_image(tmp_path / "secret" / "outside.png", 50)
    os.symlink(outside, root / "img" / "link-out.png")
    return root


def _rows() -> dict[str, list[object]]:
    return {
        "file": ["img/0.png", "img/1.png", "img/2.png", "img/3.png", "img/0.png", "../secret/outside.png",
                 "/etc/hostname", "img/link-out.png", None],
        "class": ["cat", "cat", "dog", "dog", "dog", "cat", "cat", "cat", "dog"],
        "fold": ["train", "train", "test", "test", "train", "train", "train", "train", "train"],
        "photographer": ["ann", "bob", "ann", "cy", "ann", "x", "x", "x", "x"],
        "iso": [100, 200, 400, 800, 100, 0, 0, 0, 0],
    }


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_manifest_formats_map_columns_and_keep_metadata(workspace: Workspace, manifest_root: Path,
                                                        suffix: str) -> None:
    manifest = manifest_root / f"manifest{suffix}"
    frame = pl.DataFrame(_rows())
    {".csv": frame.write_csv, ".parquet": frame.write_parquet, ".jsonl": frame.write_ndjson}[suffix](manifest)
    source = ManifestSource(manifest, path_column="file", label_column="class", split_column="fold")
    result = ingest(workspace, source, progress=False)
    assert result.counts == {"new_items": 4, "duplicates": 1, "quarantined": 4, "quarantined:bad-entry": 1,
                             "quarantined:path-escape": 3}
    refs = {r.locator: r for r in workspace.catalog.references()}
    assert set(refs) == {"img/0.png", "img/1.png", "img/2.png", "img/3.png", "img/0.png#2"}
    assert refs["img/2.png"].metadata == {"photographer": "ann", "iso": 400}
    assert (refs["img/2.png"].label, refs["img/2.png"].split) == ("dog", "test")
    assert refs["img/0.png#2"].label == "dog" and workspace.status().label_conflicts == 1
    reasons = {q.locator: q.reason for q in workspace.catalog.quarantined()}
    assert reasons == {"../secret/outside.png": "path-escape", "/etc/hostname": "path-escape",
                       "img/link-out.png": "path-escape", "<row 8: no path>": "bad-entry"}


def test_allow_absolute_accepts_absolute_paths_but_never_dotdot(workspace: Workspace, manifest_root: Path,
                                                                tmp_path: Path) -> None:
    manifest = manifest_root / "abs.csv"
    outside = tmp_path / "secret" / "outside.png"
    pl.DataFrame({"path": [str(outside), "img/link-out.png", "../secret/outside.png"],
                  "label": ["a", "b", "c"]}).write_csv(manifest)
    result = ingest(workspace, ManifestSource(manifest, allow_absolute=True), progress=False)
    assert result.counts == {"new_items": 1, "duplicates": 1, "quarantined": 1, "quarantined:path-escape": 1}


def test_metadata_columns_restrict_what_is_kept(workspace: Workspace, manifest_root: Path) -> None:
    manifest = manifest_root / "m.csv"
    pl.DataFrame({"path": ["img/1.png"], "label": ["cat"], "iso": [5], "junk": ["x"]}).write_csv(manifest)
    ingest(workspace, ManifestSource(manifest, metadata_columns=("iso",)), progress=False)
    assert workspace.catalog.references()[0].metadata == {"iso": 5}


def test_a_missing_column_names_the_columns_there_are(manifest_root: Path) -> None:
    manifest = manifest_root / "m.csv"
    pl.DataFrame({"path": ["img/1.png"], "label": ["cat"]}).write_csv(manifest)
    with pytest.raises(SourceError, match=r"label_column='species'.*its columns: path, label"):
        ManifestSource(manifest, label_column="species")
    spreadsheet = manifest.with_suffix(".xlsx")
    spreadsheet.write_text("not supported")
    with pytest.raises(SourceError, match="unknown table format"):
        ManifestSource(spreadsheet)


@pytest.fixture
def image_server(manifest_root: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(manifest_root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_url_rows_are_downloaded_into_the_blob_store(workspace: Workspace, manifest_root: Path,
                                                     image_server: str) -> None:
    manifest = manifest_root / "urls.csv"
    pl.DataFrame({"url": [f"{image_server}/img/1.png", f"{image_server}/img/missing.png"],
                  "label": ["cat", "dog"]}).write_csv(manifest)
    result = ingest(workspace, ManifestSource(manifest, path_column="url"), progress=False)
    assert result.counts == {"new_items": 1, "quarantined": 1, "quarantined:unreadable": 1}
    item = next(workspace.catalog.items())
    assert item.uri.startswith("blob:")
    assert workspace.resolve_uri(item.uri).read_bytes() == (manifest_root / "img" / "1.png").read_bytes()
    assert "404" in workspace.catalog.quarantined()[0].detail
    assert ingest(workspace, ManifestSource(manifest, path_column="url"), progress=False).counts == {
        "unchanged": 2}


def test_editing_a_label_in_the_manifest_updates_the_reference(workspace: Workspace, manifest_root: Path) -> None:
    manifest = manifest_root / "m.csv"
    pl.DataFrame({"path": ["img/1.png", "img/2.png"], "label": ["cat", "cat"]}).write_csv(manifest)
    ingest(workspace, ManifestSource(manifest), progress=False)
    pl.DataFrame({"path": ["img/1.png", "img/2.png"], "label": ["cat", "dog"]}).write_csv(manifest)
    result = ingest(workspace, ManifestSource(manifest), progress=False)
    assert result.counts == {"duplicates": 1, "unchanged": 1}
    assert {r.locator: r.label for r in workspace.catalog.references()} == {"img/1.png": "cat", "img/2.png": "dog"}


_INGEST = """
import sys
from pathlib import Path
from curate.ingest import IngestOptions, ManifestSource, ingest
from curate.workspace import Workspace
result = ingest(Workspace.init(sys.argv[1]), ManifestSource(Path(sys.argv[2])), IngestOptions(batch_size=256),
                progress=False)
print(result.counts["new_items"] + result.counts.get("duplicates", 0))
"""


@needs_proc
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_memory_does_not_grow_with_its_rows(tmp_path: Path, write_image: Callable[..., Path],
                                                     suffix: str) -> None:
    """2,000 vs 20,000 rows of a few tiny images, each row carrying 2 kB of metadata: the whole table would
    be 40 MB more; read in batches, peak RSS stays within a few MB."""
    images = [write_image(tmp_path / "img" / f"{i}.png", i, size=(4, 4)) for i in range(4)]
    peaks = []
    for rows in (2_000, 20_000):
        manifest = tmp_path / f"m{rows}{suffix}"
        frame = pl.DataFrame({"path": [f"img/{images[i % 4].name}" for i in range(rows)],
                              "label": [f"c{i % 7}" for i in range(rows)],
                              "note": [f"{i:08d}" + "x" * 2000 for i in range(rows)]})
        # parquet is read a row group at a time: what is held is bounded by the writer's row-group size
        if suffix == ".parquet":
            frame.write_parquet(manifest, row_group_size=4096)
        else:
            {".csv": frame.write_csv, ".jsonl": frame.write_ndjson}[suffix](manifest)
        del frame
        printed, peak = peak_kib(_INGEST, str(tmp_path / f"ws{rows}"), str(manifest))
        assert printed == [str(rows)]
        peaks.append(peak)
    assert peaks[1] - peaks[0] < 12 * 1024, f"peak RSS grew from {peaks[0]} KiB to {peaks[1]} KiB"


_READ_ROWS = """
from pathlib import Path
from curate.ingest import ManifestSource


def step(manifest):
    return str(sum(1 for _ in ManifestSource(Path(manifest)).entries()))
"""


@needs_proc
def test_wide_json_lines_are_read_in_the_memory_of_a_few_rows(tmp_path: Path) -> None:
    """1,100 vs 10,000 JSON lines of 4 kB each (a batch of 1,024 such rows is 4 MB): the peak rose by
    about 13 MB more for the larger manifest when every batch was 1,024 rows, however wide; batches
    bounded in bytes keep the two within a few MB."""
    manifests = []
    for rows in (300, 1_100, 10_000):  # the first warms up (imports, thread pools), once
        manifest = tmp_path / f"m{rows}.jsonl"
        pl.DataFrame({"path": [f"img/{i % 4}.png" for i in range(rows)], "label": [f"c{i % 7}" for i in range(rows)],
                      "note": [f"{i:08d}" + "x" * 4000 for i in range(rows)]}).write_ndjson(manifest)
        manifests.append(str(manifest))
    _, (small, small_growth), (large, large_growth) = peak_growths_kib(_READ_ROWS, *manifests)
    assert (small, large) == ("1100", "10000")
    assert large_growth - small_growth < 5 * 1024, f"the peak rose by {small_growth} KiB, then {large_growth} KiB"


_NUMBER_PATHS = """
import sys
from curate.ingest.base import row_locators
rows = int(sys.argv[1])
paths = (f"img/{n % (rows // 2):07d}/" + "x" * 500 for n in range(rows))  # every path twice
print(sum(locator.endswith("#2") for locator in row_locators(paths)))
"""


@needs_proc
def test_numbering_repeated_paths_does_not_grow_with_the_distinct_paths() -> None:
    """10,000 vs 100,000 rows of 500-byte paths, each path twice: a note of every path seen would be
    about 30 MB more; counted on disk, peak RSS stays within a few MB."""
    peaks = []
    for rows in (10_000, 100_000):
        printed, peak = peak_kib(_NUMBER_PATHS, str(rows))
        assert printed == [str(rows // 2)]  # the second of each pair is numbered, none other
        peaks.append(peak)
    assert peaks[1] - peaks[0] < 8 * 1024, f"peak RSS grew from {peaks[0]} KiB to {peaks[1]} KiB"


@pytest.mark.parametrize("batch", [2, base.LOCATOR_BATCH])
def test_repeats_are_numbered_across_batches_of_rows(batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "LOCATOR_BATCH", batch)
    paths = ["a.png", " b.png", "a.png", None, "a.png", "c.png", "b.png", ""]
    assert list(base.row_locators(paths)) == ["a.png", "b.png", "a.png#2", "<row 3: no path>", "a.png#3", "c.png",
                                              "b.png#2", "<row 7: no path>"]
