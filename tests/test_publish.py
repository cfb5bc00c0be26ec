"""Publishing a release as a Hub-layout folder that the real `datasets` loader reads back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
import pytest
from conftest import distinct_image
from PIL import Image

from curate.builders import build, make_builder
from curate.ingest import FolderSource, ingest
from curate.publish import PublishError, publish
from curate.publish.folder import write_table
from curate.records import Verdict
from curate.workspace import Workspace


def test_a_groups_release_loads_back_with_its_features_and_counts(judged: Workspace, tmp_path: Path) -> None:
    release = build(judged, make_builder("groups", attribute="water", classes=("dog", "cat"), train_correlation=0.9),
                    tmp_path / "release")
    result = publish(judged, tmp_path / "release", f"folder:{tmp_path / 'hub'}", license="CC0-1.0")
    loaded = datasets.load_dataset(str(tmp_path / "hub"))
    assert {split: loaded[split].num_rows for split in loaded} == release.release.counts()
    features = loaded["train"].features
    assert features["y"].names == ["dog", "cat"] and features["a"].names == ["no water", "water"]
    assert features["g"].names == ["y:dog|a:no water", "y:dog|a:water", "y:cat|a:no water", "y:cat|a:water"]
    assert isinstance(features["image"], datasets.Image) and "uri" not in features
    row = loaded["val"][0]
    assert row["g"] == 2 * row["y"] + row["a"] and row["image"].size == (6, 6)
    card = (tmp_path / "hub" / "README.md").read_text()
    assert card.startswith("---\nlicense: cc0-1.0\n") and "g = n_a * y + a" in card
    assert str(tmp_path) not in card and str(judged.root) not in card and "| train, y=0, a=0 | 38 |" in card
    assert {split: loaded[split].num_rows for split in loaded} == release.release.counts()
    from curate.publish.croissant import validate

    validate(tmp_path / "hub" / "croissant.json")  # offline, with mlcroissant
    document = json.loads((tmp_path / "hub" / "croissant.json").read_text())
    fields = {f["name"]: f for f in document["recordSet"][0]["field"]}
    assert fields["image"]["dataType"] == "sc:ImageObject" and set(fields) >= {"y", "a", "g"}
    assert document["license"] == "cc0-1.0" and str(tmp_path) not in json.dumps(document)
    import mlcroissant

    # a folder's Croissant names its files beside it (no Hub repository that does not exist): it reads
    records = list(mlcroissant.Dataset(jsonld=str(tmp_path / "hub" / "croissant.json")).records(
        document["recordSet"][0]["name"]))
    assert len(records) == sum(release.release.counts().values())
    assert sorted(r["default/y"] for r in records) == sorted(y for split in loaded for y in loaded[split]["y"])
    again = publish(judged, tmp_path / "release", f"folder:{tmp_path / 'hub'}", license="CC0-1.0")
    assert again.changed == [] and again.run.run_id == result.run.run_id  # unchanged: nothing rewritten


def test_mcq_items_keep_their_types_as_class_labels(verified: Workspace, tmp_path: Path) -> None:
    build(verified, make_builder("mmspubench", verdict_round="r1", source_dataset="bottles"), tmp_path / "r")
    publish(verified, tmp_path / "r", f"folder:{tmp_path / 'hub'}")
    loaded = datasets.load_dataset(str(tmp_path / "hub"), split="test")
    names = loaded.features["spurious_correlation_type"].feature.names
    assert "Co-occurring Objects" in names and loaded.num_rows == 8
    assert all(len(row["choices"]) == 4 for row in loaded)
    skipped = json.loads((tmp_path / "r" / "release.json").read_text())["skipped_items"]
    assert sum(skipped.values()) == 9 - 8  # the images left out are counted in the card, with their reason
    card = " ".join((tmp_path / "hub" / "README.md").read_text().split())
    assert "images without them are left out (" + ", ".join(f"{n} for {why}" for why, n in skipped.items()) in card


def test_dry_run_writes_nothing_and_bad_targets_are_refused(judged: Workspace, tmp_path: Path) -> None:
    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    publish(judged, tmp_path / "release", f"folder:{tmp_path / 'dry'}", dry_run=True)
    assert not (tmp_path / "dry").exists()
    with pytest.raises(PublishError, match="folder:PATH"):
        publish(judged, tmp_path / "release", "s3://bucket")
    with pytest.raises(FileNotFoundError, match="not a release folder"):
        publish(judged, tmp_path, f"folder:{tmp_path / 'x'}")


def test_shards_are_size_bounded(judged: Workspace, tmp_path: Path) -> None:
    release = make_builder("groups", attribute="water", classes=("dog", "cat")).build(judged)
    from curate.publish.folder import features_for

    table = release.tables["train"].lazy().collect()
    assert table.height == 67  # 38 + 2 dogs, 26 + 1 cats at 95%
    features = features_for(table, release.metadata)
    shards = write_table(judged, table, features, tmp_path / "shards", "train", max_shard_rows=20, batch_rows=10)
    assert len(shards) == 4  # 20 rows a shard: 20, 20, 20, 7
    shards = write_table(judged, table, features, tmp_path / "shards", "train", max_shard_bytes=1, batch_rows=10)
    assert len(shards) == 7 and shards[-1].name == "train-00006-of-00007.parquet"
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 7  # the earlier shards were replaced
    reloaded = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    assert reloaded.num_rows == table.height


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The stand-in Hub on 127.0.0.1; huggingface_hub's offline switch is lifted for loopback only."""
    from hub_standin import hub_standin
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_0123456789")
    with hub_standin() as server:
        yield server


