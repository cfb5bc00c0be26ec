"""WebDataset shards as img2dataset writes them: streamed, resumable, bad members quarantined."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import distinct_image, encode

from curate.ingest import IngestOptions, IngestResult, SourceError, WebDatasetSource, ingest, make_source
from curate.ingest import webdataset as webdataset_module
from curate.workspace import Workspace

Members = list[tuple[str, bytes]]


def _sample(key: str, seed: int, label: int | None = 0, caption: str | None = "a photo",
            fmt: str = "JPEG") -> Members:
    members: Members = [(f"{key}.{'jpg' if fmt == 'JPEG' else fmt.lower()}", encode(distinct_image(seed), fmt))]
    members.append((f"{key}.json", json.dumps({"key": key, "url": f"http://x/{key}", "species": f"s{seed}"}).encode()))
    if caption is not None:
        members.append((f"{key}.txt", caption.encode()))
    if label is not None:
        members.append((f"{key}.cls", str(label).encode()))
    return members


def _write_shard(path: Path, members: Members, mode: str = "w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Two shards: shard 0 holds a corrupt image, a sample without a label and one without an image."""
    root = tmp_path / "shards"
    first = [*_sample("000000", 0, label=0), *_sample("000001", 1, label=1),
             ("000002.jpg", b"\xff\xd8\xff not really a jpeg"), ("000002.cls", b"0"),
             *_sample("000003", 3, label=None, caption=None),
             ("000004.json", b'{"key": "000004"}'), ("000004.cls", b"1")]
    _write_shard(root / "00000.tar", first)
    _write_shard(root / "00001.tar", [*_sample("000005", 5, label=1, fmt="PNG"), *_sample("000006", 6, label=0)])
    return root


def test_brace_pattern_ingests_every_sample_with_label_caption_and_metadata(workspace: Workspace,
                                                                            shards: Path) -> None:
    source = make_source("webdataset", str(shards / "{00000..00001}.tar"), class_names=("cat", "dog"))
    result = ingest(workspace, source, progress=False)
    assert result.counts == {"new_items": 5, "quarantined": 2, "quarantined:bad-entry": 1,
                             "quarantined:not-an-image": 1}
    refs = {ref.locator: ref for ref in workspace.catalog.references()}
    assert set(refs) == {"00000.tar/000000", "00000.tar/000001", "00000.tar/000003", "00001.tar/000005",
                         "00001.tar/000006"}
    assert (refs["00000.tar/000001"].label, refs["00001.tar/000005"].label) == ("dog", "dog")
    assert refs["00000.tar/000003"].label is None  # no .cls: an item without a label, like a file in a folder root
    assert refs["00000.tar/000000"].metadata == {"key": "000000", "url": "http://x/000000", "species": "s0",
                                                 "caption": "a photo"}
    held = {q.locator: q for q in workspace.catalog.quarantined()}
    assert held["00000.tar/000004"].reason == "bad-entry" and "no image member" in held["00000.tar/000004"].detail
    assert held["00000.tar/000002"].reason == "not-an-image"
    stored = {item.item_id: item for item in workspace.catalog.items()}
    assert stored[refs["00001.tar/000005"].item_id].format == "PNG"
    assert all(item.uri.startswith("blob:") for item in stored.values())  # bytes inside a tar are copied


def test_label_from_a_json_field_and_a_folder_of_shards(workspace: Workspace, shards: Path) -> None:
    result = ingest(workspace, WebDatasetSource(str(shards), label_field="species"), progress=False)
    assert result.counts["new_items"] == 5
    labels = {ref.locator: ref.label for ref in workspace.catalog.references()}
    assert labels["00001.tar/000006"] == "s6" and labels["00000.tar/000003"] == "s3"


def test_a_cls_that_names_no_class_is_quarantined(workspace: Workspace, tmp_path: Path) -> None:
    shard = _write_shard(tmp_path / "s.tar", [*_sample("a", 0, label=7), *_sample("b", 1, label=1)])
    result = ingest(workspace, WebDatasetSource(str(shard), class_names=("cat", "dog")), progress=False)
    assert result.counts == {"new_items": 1, "quarantined": 1, "quarantined:bad-entry": 1}
    [held] = workspace.catalog.quarantined()
    assert held.locator == "s.tar/a" and "names none of 2 classes" in held.detail


