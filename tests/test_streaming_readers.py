"""Readers of evidence scan it in polars (#12): no stage makes a record of every stored evidence row.

``Catalog.evidence`` (a list of every matching row) is made to refuse, and every record a reader
makes from a frame is counted: builders keep items, not rows, and a round makes records of the rows
its tasks show and no others.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import distinct_image

from annotation import tasks as round_tasks
from annotation.spec import RoundSpec
from curate.analyze.gap import PredictionTable, spurious_gaps
from curate.builders import make_builder
from curate.ingest import FolderSource, ingest
from curate.records import Evidence, EvidenceRole, Setting, SettingKind, Verdict
from curate.verdicts import question_attribute
from curate.workspace import Workspace
from curate.workspace import evidence as evidence_module
from curate.workspace.catalog import Catalog

NAMES = [f"dog/{i}.png" for i in range(4)] + [f"cat/{i}.png" for i in range(4)] + ["u0.png", "u1.png"]
CUES = ("grass", "water", "sofa")


@pytest.fixture
def scored(workspace: Workspace, tmp_path: Path) -> tuple[Workspace, dict[str, str]]:
    """Dogs, cats and unlabelled images with evidence from every proposer a stage reads, people's
    verdicts on dogs' water (spurious) and answers about it on the cats."""
    for seed, name in enumerate(NAMES):
        (tmp_path / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        distinct_image(300 + seed, (24, 16)).save(tmp_path / "img" / name)
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    ids = {ref.locator: ref.item_id for ref in workspace.catalog.references()}
    box = [[2.0, 2.0, 12.0, 10.0, 0.8]]
    rows: list[Evidence] = []
    for n, name in enumerate(NAMES):
        item_id, label = ids[name], name.split("/")[0] if "/" in name else None
        score = (n + 1) / (len(NAMES) + 1)
        rows += [Evidence(item_id, cue, "detector", "p1", EvidenceRole.CANDIDATE, "Background", (score + c / 7) % 1,
                          box if c != 2 else []) for c, cue in enumerate(CUES)]
        rows += [Evidence(item_id, label, "detector", "p1", EvidenceRole.CORE, None, 0.9, box)] if label else []
        rows += [Setting(kind, value).evidence(item_id, "focus-settings", "p2",
                                               score if value != "night" else 1 - score)
                 for kind, values in ((SettingKind.TIME, ("day", "night")), (SettingKind.WEATHER, ("sunny", "foggy")),
                                      (SettingKind.LOCATION, ("grass", "water"))) for value in values]
        rows += [Evidence(item_id, "logo", "logo-mining", "p3", score=score),
                 Evidence(item_id, "dog:pc1", "neural-pca", "p4", score=score, extra={"component": 1, "class": "dog"})]
    workspace.catalog.add_evidence(rows)
    workspace.catalog.add_verdicts(
        [Verdict(ids[f"dog/{i}.png"], "water", "ann", "attrs", "spurious", "Background") for i in range(2)]
        + [Verdict(ids[name], question_attribute(question, "dog", "water"), "ann", "so-1", value)
           for name in ("cat/0.png", "cat/1.png", "u0.png") for question, value in (("cue", "yes"), ("object", "no"))])
    return workspace, ids


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``Catalog.evidence`` refuses; the records ``evidence_records`` makes are counted."""

    def refuse(*args: object, **kwargs: object) -> list[Evidence]:
        raise AssertionError("a stage read evidence as a list of every matching row (Catalog.evidence)")

    counts: list[int] = []
    real = evidence_module.evidence_records

    def counting(frame: pl.DataFrame) -> Iterator[Evidence]:
        counts.append(frame.height)
        return real(frame)

    monkeypatch.setattr(Catalog, "evidence", refuse)
    for module in (evidence_module, round_tasks):
        monkeypatch.setattr(module, "evidence_records", counting, raising=False)
    yield counts


def test_builders_keep_items_not_evidence_rows(scored: tuple[Workspace, dict[str, str]], made: list[int]) -> None:
    workspace, ids = scored
    focus = make_builder("focus", allow_machine=True).build(workspace).tables["test"]
    assert sorted(focus["item_id"]) == sorted(i for n, i in ids.items() if not n.startswith("u"))  # labelled only
    logos = make_builder("logobank", keep_fraction=0.2).build(workspace).tables["candidates"]
    assert logos["item_id"].to_list() == [ids["u1.png"], ids["u0.png"]]  # the top 20% by logo score
    candidates = make_builder("spurious-only", pairs_round="attrs", evidence_source="detector").build(workspace)
    assert set(candidates.tables["candidates"]["item_id"]) == {ids[n] for n in NAMES if not n.startswith("dog")}
    release = make_builder("spurious-only", stage="release", pairs_round="attrs", verdict_round="so-1",
                           evidence_source="detector").build(workspace)
    assert sorted(release.tables["test"]["item_id"]) == sorted(ids[n] for n in ("cat/0.png", "cat/1.png", "u0.png"))
    assert made == []


def test_a_gap_measurement_reads_evidence_as_a_scan(scored: tuple[Workspace, dict[str, str]], made: list[int],
                                                    tmp_path: Path) -> None:
    workspace, ids = scored
    answers = tmp_path / "answers.csv"
    pl.DataFrame([{"item_id": item_id, "variant": variant, "present": 1} for item_id in ids.values()
                  for variant in ("natural", "masked")]).write_csv(answers)
    gaps = spurious_gaps(workspace, PredictionTable(answers), k=2, progress=False, bootstrap=5)
    assert set(gaps.table["attribute"]) == set(CUES) and gaps.skipped_without_boxes == 0
    assert made == []


@pytest.mark.parametrize(("kind", "options", "shown"), [
    ("attributes", {"budget": 3, "max_attributes": 2},
     lambda task: sum(1 for key, value in task["data"].items() if key.endswith("_options") and value)),
    ("boxes", {"budget": 4}, lambda task: 1),
    ("component", {"source": "neural-pca", "max_attributes": 3}, lambda task: len(task["data"]["shown"])),
])
def test_a_round_makes_records_of_the_rows_its_tasks_show_only(scored: tuple[Workspace, dict[str, str]],
                                                               made: list[int], monkeypatch: pytest.MonkeyPatch,
                                                               kind: str,
                                                               options: dict[str, Any],
                                                               shown: Callable[[dict[str, Any]], int]) -> None:
    workspace, _ = scored
    every_reference = Catalog.references

    def references(catalog: Catalog, item_id: str | None = None, source_id: str | None = None) -> list[Any]:
        assert item_id or source_id, "routing read the references of every item (for group tables' groups)"
        return every_reference(catalog, item_id, source_id)

    monkeypatch.setattr(Catalog, "references", references)
    planned = round_tasks.ROUND_KINDS[kind].plan(workspace, RoundSpec(f"{kind}-1", kind=kind, **options), set())
    assert planned.tasks and sum(made) == sum(shown(task) for task in planned.tasks)
    assert sum(made) < workspace.catalog.evidence_scan(source=str(options.get("source", "detector"))).collect().height


def test_no_stage_reads_evidence_as_a_record_list() -> None:
    root = Path(__file__).resolve().parents[1]
    readers = [str(path.relative_to(root)) for folder in ("curate", "annotation")
               for path in (root / folder).rglob("*.py") if re.search(r"catalog\.evidence\(", path.read_text())]
    assert readers == []  # stages use Catalog.evidence_scan; Catalog.evidence is for small reads (tests, notebooks)


def test_a_release_says_what_fed_it_without_a_record_of_every_item(
        scored: tuple[Workspace, dict[str, str]], made: list[int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``fed_by`` (classes, rounds, proposal runs) is worked out in polars: a build of a million-item
    workspace made an Item of every item to find its release's classes."""
    import json

    from curate.builders import build

    workspace, _ = scored

    def refuse(*args: object, **kwargs: object) -> Iterator[object]:
        raise AssertionError("a build read every item as a record (Catalog.items)")

    monkeypatch.setattr(Catalog, "items", refuse)
    result = build(workspace, make_builder("focus", allow_machine=True), tmp_path / "release")
    fed_by = json.loads((result.path / "release.json").read_text())["fed_by"]
    assert fed_by["classes"] == ["cat", "dog"] and made == []
