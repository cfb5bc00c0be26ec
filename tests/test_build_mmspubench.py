"""MM-SpuBench items: the importer on the released examples, and the builder from verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.builders import BuildError, build, import_mmspubench, make_builder
from curate.taxonomy import SPURIOUS_TYPES
from curate.workspace import Workspace

RELEASED_EXAMPLE = {
    "core_attributes": ["compact design", "branding", "cosmetic container"],
    "spurious_attributes": ["round shape", "marble-like background", "shiny surface"],
    "spurious_correlation_type": ["Shape", "Background"],
    "question": "Which feature best indicates the identity of the object?",
    "choices": ["A. compact design", "B. round shape", "C. marble-like background", "D. shiny surface"],
    "answer": "A", "image": "000000.png",
}


def test_the_importer_accepts_lists_and_literal_strings_and_flags_the_rest(tmp_path: Path) -> None:
    literal = {**RELEASED_EXAMPLE, "image": "000001.png",
               **{k: str(RELEASED_EXAMPLE[k]) for k in ("core_attributes", "spurious_attributes", "choices")}}
    off_taxonomy = {**RELEASED_EXAMPLE, "spurious_correlation_type": ["Context", "Background"]}
    three_choices = {**RELEASED_EXAMPLE, "choices": RELEASED_EXAMPLE["choices"][:3]}
    no_answer = {k: v for k, v in RELEASED_EXAMPLE.items() if k != "answer"}
    broken_literal = {**RELEASED_EXAMPLE, "core_attributes": "['compact design', "}
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps([RELEASED_EXAMPLE, literal, off_taxonomy, three_choices, no_answer, broken_literal,
                                "not an object"]))
    valid, flagged = import_mmspubench(path)
    assert valid["index"].to_list() == [0, 1]
    assert valid["core_attributes"][1].to_list() == RELEASED_EXAMPLE["core_attributes"]
    assert {f["index"]: f["problems"][0] for f in flagged} == {
        2: "off-taxonomy type 'Context'",
        3: "choices are not four strings 'A. ...' to 'D. ...'",
        4: "missing field 'answer'",
        5: "core_attributes is neither a list nor a Python-literal list: \"['compact design', \"",
        6: "not an object but a str",
    }
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(BuildError, match="not a JSON list"):
        import_mmspubench(tmp_path / "dict.json")


SPURIOUS_OF_FIXTURE = (("marble table", "Background"), ("round shape", "Shape"), ("shiny surface", "Texture and Noise"),
                       ("hand", "Co-occurring Objects"), ("wooden floor", "Background"))


def test_items_from_verdicts_follow_the_released_schema(verified: Workspace, tmp_path: Path) -> None:
    result = build(verified, make_builder("mmspubench", verdict_round="r1", source_dataset="bottles"), tmp_path / "r")
    table = result.release.tables["test"]
    assert table.height == 8 and result.release.metadata["skipped_items"] == {
        "fewer than 2 verified core attributes": 1}
    assert sorted(result.release.metadata["answer_letters"].values()) == [2, 2, 2, 2]  # balanced A-D
    for row in table.iter_rows(named=True):
        assert [c[:3] for c in row["choices"]] == ["A. ", "B. ", "C. ", "D. "]
        answer_text = row["choices"]["ABCD".index(row["answer"])][3:]
        assert answer_text in row["core_attributes"] and "sticker" not in row["core_attributes"]
        distractors = [c[3:] for c in row["choices"] if c[3:] != answer_text]
        assert len(distractors) == 3 and set(distractors) <= set(row["spurious_attributes"])
        types = dict(SPURIOUS_OF_FIXTURE)
        shown = [types[name] for name in distractors]
        assert len(row["spurious_correlation_type"]) == 2
        assert set(row["spurious_correlation_type"]) == set(shown)  # the types of the options shown, no other
        assert set(shown) <= set(SPURIOUS_TYPES)
        assert row["spurious_correlation_type"][0] == max(set(shown), key=shown.count)
        assert row["class_label"] == "bottle" and row["source_dataset"] == "bottles"
    valid, flagged = import_mmspubench(tmp_path / "r" / "annotation.json")  # our own output passes our importer
    assert flagged == [] and valid.height == 8
    again = make_builder("mmspubench", verdict_round="r1", source_dataset="bottles").build(verified)
    assert again.tables["test"].equals(table)


def test_without_verified_attributes_there_is_nothing_to_build(workspace: Workspace) -> None:
    with pytest.raises(BuildError, match="no item has enough verified attributes"):
        make_builder("mmspubench").build(workspace)