def test_hub_upload_is_private_tagged_merged_and_idempotent(judged: Workspace, tmp_path: Path,
                                                            hub: Any) -> None:
    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    dry = publish(judged, tmp_path / "release", "hub:org/waterish", dry_run=True, endpoint=hub.endpoint)
    assert "README.md" in dry.changed and "org/waterish" not in hub.repos  # a dry run creates nothing
    assert "data/default/train-00000-of-00001.parquet" in dry.changed
    first = publish(judged, tmp_path / "release", "hub:org/waterish", tag="v1.0", endpoint=hub.endpoint)
    repo = hub.repos["org/waterish"]
    assert repo["private"] and repo["tags"] == ["v1.0"] and len(repo["commits"]) == 1
    assert set(first.changed) == set(repo["files"]) and "data/default/train-00000-of-00001.parquet" in repo["lfs"]
    assert b"hf_not_a_real_token" not in b"".join(repo["files"].values())
    # somebody adds metadata on the Hub; publishing again keeps it and uploads nothing else
    card = repo["files"]["README.md"].decode()
    repo["files"]["README.md"] = card.replace("---\n", "---\npretty_name: Waterish birds\n", 1).encode()
    second = publish(judged, tmp_path / "release", "hub:org/waterish", endpoint=hub.endpoint)
    assert second.changed == [] and len(repo["commits"]) == 1  # the merged card equals the Hub's
    third = publish(judged, tmp_path / "release", "hub:org/waterish", license="CC0-1.0", endpoint=hub.endpoint)
    assert third.changed == ["README.md", "croissant.json"] and len(repo["commits"]) == 2  # both name the licence
    merged = repo["files"]["README.md"].decode()
    assert "pretty_name: Waterish birds" in merged and "license: cc0-1.0" in merged


