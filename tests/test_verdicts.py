"""One decision per unit: consensus, abstentions, gold answers and adjudication (curate.verdicts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import distinct_image

from curate.builders import make_builder
from curate.ingest import FolderSource, ingest
from curate.records import Verdict
from curate.verdicts import ADJUDICATED, CONSENSUS, VerdictValue, resolve, resolved_verdicts, round_names
from curate.workspace import Workspace


def _v(item: str, annotator: str, value: str, round_: str = "r1", attribute: str = "water", **extra: object
       ) -> Verdict:
    return Verdict(item, attribute, annotator, round_, value, None, dict(extra))


def test_ties_stay_open_and_unsure_does_not_vote() -> None:
    resolution = resolve([_v("a", "ann", "spurious"), _v("a", "bob", "not present"),
                          _v("b", "ann", "spurious"), _v("b", "bob", "unsure")])
    assert [(v.item_id, v.value, v.annotator) for v in resolution.decided] == [("b", "spurious", CONSENSUS)]
    assert resolution.open == {("a", "water"): "tie between not present, spurious"}


def test_answers_on_gold_tasks_decide_nothing() -> None:
    resolution = resolve([_v("a", "ann", "not present", gold=True), _v("a", "bob", "not present", gold=True)])
    assert resolution.decided == [] and resolution.open == {}


def test_an_adjudication_overrules_and_carries_votes_types_and_notes() -> None:
    verdicts = [Verdict("a", "water", "ann", "r1", "spurious", "Background", {"comment": "lake"}),
                Verdict("a", "water", "bob", "r1", "not present", None, {}),
                Verdict("a", "water", "cy", "adj", "spurious", "Background", {"adjudicates": "r1"})]
    [decided] = resolve(verdicts, ["r1"]).decided
    assert (decided.value, decided.annotator, decided.taxonomy_type) == ("spurious", ADJUDICATED, "Background")
    assert decided.extra["votes"] == {"spurious": 1} and decided.extra["rounds"] == ["adj"]
    [before] = resolve(verdicts[:2], ["r1"]).open.values()
    assert before == "tie between not present, spurious"
    [agreed] = resolve(verdicts[:1] + [Verdict("a", "water", "bob", "r1", "spurious", None, {"comment": "lake"})]
                       ).decided
    assert agreed.extra["comment"] == "lake" and agreed.extra["votes"] == {"spurious": 2}


def test_round_names_and_vocabulary() -> None:
    assert round_names("round-1,adjudication-1") == ("round-1", "adjudication-1")
    assert round_names(" , ") is None
    assert VerdictValue("not present") is VerdictValue.NOT_PRESENT


def test_builds_read_adjudicated_decisions(workspace: Workspace, tmp_path: Path) -> None:
    for index in range(8):
        label = "dog" if index < 4 else "cat"
        (tmp_path / "img" / label).mkdir(parents=True, exist_ok=True)
        distinct_image(500 + index, (6, 6)).save(tmp_path / "img" / label / f"{index}.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    items = sorted(workspace.catalog.items(), key=lambda i: (i.label, i.item_id))
    water = {item.item_id: index % 2 for index, item in enumerate(items)}
    rows = [Verdict(i, "water", person, "round-1", "spurious" if w else "not present")
            for i, w in water.items() for person in ("ann", "bob")]
    disputed = items[0].item_id
    rows = [v for v in rows if v.item_id != disputed]
    rows += [Verdict(disputed, "water", "ann", "round-1", "spurious"),
             Verdict(disputed, "water", "bob", "round-1", "not present"),
             # a rubber-stamper's answer on a gold task is no vote
             Verdict(items[1].item_id, "water", "cy", "round-1", "spurious" if not water[items[1].item_id]
                     else "not present", None, {"gold": True})]
    workspace.catalog.add_verdicts(rows)
    options = {"attribute": "water", "train_correlation": 0.5, "min_group_size": 0, "val_per_group": 0,
               "test_per_group": 0, "verdict_round": "round-1"}
    before = make_builder("groups", **options).build(workspace)
    assert before.metadata["labels_from"]["human"] == 7  # the tie is left out
    workspace.catalog.add_verdicts([Verdict(disputed, "water", "dee", "adjudication-1", "spurious", None,
                                            {"adjudicates": "round-1"})])
    after = make_builder("groups", **options).build(workspace)
    assert after.metadata["labels_from"]["human"] == 8
    decided = {v.item_id: v.value for v in resolved_verdicts(workspace, "round-1")}
    assert decided[disputed] == "spurious" and decided[items[1].item_id] == ("spurious" if water[items[1].item_id]
                                                                              else "not present")
    with pytest.raises(ValueError, match="rounds with verdicts: adjudication-1, round-1"):
        resolved_verdicts(workspace, "round-2")
