"""The SpurLens procedure end to end against the stand-in LLM server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import distinct_image
from llm_standin import StandIn, standin
from typer.testing import CliRunner

from curate.cli import app
from curate.ingest import FolderSource, ingest
from curate.propose import make_proposer, propose
from curate.propose.llm_common import FAILURES_TABLE
from curate.propose.llm_cues import clean_cues, normalise_cue, plural
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


def _prompt(body: dict[str, Any]) -> str:
    return body["messages"][1]["content"]


def test_a_rerun_retries_exactly_what_failed_and_completes_the_run(pets: Workspace, server: StandIn) -> None:
    failing = {"background elements": ("html",), "Is a fur part of": ("500",),
               'the cue "bone"': ("no-choices",)}  # a missing list, an unanswered filter, an untyped cue
    server.faults_when.extend((lambda body, text=text: text in _prompt(body), fault) for text, fault in failing.items())
    first = propose(pets, _proposer(server, max_retries=0), ["dog"], progress=False)
    assert first.run.status == RunStatus.COMPLETED_WITH_FAILURES and first.run.error.startswith("3 requests failed")
    assert "3 requests failed" in first.summary()
    cues = {c.attribute: c for c in pets.catalog.cues(class_label="dog")}
    assert {"fur", "bone"} <= set(cues) and not {"sofa", "park"} & set(cues) and cues["bone"].taxonomy_type is None
    assert sorted(pets.tables.read(FAILURES_TABLE).filter(pl.col("retryable"))["step"]) == [
        "filter_part_of", "list_background", "type"]

    server.faults_when.clear()
    asked = len(server.requests)
    again = propose(pets, _proposer(server, max_retries=0), ["dog"], progress=False)
    assert again.run.run_id == first.run.run_id and again.run.status == RunStatus.COMPLETED
    retried = [_prompt(body) for body in server.requests[asked:]]
    # the failed list, then the filters and types of the two cues it brings, the failed filter and typing
    assert len(retried) == 1 + 2 * 4 + 2 + 1 + 1
    assert sum("background elements" in p for p in retried) == 1 and sum("Is a fur part of" in p for p in retried) == 1
    assert all(any(word in p for word in ("background", "sofa", "park", "fur", '"bone"')) for p in retried)

    repaired = {c.attribute: c for c in pets.catalog.cues(class_label="dog")}  # as a healthy run would store
    assert set(repaired) == {"leash", "tennis ball", "grass", "human hand", "sofa", "park", "bone"}
    assert repaired["bone"].taxonomy_type == "Co-occurring Objects"
    assert repaired["grass"].extra["prompts"] == ["list_objects", "list_background"]
    still_failing = pets.tables.read(FAILURES_TABLE).select("step", "cue", "retryable").rows()
    assert still_failing == [("type", "tennis ball", False)]
    assert again.counts["llm_failures_repaired"] == 3 and again.counts["cues"] == 2 - 1  # sofa, park in; fur out
    assert {k: again.run.counts[k] for k in ("cues", "cues_filtered_out", "untyped_cues")} == {
        "cues": 7, "cues_filtered_out": 4, "untyped_cues": 1}  # the counts of a healthy run

    calls = len(server.requests)
    third = propose(pets, _proposer(server, max_retries=0), ["dog"], progress=False)
    assert third.counts == {} and len(server.requests) == calls  # the tennis ball's answer is final


def test_the_api_key_never_reaches_the_workspace_or_the_terminal(pets: Workspace, server: StandIn,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "local-key-0f3a9c"  # matches no key pattern: scrubbed because it is the configured key
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    server.faults_when.append((lambda body: _prompt(body).startswith("Is a"), ("echo-auth", 500)))
    result = propose(pets, _proposer(server, max_retries=0), ["dog"], progress=False)
    errors = pets.tables.read(FAILURES_TABLE)["error"].to_list()
    assert len(errors) == 11 + 1 and sum("Bearer [secret]" in e for e in errors) == 11, errors
    assert result.run.status == RunStatus.COMPLETED_WITH_FAILURES

    server.faults_when.append((lambda body: True, ("echo-auth", 400)))  # a rejected request stops the run
    cli = CliRunner().invoke(app, ["propose", "llm-cues", "-w", str(pets.root), "--classes", "cat", "-q",
                                   "--set", f"base_url={server.base_url}"])
    assert cli.exit_code == 2 and "error:" in cli.output and "Bearer [secret]" in cli.output
    assert secret not in cli.output
    failed = next(r for r in pets.runs.list("propose") if r.status == RunStatus.FAILED)
    assert "Bearer [secret]" in (failed.error or "")
    pets.close()
    for path in pets.root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def _listing(items: list[str]) -> Any:
    def brain(body: dict[str, Any]) -> dict[str, Any]:
        prompt = _prompt(body)
        if prompt.startswith("List"):
            return {"items": items}
        if "Answer as JSON with the type" in prompt:
            return {"type": "Co-occurring Objects"}
        return {"answer": "yes" if prompt.startswith("Can a") else "no"}
    return brain


def test_cue_words_are_inflected_by_a_real_library(pets: Workspace) -> None:
    with standin(_listing(["Buses", "glasses", "Lens", "lenses", "tomatoes", "bus"])) as server:
        propose(pets, make_proposer("llm-cues", base_url=server.base_url), ["dog"], progress=False)
        prompts = " ".join(_prompt(body) for body in server.requests)
    assert {c.attribute for c in pets.catalog.cues(class_label="dog")} == {"bus", "glasses", "lens", "tomato"}
    for phrase in ("all buses have a dog", "all glasses have a dog", "all lenses have a dog",
                   "all tomatoes have a dog", "all dogs have a bus"):
        assert phrase in prompts
    for wrong in ("buss", "glassess", "lensess", "tomatoe ", "len "):
        assert wrong not in prompts


def test_cues_containing_the_class_word_are_dropped(pets: Workspace) -> None:
    with standin(_listing(["doghouse", "catnip", "hot dog", "dog bowls", "leash"])) as server:
        propose(pets, make_proposer("llm-cues", base_url=server.base_url), progress=False)
    cues = {(c.class_label, c.attribute) for c in pets.catalog.cues()}
    assert cues == {("dog", "catnip"), ("dog", "leash"), ("cat", "doghouse"), ("cat", "hot dog"),
                    ("cat", "dog bowl"), ("cat", "leash")}


def test_each_list_is_cut_to_the_items_asked_for(pets: Workspace) -> None:
    with standin(_listing([f"thing {i}" for i in range(20)])) as server:
        propose(pets, make_proposer("llm-cues", base_url=server.base_url, n_items=3), ["dog"], progress=False)
        assert all("List 3 " in _prompt(body) for body in server.requests if _prompt(body).startswith("List"))
    assert {c.attribute for c in pets.catalog.cues(class_label="dog")} == {"thing 0", "thing 1", "thing 2"}


@pytest.mark.parametrize(("word", "one", "many"), [
    ("Buses", "bus", "buses"), ("glasses", "glasses", "glasses"), ("lenses", "lens", "lenses"),
    ("lens", "lens", "lenses"), ("tomatoes", "tomato", "tomatoes"), ("knives", "knife", "knives"),
    ("people", "person", "people"), ("grass", "grass", "grasses"), ("tennis balls", "tennis ball", "tennis balls"),
])
def test_singular_and_plural(word: str, one: str, many: str) -> None:
    assert normalise_cue(word) == one and plural(one) == many


def test_vlm_items_whose_request_failed_are_asked_again(pets: Workspace) -> None:
    with standin(vlm_brain) as server:
        options = {"base_url": server.base_url, "image_max_side": 64, "max_retries": 0}
        server.faults_when.append((lambda body: "shows a dog" in body["messages"][1]["content"][0]["text"],
                                   ("invalid-json",)))
        first = propose(pets, make_proposer("vlm-attributes", **options), progress=False)
        assert first.run.status == RunStatus.COMPLETED_WITH_FAILURES and pets.catalog.evidence() == []
        server.faults_when.clear()
        asked = len(server.requests)
        again = propose(pets, make_proposer("vlm-attributes", **options), progress=False)
        assert len(server.requests) == asked + 1  # the dog once more; the cat's answers are replayed
    assert again.run.status == RunStatus.COMPLETED and again.counts["llm_failures_repaired"] == 1
    assert {e.attribute for e in pets.catalog.evidence()} == {"floppy ears", "snout", "green grass", "red ball"}
    failures = pets.tables.read(FAILURES_TABLE)
    assert failures.select("class_label", "retryable").rows() == [("cat", False)]  # off-taxonomy: final