def test_hub_publishing_needs_a_token(judged: Workspace, tmp_path: Path, hub: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")
    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    with pytest.raises(PublishError, match="set HF_TOKEN"):
        publish(judged, tmp_path / "release", "hub:org/x", endpoint=hub.endpoint)
    with pytest.raises(PublishError, match="ORG/NAME"):
        publish(judged, tmp_path / "release", "hub:just-a-name")


@pytest.mark.skipif(not os.environ.get("CURATE_HF_LIVE_TOKEN"), reason="opt-in: set CURATE_HF_LIVE_TOKEN and "
                    "CURATE_HF_LIVE_REPO to publish to the real Hub")
def test_live_hub(judged: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", os.environ["CURATE_HF_LIVE_TOKEN"])
    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    result = publish(judged, tmp_path / "release", f"hub:{os.environ['CURATE_HF_LIVE_REPO']}")
    assert result.changed or result.files


def test_every_config_of_a_multi_table_release_loads(tmp_path: Path, workspace: Workspace) -> None:
    """A FOCUS release with its card, plus a config named after a non-split table."""
    import polars as pl
    from conftest import distinct_image
    from typer.testing import CliRunner

    from curate.cli import app
    from curate.ingest import FolderSource, ingest
    from curate.records import Verdict

    (tmp_path / "img" / "cat").mkdir(parents=True)
    distinct_image(1, (8, 8)).save(tmp_path / "img" / "cat" / "0.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    item = next(workspace.catalog.items())
    workspace.catalog.add_verdicts([Verdict(item.item_id, "time", "ann", "s", "night"),
                                    Verdict(item.item_id, "weather", "ann", "s", "sunny"),
                                    Verdict(item.item_id, "locations", "ann", "s", "water")])
    build(workspace, make_builder("focus", verdict_round="s"), tmp_path / "focus")
    extra = pl.DataFrame({"logo_id": ["logo-0000"], "flip_to_rate": [0.25]})
    extra.write_parquet(tmp_path / "focus" / "data" / "ranking.parquet")  # a second, non-split table
    manifest = json.loads((tmp_path / "focus" / "release.json").read_text())
    (tmp_path / "focus" / "release.json").write_text(json.dumps({**manifest, "counts": {**manifest["counts"],
                                                                                         "ranking": 1}}))
    result = CliRunner().invoke(app, ["publish", str(tmp_path / "focus"), "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    published = tmp_path / "focus-hub"
    assert datasets.load_dataset(str(published), "default", split="test").num_rows == 1
    assert datasets.load_dataset(str(published), "ranking", split="test")["flip_to_rate"] == [0.25]
    card = (published / "README.md").read_text()
    assert "| 2 | 1 |" in card  # night and water are uncommon for cats: partition 2
    assert 'load_dataset("focus-hub", "ranking")' in card
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard

    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard(card).data)  # the card's dataset_info, read back
    assert sorted(infos) == ["default", "ranking"]
    assert infos["ranking"].features == datasets.Features({"logo_id": datasets.Value("string"),
                                                           "flip_to_rate": datasets.Value("float64")})
    assert infos["default"].splits["test"].num_examples == 1 and infos["ranking"].splits["test"].num_bytes > 0
    assert infos["default"].features == datasets.load_dataset(str(published), "default", split="test").features


def test_a_card_that_would_leak_a_path_or_token_stops_everything(judged: Workspace, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.publish as publishing

    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    for leak, message in ((str(judged.root), "local path"), ("token hf_abcdefghijklmnop", "token or key")):
        monkeypatch.setattr(publishing, "render_card", lambda *args, leak=leak: f"made in {leak}")
        with pytest.raises(PublishError, match=message):
            publish(judged, tmp_path / "release", f"folder:{tmp_path / 'leaky'}")
        assert not (tmp_path / "leaky").exists()  # nothing was written


# --- a release tells the truth: every builder, every image, every name, every number ----------------------------

def _logobank_ready(workspace: Workspace, tmp_path: Path) -> Workspace:
    from test_build_logobank import _bank_ready

    folder = tmp_path / "pool"
    for name, size, colour in (("logo-a.png", (32, 24), (220, 10, 10)), ("logo-b.png", (20, 30), (10, 10, 220)),
                               ("dog/0.png", (64, 48), (100, 100, 100)), ("cat/0.png", (40, 50), (60, 60, 60))):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, colour).save(folder / name)
    ingest(workspace, FolderSource(folder), progress=False)
    _bank_ready(workspace, {ref.locator: ref.item_id for ref in workspace.catalog.references()})
    return workspace


def _focus_ready(workspace: Workspace, tmp_path: Path) -> Workspace:
    for index, (label, size) in enumerate((("cat", (12, 10)), ("cat", (9, 14)), ("dog", (16, 16)))):
        (tmp_path / "img" / label).mkdir(parents=True, exist_ok=True)
        distinct_image(50 + index, size).save(tmp_path / "img" / label / f"{index}.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    workspace.catalog.add_verdicts(Verdict(item.item_id, attribute, annotator, "s", value)
                                   for item in workspace.catalog.items() for annotator in ("ann", "bob")
                                   for attribute, value in (("time", "night"), ("weather", "sunny"),
                                                            ("locations", "water, grass")))
    return workspace


BUILDS = {  # builder -> (fixture or preparation, builder options, release folder name)
    "groups": ("judged", {"attribute": "water", "classes": ("dog", "cat"), "train_correlation": 0.9}),
    "mmspubench": ("verified", {"verdict_round": "r1", "source_dataset": "bottles"}),
    "focus": (_focus_ready, {"verdict_round": "s"}),
    "logobank-candidates": (_logobank_ready, {"mining_source": "hand-scores", "keep_fraction": 1.0}),
    "logobank-bank": (_logobank_ready, {"stage": "bank", "mining_source": "hand-scores", "keep_fraction": 1.0,
                                        "verdict_round": "logos-1"}),
}


@pytest.fixture(params=sorted(BUILDS))
def released(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Workspace, Path, Path]:
    """(workspace, release folder, published folder) for each builder."""
    prepare, options = BUILDS[request.param]
    if isinstance(prepare, str):
        workspace = request.getfixturevalue(prepare)
    else:
        workspace = prepare(request.getfixturevalue("workspace"), tmp_path)
    name = request.param.partition("-")[0]
    build(workspace, make_builder(name, **options), tmp_path / "release")
    publish(workspace, tmp_path / "release", f"folder:{tmp_path / 'hub'}", license="CC0-1.0")
    return workspace, tmp_path / "release", tmp_path / "hub"


def _configs(published: Path) -> list[str]:
    return [c["config_name"] for c in hub_split_card((published / "README.md").read_text())[0]["configs"]]


def hub_split_card(text: str) -> tuple[dict[str, Any], str]:
    from curate.publish.hub import split_card

    return split_card(text)


def test_every_image_decodes_at_its_size_and_every_column_round_trips(released: tuple[Workspace, Path, Path]) -> None:
    import numpy as np
    import polars as pl

    from curate.images import open_image

    workspace, release, published = released
    manifest = json.loads((release / "release.json").read_text())
    decoded = 0
    for config in _configs(published):
        loaded = datasets.load_dataset(str(published), config)
        for split in loaded:
            table = pl.read_parquet(release / "data" / f"{split if config == 'default' else config}.parquet")
            rows = loaded[split]
            assert rows.num_rows == table.height == manifest["counts"][split if config == "default" else config]
            assert set(rows.column_names) == set(table.columns) - {"uri"} | ({"image"} if "uri" in table.columns
                                                                           else set())
            for column in table.columns:
                if column == "uri":
                    continue
                feature, values = rows.features[column], rows[column]
                if isinstance(feature, datasets.ClassLabel):
                    values = [feature.int2str(v) if column.endswith("_name") else v for v in values]
                elif isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.ClassLabel):
                    values = [[feature.feature.int2str(v) for v in row] for row in values]
                assert values == table[column].to_list(), (config, split, column)
            if "uri" not in table.columns:
                continue
            assert isinstance(rows.features["image"], datasets.Image)
            for row, uri, item_id in zip(rows, table["uri"], table["item_id"], strict=True):
                item = workspace.catalog.item(item_id)
                assert row["image"].size == (item.width, item.height)
                assert np.array_equal(np.asarray(row["image"].convert("RGB")),
                                      np.asarray(open_image(workspace.resolve_uri(uri))))
                decoded += 1
    assert decoded > 0


def _named_files(release: Path) -> list[str]:
    """Every file name a release's tables and exports give."""
    import sqlite3

    import polars as pl

    names = []
    for table in (release / "data").glob("*.parquet"):
        frame = pl.read_parquet(table)
        for column in ("filename", "file_name", "logo_file"):
            if column in frame.columns:
                names += frame[column].to_list()
    if (release / "metadata.csv").is_file():
        names += pl.read_csv(release / "metadata.csv")["filename"].to_list()
    if (release / "annotation.json").is_file():
        names += [item["image"] for item in json.loads((release / "annotation.json").read_text())]
    if (release / "focus.sqlite").is_file():
        with sqlite3.connect(release / "focus.sqlite") as conn:
            names += [row[0] for row in conn.execute("SELECT file_name FROM annotations")]
        conn.close()
    return names


def test_every_file_a_release_names_is_in_the_release(released: tuple[Workspace, Path, Path]) -> None:
    workspace, release, _ = released
    names = _named_files(release)
    builder = json.loads((release / "release.json").read_text())["builder"]
    assert names or builder == "logobank"  # the candidates name no file
    for name in names:
        path = (release / name).resolve()
        assert path.is_relative_to(release.resolve()) and path.is_file(), name
        Image.open(path).verify()
    assert not any(p.name.startswith(".") for p in release.parent.iterdir())  # nothing left beside it


def _card_contents(card: str) -> dict[tuple[str, str], int]:
    import re

    return {(c, s): int(n) for c, s, n in re.findall(r"^\| `([\w-]+)` \| `(\w+)` \| (\d+) \|$", card, re.M)}


def test_the_card_counts_and_loading_snippet_match_the_data(released: tuple[Workspace, Path, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    from collections import Counter

    _, release, published = released
    card = (published / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(published.parent)  # a folder's snippet runs beside the folder
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # the card's own loading code
    loaded = {config: namespace[config.replace("-", "_")] for config in _configs(published)}
    assert _card_contents(card) == {(c, s): d[s].num_rows for c, d in loaded.items() for s in d}
    manifest = json.loads((release / "release.json").read_text())
    if manifest["builder"] == "groups":
        counts = Counter(f"{s}, y={r['y']}, a={r['a']}" for s in loaded["default"] for r in loaded["default"][s])
        assert {k: int(n) for k, n in re.findall(r"^\| (\w+, y=\d, a=\d) \| (\d+) \|$", card, re.M)} == counts
    if manifest["builder"] == "mmspubench":
        test = loaded["default"]["test"]
        names = test.features["spurious_correlation_type"].feature.names
        types = Counter(names[t] for row in test["spurious_correlation_type"] for t in row)
        assert {k: int(n) for k, n in re.findall(r"^\| ([A-Z][\w -]+) \| (\d+) \|$", card, re.M)} == types
        letters = Counter(test["answer"])
        assert f"Answer letters: {', '.join(f'{k} {v}' for k, v in sorted(letters.items()))}." in card
    if manifest["builder"] == "focus":
        partitions = Counter(loaded["default"]["test"]["n_uncommon"])
        assert {int(k): int(n) for k, n in re.findall(r"^\| (\d) \| (\d+) \|$", card, re.M)} == partitions
    assert "Published under `cc0-1.0`" in card


def test_a_rebuild_replaces_the_whole_release_and_publish_ships_only_its_tables(
        judged: Workspace, tmp_path: Path) -> None:
    import shutil

    import polars as pl

    from curate.builders import BuildError

    release, hub = tmp_path / "release", tmp_path / "hub"
    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), release)
    shutil.copy(release / "data" / "val.parquet", tmp_path / "val.parquet")
    # the same folder, rebuilt with a builder that makes one table
    judged.catalog.add_verdicts(Verdict(item.item_id, name, annotator, "r1", role, kind)
                                for item in judged.catalog.items(label="cat") for annotator in ("ann", "bob")
                                for name, role, kind in (("whiskers", "core", None), ("fur", "core", None),
                                                         ("sofa", "spurious", "Background"),
                                                         ("toy", "spurious", "Co-occurring Objects"),
                                                         ("grass", "spurious", "Background")))
    result = build(judged, make_builder("mmspubench", verdict_round="r1"), release)
    assert sorted(p.name for p in (release / "data").iterdir()) == ["test.parquet"]
    assert not (release / "metadata.csv").exists() and (release / "annotation.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "release", "val.parquet", "ws"]  # no .tmp, no .old
    shutil.copy(tmp_path / "val.parquet", release / "data" / "val.parquet")  # a stray table release.json omits
    publish(judged, release, f"folder:{hub}")
    assert sorted(p.name for p in (hub / "data" / "default").iterdir()) == ["test-00000-of-00001.parquet"]
    loaded = datasets.load_dataset(str(hub))
    assert list(loaded) == ["test"] and loaded["test"].num_rows == result.release.counts()["test"] == 50  # the cats
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not a release folder"):
        build(judged, make_builder("mmspubench", verdict_round="r1"), tmp_path / "mine")
    with pytest.raises(PublishError, match="not a published dataset"):
        publish(judged, release, f"folder:{tmp_path / 'mine'}")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    manifest = json.loads((release / "release.json").read_text())
    (release / "release.json").write_text(json.dumps({**manifest, "counts": {"test": 49}}))
    with pytest.raises(ValueError, match="has 50 rows but release.json says 49"):
        publish(judged, release, f"folder:{hub}")
    from curate.publish.folder import features_for

    with pytest.raises(ValueError, match="would replace the picture"):
        features_for(pl.DataFrame({"uri": ["blob:ab/ab.png"], "image": ["000000.png"]}), {})


KILLED_PUBLISH = """
import itertools, os, signal, sys
import curate.publish.folder as folder
real = folder._encoded_batches
def dying(*args, **kwargs):  # the first batch is written into a shard, then the process is killed
    yield from itertools.islice(real(*args, **kwargs), 1)
    os.kill(os.getpid(), signal.SIGKILL)
folder._encoded_batches = dying
from curate.publish import publish
from curate.workspace import Workspace
publish(Workspace.open(sys.argv[1]), sys.argv[2], "folder:" + sys.argv[3])
"""


def test_a_killed_publish_leaves_the_previous_version_loadable(judged: Workspace, tmp_path: Path) -> None:
    import subprocess
    import sys

    hub = tmp_path / "hub"
    first = build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    publish(judged, tmp_path / "release", f"folder:{hub}")
    card = (hub / "README.md").read_text()
    second = build(judged, make_builder("groups", attribute="water", classes=("dog", "cat"), train_correlation=0.8),
                   tmp_path / "release")
    assert second.release.counts() != first.release.counts()
    killed = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, str(judged.root), str(tmp_path / "release"),
                             str(hub)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    loaded = datasets.load_dataset(str(hub))
    assert {split: loaded[split].num_rows for split in loaded} == first.release.counts()  # the old version, whole
    assert (hub / "README.md").read_text() == card
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hub.new-")]  # the killed one's half
    publish(judged, tmp_path / "release", f"folder:{hub}")  # the next publish clears what the killed one left
    loaded = datasets.load_dataset(str(hub))
    assert {split: loaded[split].num_rows for split in loaded} == second.release.counts()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "img", "release", "ws"]
    assert not [p for p in hub.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]


def test_the_card_lists_only_what_fed_the_release_and_names_no_annotator(judged: Workspace,
                                                                         tmp_path: Path) -> None:
    import re

    import polars as pl

    from curate.agreement import krippendorff_alpha, round_ratings
    from curate.analyze import analyze_cues
    from curate.records import Evidence, EvidenceRole

    for seed in range(4):  # birds: in the workspace, not in the release
        (tmp_path / "img" / "bird").mkdir(exist_ok=True)
        distinct_image(500 + seed, (6, 6)).save(tmp_path / "img" / "bird" / f"{seed}.png")
    ingest(judged, FolderSource(tmp_path / "img"), progress=False)
    items = {label: [i.item_id for i in judged.catalog.items(label=label)] for label in ("dog", "cat", "bird")}
    judged.catalog.add_verdicts(  # the same answers again, by people known by e-mail
        Verdict(v.item_id, v.attribute, v.annotator + "@example.org", v.round, v.value)
        for v in judged.catalog.verdicts("round-1"))
    judged.catalog.add_verdicts(Verdict(i, "water", "carol@example.org", "bird-round", "spurious")
                                for i in items["bird"])
    judged.catalog.add_verdicts(Verdict(i, "grass", "carol@example.org", "grass-round", "spurious")
                                for i in items["dog"])
    runs = {}
    for name, models, labels in (("fed", {"clip-vit-b-32": "ViT-B-32@random"}, ("dog", "cat")),
                                 ("birds-only", {"owlv2": "v2"}, ("bird",))):
        with judged.runs.track("propose", name, {"proposer": name}) as run:
            judged.runs.set_models(run.run_id, models)
            judged.catalog.add_evidence(Evidence(i, "water", name, run.run_id, EvidenceRole.CANDIDATE, None, 0.5)
                                        for label in labels for i in items[label])
        runs[name] = run.run_id
    figures = {"krippendorff_alpha": 0.9, "alpha_attribute:water": 0.812, "alpha_attribute:grass": 0.111,
               "gold_accuracy:ann@example.org": 0.75}
    judged.tables.write("round-figures", pl.DataFrame({"round": ["round-1"], "run_id": ["x"],
                                                       "figures": [json.dumps(figures)]}), part="x")
    analyze_cues(judged, use_verdicts=True)  # pictures of dogs, cats and birds
    result = build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    n = sum(result.release.counts().values())  # the images in the release, of the 100 judged
    fed = json.loads((tmp_path / "release" / "release.json").read_text())["fed_by"]
    assert fed["classes"] == ["cat", "dog"] and fed["rounds"] == ["round-1"] and fed["attributes"] == ["water"]
    assert fed["proposal_runs"] == [runs["fed"]]
    publish(judged, tmp_path / "release", f"folder:{tmp_path / 'hub'}")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert runs["fed"] in card and runs["birds-only"] not in card and "owlv2" not in card
    assert "**random (untrained)**" in card and "came from models with random, untrained weights" in card
    rounds = re.findall(r"^\| ([\w-]+) \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| (.*?) \| (.*?) \|$", card, re.M)
    ann = judged.pseudonym("ann@example.org")
    # agreement on the release's own images (the round's figures, 0.9 and 0.812, are of all its images);
    # gold accuracy is the round's
    released = set(pl.concat([table.lazy().select("item_id") for table in result.release.tables.values()])
                   .collect()["item_id"])
    ratings, _ = round_ratings(v for v in judged.catalog.verdicts("round-1") if v.item_id in released)
    alpha = krippendorff_alpha(ratings)
    water = krippendorff_alpha({unit: r for unit, r in ratings.items() if unit[1] == "water"})
    assert 0 < len(released) < 100 and alpha not in (0.9, 0.812)
    assert rounds == [("round-1", "4", str(n), str(4 * n), f"{alpha:.3f}", f"water: {water:.3f}", f"{ann}: 0.75")]
    pictures = sorted(p.name for p in (tmp_path / "hub" / "images").iterdir())
    assert pictures and all(p.startswith(("strip-dog-", "strip-cat-")) for p in pictures), pictures
    assert re.fullmatch(r"annotator-[0-9a-f]{8}", ann) and ann == judged.pseudonym("ann@example.org")
    email = re.compile(rb"[\w.+-]+@[\w-]+\.[\w.]+")
    for path in [*(tmp_path / "hub").rglob("*"), *(tmp_path / "release").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not email.search(data), path
            if path.suffix in (".md", ".csv") or path.name == "release.json":
                assert b"@" not in data, path  # croissant.json is JSON-LD: "@context", "@type"


def test_the_cards_evaluation_command_scores_a_release_without_test_rows(judged: Workspace, tmp_path: Path) -> None:
    """A release with only training rows: the card's command names the split it scores and runs as
    written (``curate evaluate groups`` scores ``test`` rows by default: there are none)."""
    import re
    import shlex

    import polars as pl
    from typer.testing import CliRunner

    from curate.cli import app

    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat"), train_correlation=0.5,
                               min_group_size=0, val_per_group=0, test_per_group=0), tmp_path / "release")
    publish(judged, tmp_path / "release", f"folder:{tmp_path / 'hub'}")
    loaded = datasets.load_dataset(str(tmp_path / "hub"))
    assert list(loaded) == ["train"]
    card = (tmp_path / "hub" / "README.md").read_text()
    command = re.search(r"^curate evaluate groups predictions\.parquet.*$", card, re.M)
    assert command and "--set eval_split=train" in command.group(0) and "has no `test` rows" in card
    rows = loaded["train"].remove_columns("image").to_polars()
    rows.with_columns(pred=pl.col("y")).write_parquet(tmp_path / "predictions.parquet")
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(tmp_path / "eval-ws")]).exit_code == 0
    arguments = shlex.split(command.group(0))[1:]
    arguments[arguments.index("predictions.parquet")] = str(tmp_path / "predictions.parquet")
    arguments[arguments.index("eval-ws")] = str(tmp_path / "eval-ws")
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "acc_wg" in result.output


def test_a_card_says_when_simulated_annotators_answered(judged: Workspace, tmp_path: Path) -> None:
    from curate.verdicts import SIMULATED_KEY

    judged.catalog.add_verdicts(Verdict(v.item_id, v.attribute, v.annotator, v.round, v.value,
                                        extra={SIMULATED_KEY: True})
                                for v in judged.catalog.verdicts("round-1") if v.annotator == "bob")
    result = build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    publish(judged, tmp_path / "release", f"folder:{tmp_path / 'hub'}")
    card = " ".join((tmp_path / "hub" / "README.md").read_text().split())
    n = sum(result.release.counts().values())  # each image: one verdict by ann, one simulated by bob
    assert (f"Simulated annotators answered round round-1** ({n} of the {2 * n} verdicts on this release's "
            "images)") in card and "do not use this release to measure a model" in card
