"""The notebook front door: the whole road through ``curate.open`` with one import."""

from __future__ import annotations

from pathlib import Path

import datasets
import polars as pl
import pytest
from conftest import distinct_image

import curate
from curate.records import Verdict


def test_a_notebook_travels_the_road_with_one_import(tmp_path: Path, tiny_clip: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from curate import progress

    def no_bars(*args: object, **kwargs: object) -> None:
        raise AssertionError("a progress bar was drawn although progress=False")

    monkeypatch.setattr(progress, "Progress", no_bars)
    for index in range(12):
        label = "dog" if index < 6 else "cat"
        (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
        distinct_image(300 + index, (24, 24)).save(tmp_path / "images" / label / f"{index}.png")
    curate.init(tmp_path / "ws")
    project = curate.open(tmp_path / "ws", progress=False)
    assert project.ingest("folder", tmp_path / "images").counts["new_items"] == 12
    project.propose("priors", types=("Background",))
    project.propose("clip", model=tiny_clip)
    items = project.items()
    assert items.height == 12 and sorted(items["label"].unique().to_list()) == ["cat", "dog"]
    evidence = project.evidence(source="clip")
    assert evidence.height > 0 and set(evidence["item_id"]) == set(items["item_id"])
    assert evidence.schema["score"] == pl.Float64 and set(evidence["role"]) == {"candidate"}
    assert project.analyze(source="clip").stats.height > 0

    water = {item_id: index % 2 for index, item_id in enumerate(sorted(items["item_id"]))}
    project.workspace.catalog.add_verdicts(
        Verdict(item_id, "water", person, "round-1", "spurious" if w else "not present")
        for item_id, w in water.items() for person in ("ann", "bob"))
    decided = project.verdicts("round-1")
    assert decided.height == 12 and set(decided["annotator"]) == {"consensus"}
    assert project.verdicts("round-1", raw=True).height == 24

    built = project.build("groups", tmp_path / "release", attribute="water", train_correlation=0.5,
                          min_group_size=0, val_per_group=1, test_per_group=1)
    in_memory = project.release(built.path)
    first = in_memory[next(iter(in_memory))]
    assert first.features["y"].names == ["cat", "dog"]
    assert first[0]["image"].size == (24, 24)  # decoded, before publishing
    published = project.publish(built.path, f"folder:{tmp_path / 'hub'}")
    loaded = datasets.load_dataset(str(tmp_path / "hub"))
    assert {split: loaded[split].num_rows for split in loaded} == built.release.counts() == {
        split: in_memory[split].num_rows for split in in_memory}
    test = loaded["test"].to_polars().select("y", "a", "split").with_columns(pred=pl.col("y"))
    scored = project.evaluate("groups", test.with_columns(split=pl.lit("test")))
    assert scored.metrics["acc_wg"] == 1.0 and scored.run.config["predictions"] == "a DataFrame"
    assert published.run.status.value == "completed"
