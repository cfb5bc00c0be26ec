"""The context-shift builder (MetaCoCo style): contexts from metadata or verdicts, few-shot episodes
under each policy, the counts, our CLIP context-shift measure, the card and loading with datasets."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
from conftest import distinct_image

from curate.analyze.context_shift import context_shift, drop_interval
from curate.builders import BuildError, build, make_builder
from curate.builders.context_shift import Disjoint, Shifted
from curate.evaluate import EvaluateError, evaluate
from curate.ingest import FolderSource, ManifestSource, ingest
from curate.publish import publish
from curate.publish.folder import release_datasets
from curate.records import Verdict
from curate.workspace import Workspace

# (concept, context): images. Every concept has a common context and rarer ones; "fox" has one context only.
POOL = {("dog", "grass"): 8, ("dog", "snow"): 3, ("dog", "beach"): 2, ("dog", "sofa"): 2,
        ("cat", "sofa"): 8, ("cat", "grass"): 4, ("cat", "snow"): 3,
        ("cow", "grass"): 9, ("cow", "beach"): 3, ("cow", "street"): 3,
        ("fox", "snow"): 6}


@pytest.fixture
def contexts(workspace: Workspace, tmp_path: Path) -> Workspace:
    """The pool, ingested from a manifest with a ``context`` column."""
    lines = ["path,label,context"]
    seed = 0
    for (concept, context), count in POOL.items():
        for _ in range(count):
            seed += 1
            distinct_image(4000 + seed, (10, 10)).save(tmp_path / f"{seed}.png")
            lines.append(f"{seed}.png,{concept},{context}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    ingest(workspace, ManifestSource(tmp_path / "manifest.csv"), progress=False)
    return workspace


def episodes_of(workspace: Workspace, **options: object) -> pl.DataFrame:
    options = {"context_column": "context", "classes": ("dog", "cat", "cow"), "ways": 2, "shots": 2, "queries": 3,
               "episodes": 20, **options}
    return make_builder("context-shift", **options).build(workspace).tables["episodes"]


def shared_contexts(episodes: pl.DataFrame) -> int:
    """(episode, concept) pairs whose support and query share a context."""
    sides = episodes.group_by(["episode", "concept", "role"]).agg(pl.col("context").unique())
    support = sides.filter(pl.col("role") == "support").drop("role").rename({"context": "support"})
    query = sides.filter(pl.col("role") == "query").drop("role").rename({"context": "query"})
    both = support.join(query, on=["episode", "concept"])
    return sum(bool(set(s) & set(q)) for s, q in both.select("support", "query").iter_rows())


@pytest.mark.parametrize("policy", ["disjoint", "shifted"])
def test_episodes_never_share_a_context_between_support_and_query(contexts: Workspace, policy: str) -> None:
    episodes = episodes_of(contexts, policy=policy)
    assert shared_contexts(episodes) == 0
    shape = episodes.group_by(["episode", "role"]).len().sort("episode", "role")
    assert set(shape.filter(pl.col("role") == "support")["len"]) == {2 * 2}  # 2-way 2-shot
    assert set(shape.filter(pl.col("role") == "query")["len"]) == {2 * 3}
    per_way = episodes.group_by(["episode", "way"]).agg(pl.col("concept").n_unique())
    assert per_way["concept"].max() == 1 and episodes["episode"].n_unique() == 20
    assert episodes.group_by(["episode", "item_id"]).len()["len"].max() == 1  # no image twice in an episode


def test_the_checker_sees_a_shared_context() -> None:
    rows = [{"episode": 0, "concept": "dog", "role": role, "context": context}
            for role, context in (("support", "grass"), ("query", "grass"), ("query", "snow"))]
    assert shared_contexts(pl.DataFrame(rows)) == 1


def test_shifted_queries_are_each_concepts_rarest_contexts(contexts: Workspace) -> None:
    episodes = episodes_of(contexts, policy="shifted")
    queried = episodes.filter(pl.col("role") == "query").group_by("concept").agg(pl.col("context").unique().sort())
    # dog: sofa 2 + beach 2 hold the 3 queries; cat: snow 3; cow: beach 3 (tie with street, by name)
    assert dict(queried.iter_rows()) == {"dog": ["beach", "sofa"], "cat": ["snow"], "cow": ["beach"]}
    supported = episodes.filter(pl.col("role") == "support").group_by("concept").agg(pl.col("context").unique())
    assert "grass" in dict(supported.iter_rows())["dog"]


def test_disjoint_redraws_the_split_and_a_seed_reproduces_it(contexts: Workspace) -> None:
    first, again, other = (episodes_of(contexts, seed=s) for s in (3, 3, 4))
    assert first.equals(again)
    assert not first.equals(other)
    dog_queries = first.filter((pl.col("role") == "query") & (pl.col("concept") == "dog"))
    splits = {tuple(sorted(set(g["context"]))) for _, g in dog_queries.group_by("episode")}
    assert len(splits) > 1  # not one fixed split


def test_disjoint_finds_the_one_split_that_works() -> None:
    policy = Disjoint("dog", {"a": 3, "b": 3, "c": 4}, shots=6, queries=4)  # only {a, b} | {c}
    for seed in range(20):
        assert policy.draw(np.random.default_rng(seed)) == (["a", "b"], ["c"])


def test_impossible_requests_are_clear_errors(contexts: Workspace) -> None:
    with pytest.raises(BuildError, match=r"concept 'fox' has 1 context \(snow\); the disjoint policy needs .* at "
                                         r"least 2; skip_unfit=true leaves such concepts out"):
        make_builder("context-shift", context_column="context", ways=2, shots=1, queries=1).build(contexts)
    with pytest.raises(BuildError, match="concept 'cow' cannot give 10 support and 5 query images under the disjoint"):
        Disjoint("cow", {"grass": 9, "beach": 3, "street": 3}, shots=10, queries=5)
    with pytest.raises(BuildError, match="contexts left for support after the rarest"):
        Shifted("cat", {"sofa": 1, "grass": 4}, shots=2, queries=3)
    with pytest.raises(BuildError, match="counts of at least 1 and bootstrap at least 0; got 2, 0, 3"):
        episodes_of(contexts, shots=0)
    with pytest.raises(BuildError, match="unknown episode policy 'random'; known: disjoint, shifted"):
        episodes_of(contexts, policy="random")
    with pytest.raises(BuildError, match="4-way episodes need 4 concepts that fit the disjoint policy; 3 do"):
        make_builder("context-shift", context_column="context", ways=4, shots=1, queries=1,
                     skip_unfit=True).build(contexts)
    with pytest.raises(BuildError, match="no item has a 'place' metadata column"):
        make_builder("context-shift", context_column="place").build(contexts)
    with pytest.raises(BuildError, match="give either context_column .* or verdict_round / context_attributes"):
        make_builder("context-shift", context_column="context", context_attributes=("snow",)).build(contexts)


def test_counts_match_the_tables_and_unfit_concepts_can_be_left_out(contexts: Workspace) -> None:
    release = make_builder("context-shift", context_column="context", ways=3, shots=1, queries=2, episodes=7,
                           skip_unfit=True).build(contexts)
    images, episodes, table = (release.tables[n] for n in ("images", "episodes", "contexts"))
    assert set(release.metadata["concepts_left_out"]) == {"fox"}
    expected = {(c, x): n for (c, x), n in POOL.items() if c != "fox"}
    assert {(c, x): n for c, x, n in table.select("concept", "context", "images").iter_rows()} == expected
    assert {(c, x): n for c, xs in release.metadata["context_counts"].items() for x, n in xs.items()} == expected
    assert images.height == sum(expected.values())
    used = episodes.group_by(["concept", "context", "role"]).len()
    for role in ("support", "query"):
        mine = {(c, x): n for c, x, _, n in used.filter(pl.col("role") == role).iter_rows()}
        assert {(c, x): n for c, x, n in table.select("concept", "context", f"as_{role}").iter_rows() if n} == mine
    assert table["as_support"].sum() == 7 * 3 * 1 and table["as_query"].sum() == 7 * 3 * 2


def test_contexts_from_verdicts_leave_out_images_with_none_or_several(workspace: Workspace, tmp_path: Path) -> None:
    for index in range(8):
        folder = tmp_path / "img" / ("dog" if index < 4 else "cat")
        folder.mkdir(parents=True, exist_ok=True)
        distinct_image(5000 + index, (8, 8)).save(folder / f"{index}.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    ids = {int(ref.locator.split("/")[1].split(".")[0]): ref.item_id for ref in workspace.catalog.references()}
    places = {0: "grass", 1: "grass", 2: "snow", 3: "snow", 4: "sofa", 5: "sofa", 6: "grass"}  # 7: no context
    rows = [Verdict(ids[i], place, person, "ctx-1", "spurious") for i, place in places.items() for person in ("a", "b")]
    rows += [Verdict(ids[6], "sofa", person, "ctx-1", "spurious") for person in ("a", "b")]  # 6: two contexts
    rows += [Verdict(ids[5], "snow", person, "ctx-1", "not present") for person in ("a", "b")]  # absent: no context
    rows += [Verdict(ids[0], "cap", person, "ctx-1", "core") for person in ("a", "b")]  # not a context attribute
    workspace.catalog.add_verdicts(rows)
    release = make_builder("context-shift", verdict_round="ctx-1", context_attributes=("grass", "snow", "sofa"),
                           ways=1, shots=1, queries=1, episodes=4, skip_unfit=True).build(workspace)
    images = release.tables["images"]
    assert dict(zip(images["item_id"], images["context"], strict=True)) == {ids[i]: places[i] for i in range(4)}
    assert release.metadata["concepts_left_out"].keys() == {"cat"}  # only sofa is left for cat
    assert (release.metadata["labels_from"]["left_out_several_contexts"],
            release.metadata["labels_from"]["left_out_no_context"]) == (1, 1)
    workspace.catalog.add_verdicts(Verdict(ids[0], place, "a", "ctx-2", "spurious") for place in ("grass", "snow"))
    with pytest.raises(BuildError, match=r"no image has exactly one context \(1 have several, 7 none\)"):
        make_builder("context-shift", verdict_round="ctx-2").build(workspace)


def test_our_measure_is_the_drop_from_common_to_query_contexts() -> None:
    images = pl.DataFrame({"item_id": [f"i{n}" for n in range(6)], "concept": ["dog"] * 6,
                           "context": ["grass", "grass", "grass", "snow", "sofa", "sofa"],
                           "clip_correct": [True, True, False, False, True, None],
                           "clip_similarity": [0.5, 0.3, 0.4, 0.1, 0.2, None]})
    episodes = pl.DataFrame({"item_id": ["i3", "i4", "i5", "i0"], "concept": ["dog"] * 4,
                             "role": ["query", "query", "query", "support"]})
    row = context_shift(images, episodes, common_contexts=1, bootstrap=200, seed=0).row(0, named=True)
    assert row["common_contexts"] == ["grass"] and row["query_contexts"] == ["snow", "sofa"]
    assert (row["n_common"], row["n_query"]) == (3, 2)  # i5 has no score
    assert row["acc_drop"] == pytest.approx(2 / 3 - 1 / 2)
    assert row["sim_drop"] == pytest.approx(0.4 - 0.15)
    assert row["sim_drop_low"] <= row["sim_drop"] <= row["sim_drop_high"]
    assert drop_interval(np.array([1.0, 0.0]), np.array([0.0]), 0, [0]) == (0.5, 0.5, 0.5)


def test_the_release_loads_with_datasets_and_its_card_tells_the_measure(contexts: Workspace, tmp_path: Path,
                                                                        tiny_clip: str) -> None:
    result = build(contexts, make_builder("context-shift", context_column="context", policy="shifted", ways=2,
                                          shots=1, queries=2, episodes=5, skip_unfit=True, measure_model=tiny_clip,
                                          bootstrap=50), tmp_path / "release")
    images, shift = result.release.tables["images"], result.release.tables["shift"]
    assert images["clip_similarity"].null_count() == 0 and set(images["clip_prediction"]) <= {"cat", "cow", "dog"}
    recomputed = context_shift(images, result.release.tables["episodes"], bootstrap=50)
    assert shift.equals(recomputed)
    cow = shift.filter(pl.col("concept") == "cow").row(0, named=True)
    assert cow["common_contexts"] == ["grass"] and cow["query_contexts"] == ["beach"]
    listed = json.loads((result.path / "episodes.json").read_text())
    first = result.release.tables["episodes"].filter(pl.col("episode") == 0)
    assert len(listed) == 5 and listed[0]["support"] == [
        list(row) for row in first.filter(pl.col("role") == "support").select("file_name", "way").rows()]
    assert listed[0]["concepts"] == first.sort("way")["concept"].unique(maintain_order=True).to_list()
    assert all((result.path / name).is_file() for episode in listed for name, _ in episode["query"])
    in_memory = release_datasets(contexts, result.path)
    assert set(in_memory) == {"images", "episodes", "contexts", "shift"}
    assert in_memory["images"].features["y"].names == ["cat", "cow", "dog"]
    assert in_memory["images"][0]["image"].size == (10, 10)
    publish(contexts, result.path, f"folder:{tmp_path / 'hub'}", license="CC0-1.0")
    loaded = datasets.load_dataset(str(tmp_path / "hub"), "images")
    assert loaded["test"].num_rows == images.height and loaded["test"][0]["image"].size == (10, 10)
    episodes = datasets.load_dataset(str(tmp_path / "hub"), "episodes")["test"]
    assert episodes.num_rows == 5 * 2 * (1 + 2) and set(episodes["role"]) == {"support", "query"}
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "Policy `shifted`: Query contexts are the concept's least frequent ones" in card
    assert "| cow | street | 3 |" in card and "**ours, not MetaCoCo's**" in card
    assert f"Model: {tiny_clip} (" in card and "`fox`: concept 'fox' has 1 context" in card
    assert "curate evaluate few-shot predictions.parquet" in card and "Warning: the measure's model has random" in card
    assert "nothing to score" not in card
    assert f"| cow | grass | beach | {cow['n_common']} / {cow['n_query']} | " in card  # the measure, per concept


def test_a_few_shot_learner_is_scored_per_episode(contexts: Workspace) -> None:
    episodes = episodes_of(contexts, episodes=4)
    # right on every query of episodes 0 and 1, wrong on every query of 2 and 3; support rows have no prediction
    predicted = episodes.with_columns(pl.when(pl.col("role") == "support").then(None)
                                      .when(pl.col("episode") < 2).then(pl.col("way"))
                                      .otherwise(1 - pl.col("way")).alias("pred"))
    metrics = evaluate(contexts, "few-shot", predicted).metrics
    assert (metrics["acc_episode_mean"], metrics["acc_episode_worst"], metrics["count_episodes"]) == (0.5, 0.0, 4)
    assert metrics["count"] == 4 * 2 * 3 and metrics["missing_predictions"] == 0
    half = 1.959964 * np.std([1, 1, 0, 0], ddof=1) / 2
    assert (metrics["ci_low_acc_episode_mean"], metrics["ci_high_acc_episode_mean"]) == pytest.approx(
        (0.5 - half, 0.5 + half))
    first_query = predicted["role"].to_list().index("query")
    one_missing = predicted.with_row_index().with_columns(
        pl.when(pl.col("index") == first_query).then(None).otherwise(pl.col("pred")).alias("pred"))
    with pytest.raises(EvaluateError, match="1 of 24 rows have no pred"):
        evaluate(contexts, "few-shot", one_missing)
    assert evaluate(contexts, "few-shot", one_missing, missing="wrong").metrics["missing_predictions"] == 1
