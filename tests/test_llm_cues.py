"""The SpurLens procedure end to end against the stand-in LLM server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import distinct_image
from llm_standin import StandIn, standin

from curate.ingest import FolderSource, ingest
from curate.propose import make_proposer, propose
from curate.propose.llm_common import FAILURES_TABLE
from curate.propose.llm_cues import clean_cues
from curate.records import RunStatus
from curate.workspace import Workspace

LISTS = {
    "appear in images": ["Leashes", "Tennis Balls", "dog bed", "grass", "collar", "human hands"],
    "background elements": ["grass", "sofa", "park", "Dog House"],
    "appear next to": ["owner", "bowl"],
    "associated with": ["bone", "leash", "fur"],
}
DROPPING_ANSWERS = {("exist without", "owner"): "no", ("have a collar", "collar"): "yes",
                    ("part of", "fur"): "yes", ("bowls have", "bowl"): "yes"}
TYPES = {"grass": "background", "sofa": "Background", "park": "Background", "leash": "Co-occurring Objects",
         "bone": "co-occurring objects", "human hand": "Relative Size", "tennis ball": "Material"}


def spurlens_brain(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body["messages"][1]["content"]
    if prompt.startswith("List"):
        found = next(items for phrase, items in LISTS.items() if phrase in prompt)
        label = re.search(r"of a (\w+)|to a (\w+)|with a (\w+)", prompt)
        return {"items": found if label and "dog" in label.group(0) else ["ball", "window"]}
    if "Answer as JSON with the type" in prompt:
        cue = re.search(r'the cue "([^"]+)"', prompt).group(1)
        return {"type": TYPES.get(cue, "Background")}
    for (phrase, cue), answer in DROPPING_ANSWERS.items():
        if phrase in prompt and cue in prompt:
            return {"answer": answer}
    default_yes = prompt.startswith("Can a")
    return {"answer": "Yes." if default_yes else "No"}


@pytest.fixture
def server() -> Iterator[StandIn]:
    with standin(spurlens_brain) as running:
        yield running


@pytest.fixture
def pets(workspace: Workspace, tmp_path: Path) -> Workspace:
    for label, seed in (("dog", 1), ("cat", 2)):
        (tmp_path / "pets" / label).mkdir(parents=True)
        distinct_image(seed).save(tmp_path / "pets" / label / "a.png")
    ingest(workspace, FolderSource(tmp_path / "pets"), progress=False)
    return workspace


def _proposer(server: StandIn, **options: Any) -> Any:
    return make_proposer("llm-cues", base_url=server.base_url, **options)


def test_the_spurlens_procedure_lists_filters_and_types_cues(pets: Workspace, server: StandIn) -> None:
    result = propose(pets, _proposer(server), ["dog"], progress=False)
    cues = {c.attribute: c for c in pets.catalog.cues(class_label="dog")}
    assert set(cues) == {"leash", "tennis ball", "grass", "human hand", "sofa", "park", "bone"}
    assert {a: c.taxonomy_type for a, c in cues.items()} == {
        "leash": "Co-occurring Objects", "bone": "Co-occurring Objects", "grass": "Background",
        "sofa": "Background", "park": "Background", "human hand": "Relative Size", "tennis ball": None}
    assert "not one of the nine" in cues["tennis ball"].extra["type_error"]  # refused, not stored silently
    assert cues["grass"].extra["prompts"] == ["list_objects", "list_background"]
    assert cues["leash"].extra["filters"] == {"filter_exists_without": "yes", "filter_all_class_have": "no",
                                              "filter_part_of": "no", "filter_all_cue_have": "no"}
    counts = result.counts
    assert counts["cues"] == 7 and counts["cues_filtered_out"] == 4 and counts["untyped_cues"] == 1
    # 4 lists + 11 candidates x 4 filters + 7 typings, plus 2 re-asks of the off-taxonomy type
    assert counts["llm_calls"] == 4 + 44 + 7 + 2 == len(server.requests)
    assert counts["llm_prompt_tokens"] > 0 and counts["llm_cost_microusd"] > 0
    failures = pets.tables.read(FAILURES_TABLE)
    assert failures.select("class_label", "step", "cue").rows() == [("dog", "type", "tennis ball")]
    assert pets.runs.get(result.run.run_id).models["gpt-4o-mini"].endswith(
        f"prompts={cues['leash'].extra['prompt_version']}")


def test_a_rerun_makes_zero_calls(pets: Workspace, server: StandIn) -> None:
    propose(pets, _proposer(server), ["dog"], progress=False)
    asked = len(server.requests)
    again = propose(pets, _proposer(server), ["dog"], progress=False)
    assert again.counts == {} and len(server.requests) == asked
    # a different run (cat added) asks nothing about dogs again, not even the failed typing:
    # every raw answer, valid or not, is replayed from the cache
    both = propose(pets, _proposer(server), progress=False)
    dog_prompts = [r for r in server.requests[asked:] if "dog" in r["messages"][1]["content"]]
    assert dog_prompts == [] and both.counts["llm_cache_hits"] > 0
    assert len(pets.catalog.cues(class_label="dog")) == 7 * 2  # the same cues, once per run


def test_flaky_servers_do_not_stop_the_run(pets: Workspace, server: StandIn) -> None:
    server.faults.extend([("429", 0), ("malformed",), ("500",), ("refusal",)])
    result = propose(pets, _proposer(server, max_retries=3), ["dog"], progress=False)
    assert result.run.status == RunStatus.COMPLETED
    assert len(pets.catalog.cues(class_label="dog")) == 7
    assert result.counts["llm_retries"] == 2
    assert result.counts["llm_malformed"] == 1 + 3  # the injected one, and "Material" asked three times
    assert result.counts["llm_refusals"] == 1


def test_the_api_key_never_reaches_the_workspace(pets: Workspace, server: StandIn,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-secret-do-not-store-4242"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    propose(pets, _proposer(server), ["dog"], progress=False)
    pets.close()
    for path in pets.root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_clean_cues_normalises_and_drops_the_class_name() -> None:
    raw = {"list_objects": ["1. Red Balls", "- puppies", "Golden leash", "retriever toy", ""]}
    assert clean_cues("golden retriever", raw) == {"red ball": ["list_objects"], "puppy": ["list_objects"]}


def vlm_brain(body: dict[str, Any]) -> dict[str, Any]:
    parts = body["messages"][1]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/jpeg;base64,")
    if "shows a cat" in parts[0]["text"]:  # cats get an off-taxonomy type: asked again, then recorded
        return {"core_attributes": ["whiskers"], "spurious_attributes": [{"attribute": "wooden floor",
                                                                          "type": "Material"}]}
    return {"core_attributes": ["floppy ears", "Snout"],
            "spurious_attributes": [{"attribute": "Green grass", "type": "background"},
                                    {"attribute": "red ball", "type": "Co-occurring Objects"}]}


def test_vlm_attributes_per_image(pets: Workspace) -> None:
    with standin(vlm_brain) as server:
        options = {"base_url": server.base_url, "image_max_side": 64}
        result = propose(pets, make_proposer("vlm-attributes", **options), progress=False)
        asked = len(server.requests)
        assert asked == 1 + 3  # the dog once, the cat three times
        rerun = propose(pets, make_proposer("vlm-attributes", **options), progress=False)
        assert len(server.requests) == asked and rerun.counts.get("llm_calls", 0) == 0
    rows = {(r.attribute, r.role, r.taxonomy_type) for r in pets.catalog.evidence(source="vlm-attributes")}
    assert rows == {("floppy ears", "core", None), ("snout", "core", None),
                    ("green grass", "spurious", "Background"), ("red ball", "spurious", "Co-occurring Objects")}
    assert result.counts["items"] == 1 and result.counts["llm_failures_recorded"] == 1
    failures = pets.tables.read(FAILURES_TABLE)
    assert failures["class_label"].to_list() == ["cat"] and "nine" in failures["error"][0]
