from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from conftest import distinct_image, encode
from PIL import Image

from curate.ingest import HuggingFaceSource, SourceError, ingest
from curate.workspace import Workspace

FEATURES = datasets.Features({
    "image": datasets.Image(),
    "label": datasets.ClassLabel(names=["cat", "dog"]),
    "photographer": datasets.Value("string"),
})


def _split(seeds: list[int], labels: list[int]) -> datasets.Dataset:
    images = [distinct_image(seed) for seed in seeds]
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels, "photographer": [f"p{s}" for s in seeds]}, features=FEATURES)


@pytest.fixture
def saved_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": _split([1, 2, 3], [0, 1, -1]), "test": _split([4, 1], [1, 0])}).save_to_disk(
        str(folder))
    return folder


def test_saved_dataset_dict_ingests_every_split_with_label_names(workspace: Workspace, saved_dataset: Path) -> None:
    result = ingest(workspace, HuggingFaceSource(str(saved_dataset)), progress=False)
    assert result.counts == {"new_items": 4, "duplicates": 1}
    refs = {r.locator: r for r in workspace.catalog.references()}
    assert set(refs) == {"train/0", "train/1", "train/2", "test/0", "test/1"}
    assert (refs["train/1"].label, refs["train/1"].split) == ("dog", "train")
    assert refs["train/2"].label is None  # ClassLabel -1 means missing
    assert refs["test/0"].metadata == {"photographer": "p4"}
    for item in workspace.catalog.items():
        assert item.uri.startswith("blob:") and workspace.resolve_uri(item.uri).suffix == ".png"
    assert ingest(workspace, HuggingFaceSource(str(saved_dataset)), progress=False).counts == {"unchanged": 5}


def test_split_selection_and_missing_columns(workspace: Workspace, saved_dataset: Path) -> None:
    result = ingest(workspace, HuggingFaceSource(str(saved_dataset), splits=("test",)), progress=False)
    assert result.counts == {"new_items": 2}
    with pytest.raises(SourceError, match="no split"):
        HuggingFaceSource(str(saved_dataset), splits=("validation",))
    with pytest.raises(SourceError, match="label_column='species'"):
        HuggingFaceSource(str(saved_dataset), label_column="species")


def test_hub_style_parquet_folder_with_a_broken_image(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "repo"
    (folder / "data").mkdir(parents=True)
    broken = {"bytes": encode(distinct_image(8), "JPEG")[:40], "path": None}
    good = {"bytes": encode(distinct_image(9), "WEBP"), "path": None}
    table = datasets.Dataset.from_dict({"image": [good, broken], "label": [1, 0]}, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}))
    table.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    result = ingest(workspace, HuggingFaceSource(str(folder)), progress=False)
    assert result.counts["new_items"] == 1 and result.counts["quarantined"] == 1
    assert workspace.catalog.quarantined()[0].locator == "train/1"
    assert next(workspace.catalog.items()).format == "WEBP"


def test_plain_image_column_without_image_feature(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    datasets.Dataset.from_dict({"img": [encode(Image.new("L", (3, 3)), "PNG")], "y": ["zebra"]}).save_to_disk(
        str(folder))
    ingest(workspace, HuggingFaceSource(str(folder), image_column="img", label_column="y"), progress=False)
    assert next(workspace.catalog.items()).label == "zebra"


def test_an_uncached_hub_id_fails_at_once_and_says_what_to_do(network_attempts: list[object]) -> None:
    with pytest.raises(SourceError, match="hf download"):
        HuggingFaceSource("someone/not-cached-anywhere")
    assert network_attempts == []  # no download attempt, not even one that failed