def test_rerun_reads_no_image_and_changes_nothing(workspace: Workspace, shards: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pattern = str(shards / "{00000..00001}.tar")
    ingest(workspace, WebDatasetSource(pattern), progress=False)
    first_refs = workspace.catalog.references()

    def no_image_reads(*_: object) -> object:
        def read() -> bytes:
            raise AssertionError("a shard ingested before had an image read again")

        return read

    monkeypatch.setattr(webdataset_module, "_reader", no_image_reads)
    again = ingest(workspace, WebDatasetSource(pattern), progress=False)
    assert again.counts == {"unchanged": 7}
    assert workspace.catalog.references() == first_refs


def test_a_run_killed_inside_a_shard_resumes_without_duplicates(workspace: Workspace, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shard = _write_shard(tmp_path / "big.tar", [m for i in range(40) for m in _sample(f"{i:06d}", i, label=i % 2)])
    real_reader, reads = webdataset_module._reader, []

    def dying_reader(*args: object) -> object:
        read = real_reader(*args)  # type: ignore[arg-type]

        def read_or_die() -> bytes:
            reads.append(1)
            if len(reads) == 25:
                raise KeyboardInterrupt  # the process is killed mid-shard
            return read()

        return read_or_die

    monkeypatch.setattr(webdataset_module, "_reader", dying_reader)
    with pytest.raises(KeyboardInterrupt):
        _ingest_small_batches(workspace, WebDatasetSource(str(shard)))
    stored = workspace.connect().execute("SELECT COUNT(*) FROM item_sources").fetchone()[0]
    assert 8 <= stored < 40
    monkeypatch.setattr(webdataset_module, "_reader", real_reader)
    result = _ingest_small_batches(workspace, WebDatasetSource(str(shard)))
    assert result.run.attempts == 2 and result.counts == {"new_items": 40 - stored, "unchanged": stored}
    conn = workspace.connect()
    assert tuple(conn.execute("SELECT COUNT(*), COUNT(DISTINCT item_id) FROM items").fetchone()) == (40, 40)
    assert conn.execute("SELECT COUNT(*) FROM item_sources").fetchone()[0] == 40


def _ingest_small_batches(workspace: Workspace, source: WebDatasetSource) -> IngestResult:
    return ingest(workspace, source, IngestOptions(batch_size=8, workers=1), progress=False)


def test_a_truncated_shard_keeps_what_it_holds_and_quarantines_the_rest(workspace: Workspace,
                                                                        tmp_path: Path) -> None:
    whole = _write_shard(tmp_path / "whole.tar", [m for i in range(6) for m in _sample(f"{i:06d}", i)])
    with tarfile.open(whole) as tar:
        fourth_image = tar.getmember("000003.jpg").offset_data
    cut = tmp_path / "cut" / "part.tar"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: fourth_image + 100])  # a download that stopped inside an image
    result = ingest(workspace, WebDatasetSource(str(cut)), progress=False)
    assert {ref.locator for ref in workspace.catalog.references()} == {"part.tar/000000", "part.tar/000001",
                                                                      "part.tar/000002"}
    held = {q.locator: q for q in workspace.catalog.quarantined()}
    assert set(held) == {"part.tar/000003", "part.tar/<after member 13>"}
    assert {q.reason for q in held.values()} == {"unreadable"}
    assert "cut short" in held["part.tar/000003"].detail
    assert "what follows is lost" in held["part.tar/<after member 13>"].detail
    assert result.counts == {"new_items": 3, "quarantined": 2, "quarantined:unreadable": 2}


def test_a_gzipped_shard_is_streamed(workspace: Workspace, tmp_path: Path) -> None:
    shard = _write_shard(tmp_path / "s.tar.gz", [*_sample("a", 0), *_sample("b", 1)], mode="w:gz")
    assert ingest(workspace, WebDatasetSource(str(shard)), progress=False).counts == {"new_items": 2}


def test_missing_shards_are_named_before_anything_is_read(shards: Path) -> None:
    with pytest.raises(SourceError, match=r"1 of 3 shards of .* are missing: .*00002\.tar$"):
        WebDatasetSource(str(shards / "{00000..00002}.tar"))
    with pytest.raises(SourceError, match="unbalanced braces"):
        WebDatasetSource(str(shards / "{00000..00002.tar"))


def test_cli_ingests_a_brace_pattern(workspace: Workspace, shards: Path) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    result = CliRunner().invoke(app, ["ingest", "webdataset", str(shards / "{00000..00001}.tar"), "--class-names",
                                      "cat,dog", "-w", str(workspace.root), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "5 new items" in result.output and "2 quarantined" in result.output
    assert {ref.label for ref in workspace.catalog.references()} == {"cat", "dog", None}
