"""Publishing a release as a Hub-layout folder that the real `datasets` loader reads back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
import pytest
from test_build_groups import POOLS, judged  # noqa: F401  (fixture)
from test_build_mmspubench import verified  # noqa: F401  (fixture)

from curate.build import build, make_builder
from curate.publish import PublishError, publish
from curate.publish.folder import write_table
from curate.workspace import Workspace


def test_a_groups_release_loads_back_with_its_features_and_counts(judged: Workspace, tmp_path: Path) -> None:  # noqa: F811
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
    assert sum(POOLS.values()) >= sum(release.release.counts().values())
    from curate.publish.croissant import validate

    validate(tmp_path / "hub" / "croissant.json")  # offline, with mlcroissant
    document = json.loads((tmp_path / "hub" / "croissant.json").read_text())
    fields = {f["name"]: f for f in document["recordSet"][0]["field"]}
    assert fields["image"]["dataType"] == "sc:ImageObject" and set(fields) >= {"y", "a", "g"}
    assert document["license"] == "cc0-1.0" and str(tmp_path) not in json.dumps(document)
    again = publish(judged, tmp_path / "release", f"folder:{tmp_path / 'hub'}", license="CC0-1.0")
    assert again.changed == [] and again.run.run_id == result.run.run_id  # unchanged: nothing rewritten


def test_mcq_items_keep_their_types_as_class_labels(verified: Workspace, tmp_path: Path) -> None:  # noqa: F811
    build(verified, make_builder("mmspubench", verdict_round="r1", source_dataset="bottles"), tmp_path / "r")
    publish(verified, tmp_path / "r", f"folder:{tmp_path / 'hub'}")
    loaded = datasets.load_dataset(str(tmp_path / "hub"), split="test")
    names = loaded.features["spurious_correlation_type"].feature.names
    assert "Co-occurring Objects" in names and loaded.num_rows == 8
    assert all(len(row["choices"]) == 4 for row in loaded)


def test_dry_run_writes_nothing_and_bad_targets_are_refused(judged: Workspace, tmp_path: Path) -> None:  # noqa: F811
    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    publish(judged, tmp_path / "release", f"folder:{tmp_path / 'dry'}", dry_run=True)
    assert not (tmp_path / "dry").exists()
    with pytest.raises(PublishError, match="folder:PATH"):
        publish(judged, tmp_path / "release", "s3://bucket")
    with pytest.raises(FileNotFoundError, match="not a release folder"):
        publish(judged, tmp_path, f"folder:{tmp_path / 'x'}")


def test_shards_are_size_bounded(judged: Workspace, tmp_path: Path) -> None:  # noqa: F811
    release = make_builder("groups", attribute="water", classes=("dog", "cat")).build(judged)
    from curate.publish.folder import features_for

    table = release.tables["train"]
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


def test_hub_upload_is_private_tagged_merged_and_idempotent(judged: Workspace, tmp_path: Path,  # noqa: F811
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


def test_hub_publishing_needs_a_token(judged: Workspace, tmp_path: Path, hub: Any,  # noqa: F811
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")
    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    with pytest.raises(PublishError, match="set HF_TOKEN"):
        publish(judged, tmp_path / "release", "hub:org/x", endpoint=hub.endpoint)
    with pytest.raises(PublishError, match="ORG/NAME"):
        publish(judged, tmp_path / "release", "hub:just-a-name")


@pytest.mark.skipif(not os.environ.get("CURATE_HF_LIVE_TOKEN"), reason="opt-in: set CURATE_HF_LIVE_TOKEN and "
                    "CURATE_HF_LIVE_REPO to publish to the real Hub")
def test_live_hub(judged: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
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
    result = CliRunner().invoke(app, ["publish", str(tmp_path / "focus"), "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    published = tmp_path / "focus-hub"
    assert datasets.load_dataset(str(published), "default", split="test").num_rows == 1
    assert datasets.load_dataset(str(published), "ranking", split="test")["flip_to_rate"] == [0.25]
    card = (published / "README.md").read_text()
    assert "| 2 | 1 |" in card  # night and water are uncommon for cats: partition 2
    assert 'load_dataset("focus-hub", "ranking")' in card


def test_a_card_that_would_leak_a_path_or_token_stops_everything(judged: Workspace, tmp_path: Path,  # noqa: F811
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.publish as publishing

    build(judged, make_builder("groups", attribute="water", classes=("dog", "cat")), tmp_path / "release")
    for leak, message in ((str(judged.root), "local path"), ("token hf_abcdefghijklmnop", "token or key")):
        monkeypatch.setattr(publishing, "render_card", lambda *args, leak=leak: f"made in {leak}")
        with pytest.raises(PublishError, match=message):
            publish(judged, tmp_path / "release", f"folder:{tmp_path / 'leaky'}")
        assert not (tmp_path / "leaky").exists()  # nothing was written
