from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import TINY_CLIP_CONFIG, distinct_image

from curate.ingest import FolderSource, ingest
from curate.models import load_model
from curate.propose import ProposeError, make_proposer, propose
from curate.propose.clip import DEFAULT_CONTRAST, DEFAULT_TEMPLATES, ClipProposer
from curate.records import Cue, Evidence, RunStatus
from curate.taxonomy import SPURIOUS_TYPES
from curate.workspace import Workspace
from curate.workspace.tables import embeddings_table


@pytest.fixture
def animals(workspace: Workspace, tmp_path: Path, photos: dict[str, Path]) -> Workspace:
    """cat: 3 images (one a real photo), dog: 2 images."""
    root = tmp_path / "animals"
    for label, seeds in (("cat", [1, 2]), ("dog", [3, 4])):
        (root / label).mkdir(parents=True)
        for seed in seeds:
            distinct_image(seed, (48, 40)).save(root / label / f"{seed}.png")
    (root / "cat" / "chelsea.png").write_bytes(photos["chelsea"].read_bytes())
    ingest(workspace, FolderSource(root), progress=False)
    return workspace


def _background_priors(workspace: Workspace) -> None:
    propose(workspace, make_proposer("priors", types=("Background",)), progress=False)


def test_priors_give_every_class_typed_cues_once(animals: Workspace) -> None:
    first = propose(animals, make_proposer("priors"), progress=False)
    cues = animals.catalog.cues()
    assert {c.class_label for c in cues} == {"cat", "dog"}
    assert {c.taxonomy_type for c in cues} == set(SPURIOUS_TYPES)
    assert first.counts == {"cues": len(cues)}
    again = propose(animals, make_proposer("priors"), progress=False)
    assert again.run.run_id == first.run.run_id and again.counts == {}
    assert len(animals.catalog.cues()) == len(cues)


def test_priors_refuse_an_off_taxonomy_list(animals: Workspace, tmp_path: Path) -> None:
    bad = tmp_path / "priors.json"
    bad.write_text(json.dumps({"Material": ["wood"]}))
    with pytest.raises(ProposeError, match="'Material' is not one of the nine"):
        propose(animals, make_proposer("priors", path=str(bad)), progress=False)
    assert animals.runs.list("propose")[0].status == RunStatus.FAILED
    assert animals.catalog.cues() == []


def test_clip_scores_every_cue_of_the_class_and_stores_embeddings_once(animals: Workspace, tiny_clip: str) -> None:
    _background_priors(animals)
    n_cues = len(animals.catalog.cues(class_label="cat"))
    result = propose(animals, make_proposer("clip", model=tiny_clip, batch_size=2), progress=False)
    assert result.counts == {"embeddings_computed": 5, "evidence": 5 * n_cues, "items": 5}
    assert animals.runs.get(result.run.run_id).models == {tiny_clip: "curate-tiny-clip@random"}
    rows = animals.catalog.evidence(source="clip")
    assert {(r.model, r.model_version) for r in rows} == {(tiny_clip, "curate-tiny-clip@random")}
    assert all(0.0 < r.score < 1.0 and r.taxonomy_type == "Background" for r in rows)

    # the stored numbers are what CLIP says: recompute one row by hand
    clip = load_model(tiny_clip)
    table = animals.tables.read(embeddings_table(tiny_clip))
    assert table.height == 5
    row = next(r for r in rows if r.attribute == "grass")
    image = np.asarray(table.filter(table["item_id"] == row.item_id)["embedding"][0], dtype=np.float32)
    label = animals.catalog.item(row.item_id).label
    cue = clip.encode_texts([t.format(attribute="grass", label=label) for t in DEFAULT_TEMPLATES]).mean(0)
    contrast = clip.encode_texts([t.format(label=label) for t in DEFAULT_CONTRAST]).mean(0)
    similarity = float(image @ (cue / np.linalg.norm(cue)))
    contrast_similarity = float(image @ (contrast / np.linalg.norm(contrast)))
    assert row.extra["similarity"] == pytest.approx(similarity, abs=1e-5)
    assert row.score == pytest.approx(1 / (1 + np.exp(-clip.logit_scale * (similarity - contrast_similarity))),
                                      abs=1e-5)


def test_a_model_family_registered_without_a_versioner_still_scores(animals: Workspace) -> None:
    """A family registered with a loader alone (the documented way to add one) scores as it did
    before versions were known without loading: its version is the loaded model's."""
    from curate.models import FAMILIES, ModelSpec, add_model, register_family, remove_model

    if "open_clip-unversioned" not in FAMILIES:  # a family is registered once per process
        register_family("open_clip-unversioned")(FAMILIES["open_clip"])
    add_model(ModelSpec("tiny-unversioned", "open_clip-unversioned", str(TINY_CLIP_CONFIG), "random"))
    try:
        _background_priors(animals)
        result = propose(animals, make_proposer("clip", model="tiny-unversioned"), progress=False)
    finally:
        remove_model("tiny-unversioned")
    assert result.counts["items"] == 5
    assert animals.runs.get(result.run.run_id).models == {"tiny-unversioned": "curate-tiny-clip@random"}

def test_rerunning_clip_adds_nothing_and_new_items_are_scored_alone(animals: Workspace, tiny_clip: str,
                                                                    tmp_path: Path) -> None:
    _background_priors(animals)
    first = propose(animals, make_proposer("clip", model=tiny_clip), progress=False)
    before = len(animals.catalog.evidence())
    again = propose(animals, make_proposer("clip", model=tiny_clip), progress=False)
    assert again.run.run_id == first.run.run_id and again.counts == {}
    assert len(animals.catalog.evidence()) == before
    (tmp_path / "more" / "dog").mkdir(parents=True)
    distinct_image(99).save(tmp_path / "more" / "dog" / "new.png")
    ingest(animals, FolderSource(tmp_path / "more"), progress=False)
    third = propose(animals, make_proposer("clip", model=tiny_clip), progress=False)
    assert third.counts["items"] == 1 and third.counts["embeddings_computed"] == 1


def test_an_interrupted_clip_run_resumes_without_duplicates(animals: Workspace, tiny_clip: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _background_priors(animals)
    from curate.propose.base import ProposeContext

    real_write: Callable[..., None] = ProposeContext.write_evidence
    calls = {"n": 0}

    def crash_after_first_batch(self: ProposeContext, rows: list, **counts: int) -> None:
        real_write(self, rows, **counts)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(ProposeContext, "write_evidence", crash_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        propose(animals, make_proposer("clip", model=tiny_clip, batch_size=2), progress=False)
    [stopped] = [r for r in animals.runs.list("propose") if r.config["proposer"] == "clip"]
    assert stopped.status == RunStatus.INTERRUPTED and stopped.counts["items"] == 2
    monkeypatch.setattr(ProposeContext, "write_evidence", real_write)
    resumed = propose(animals, make_proposer("clip", model=tiny_clip, batch_size=2), progress=False)
    assert resumed.run.run_id == stopped.run_id and resumed.run.attempts == 2
    assert resumed.counts["items"] == 3 and resumed.run.counts["items"] == 5
    n_cues = len(animals.catalog.cues(class_label="cat"))
    assert len(animals.catalog.evidence(source="clip")) == 5 * n_cues


def test_clip_counts_items_of_classes_without_cues(animals: Workspace, tiny_clip: str) -> None:
    propose(animals, make_proposer("priors", types=("Shape",)), ["cat"], progress=False)
    result = propose(animals, make_proposer("clip", model=tiny_clip), progress=False)
    assert result.counts["items_without_cues"] == 2 and result.counts["items"] == 3


def test_detector_scores_are_the_best_box_of_each_cue(animals: Workspace, tiny_clip: str) -> None:
    _background_priors(animals)
    result = propose(animals, make_proposer("detector", weights="random", text_encoder=tiny_clip, conf=1e-9,
                                            imgsz=160, batch_size=2), ["cat"], progress=False)
    dogs = {i.item_id for i in animals.catalog.items(label="dog")}
    n_cues = len(animals.catalog.cues(class_label="cat"))
    # every cue and the class itself on cats; the cues alone on the dogs (the negative pool)
    assert result.counts == {"evidence": 3 * (n_cues + 1) + 2 * n_cues, "items": 3, "negative_items": 2}
    rows = animals.catalog.evidence(source="detector")
    assert {r.extra.get("negative_of") for r in rows if r.item_id in dogs} == {"cat"}
    assert "dog" not in {r.attribute for r in rows}
    assert {r.role for r in rows if r.attribute == "cat"} == {"core"}
    assert {r.role for r in rows if r.attribute != "cat"} == {"candidate"}
    assert any(r.boxes for r in rows)  # a random head still returns boxes at a tiny threshold
    for row in rows:
        if row.boxes:
            assert row.score == pytest.approx(max(b[4] for b in row.boxes), abs=1e-2)
            assert all(len(b) == 5 and b[0] <= b[2] and b[1] <= b[3] for b in row.boxes)
        else:
            assert row.score == 0.0
    assert {r.model for r in rows} == {"yolo-world-v2-s"}


def test_a_high_threshold_leaves_scores_at_zero(animals: Workspace, tiny_clip: str) -> None:
    _background_priors(animals)
    propose(animals, make_proposer("detector", model="yoloe-11s", weights="random", text_encoder=tiny_clip,
                                   conf=0.99, imgsz=160, include_class=False), ["dog"], progress=False)
    rows = animals.catalog.evidence(source="detector")
    assert rows and all(r.score == 0.0 and r.boxes == [] for r in rows)


def test_proposer_names_and_options_are_checked() -> None:
    with pytest.raises(ProposeError,
                       match="unknown proposer .nope.*clip, clip.detector, detector, errors, focus-settings"):
        make_proposer("nope")
    with pytest.raises(ProposeError, match="no option temperature"):
        make_proposer("clip", temperature=0.1)
    assert isinstance(make_proposer("clip", batch_size=4), ClipProposer)


def test_importing_the_proposers_and_naming_a_model_version_load_no_library_they_do_not_use() -> None:
    """Every process that imports the proposers (the CLI, each Ray actor) paid seconds for ``inflect``
    (typeguard instruments it as it loads) and for matplotlib (the error-slice statistics), and a Ray
    driver, which loads no model, imported open_clip (with torchvision) to name the version its actors
    load: each loads where it is used (inflect with the first word inflected)."""
    import subprocess
    import sys

    code = ("import sys; import curate.propose; from curate.models import ModelSpec, add_model, model_version; "
            "from curate.propose.llm_cues import singular; "
            f"add_model(ModelSpec('tiny', 'open_clip', {str(TINY_CLIP_CONFIG)!r}, 'random')); "
            "print(model_version('tiny'), [m for m in ('inflect', 'matplotlib', 'open_clip') if m in sys.modules]); "
            "print(singular('glasses'), singular('leashes'), 'inflect' in sys.modules)")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.split() == ["curate-tiny-clip@random", "[]", "glasses", "leash", "True"]


def test_unknown_classes_are_a_clear_error(animals: Workspace) -> None:
    with pytest.raises(ProposeError, match="no items of class horse"):
        propose(animals, make_proposer("priors"), ["horse"], progress=False)


def test_clip_and_detector_in_one_pass_decode_each_image_once(animals: Workspace, tiny_clip: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.executors.local as loader

    _background_priors(animals)
    opened: list[str] = []
    real_open = loader.open_image
    monkeypatch.setattr(loader, "open_image", lambda path: opened.append(str(path)) or real_open(path))
    result = propose(animals, make_proposer("clip+detector", clip_model=tiny_clip, detector_weights="random",
                                            text_encoder=tiny_clip, conf=1e-9, imgsz=160), progress=False)
    n_cues = len(animals.catalog.cues(class_label="cat"))
    assert sorted(opened) == sorted(set(opened)) and len(opened) == 5
    assert result.counts == {"embeddings_computed": 5, "evidence": 5 * n_cues + 5 * (n_cues + 1), "items": 5}
    by_source = {s: animals.catalog.evidence(source=s, run_id=result.run.run_id) for s in ("clip", "detector")}
    assert len(by_source["clip"]) == 5 * n_cues and len(by_source["detector"]) == 5 * (n_cues + 1)
    assert set(animals.runs.get(result.run.run_id).models) == {tiny_clip, "yolo-world-v2-s"}
    # the embeddings it stored serve a later clip run without decoding anything
    opened.clear()
    alone = propose(animals, make_proposer("clip", model=tiny_clip), progress=False)
    assert opened == [] and "embeddings_computed" not in alone.counts and alone.counts["items"] == 5


def _llm_cues(workspace: Workspace, cues: dict[str, list[str]]) -> None:
    workspace.catalog.add_cues([Cue(label, attribute, "llm", "propose-llm", "Co-occurring Objects")
                                for label, attributes in cues.items() for attribute in attributes])


def test_class_specific_cues_are_scored_on_every_class_so_lift_ranks_them(animals: Workspace) -> None:
    from curate.analyze import analyze_cues
    from curate.executors import ImageBatch
    from curate.propose.base import ProposeContext
    from curate.propose.scoring import ImageScorer, Target, class_passes, score_images

    ids = {label: [i.item_id for i in animals.catalog.items(label=label)] for label in ("cat", "dog")}
    present = {"ball": set(ids["cat"] + ids["dog"]), "leash": {ids["dog"][0]}, "yarn": set(ids["cat"][:2])}

    class Known(ImageScorer):  # a cue is present on exactly the images listed above
        def begin_class(self, context: ProposeContext, label: str | None, targets: list[Target],
                        own: bool = True) -> None:
            self.targets = targets

        def score(self, context: ProposeContext, batch: ImageBatch) -> list[Evidence]:
            return [Evidence(item.item_id, cue.attribute, "detector", context.run.run_id, score=float(
                item.item_id in present[cue.attribute])) for item in batch.items for cue in self.targets]

    _llm_cues(animals, {"dog": ["ball", "leash"], "cat": ["yarn"]})
    with animals.runs.track("propose", "known", {"proposer": "known"}) as run:
        context = ProposeContext(animals, run, None, progress=False)
        score_images(context, lambda context: [Known()], class_passes(context, "llm", None), 2, "known")
    stats = analyze_cues(animals, "detector").stats
    dog = {row["attribute"]: row for row in stats.filter(pl.col("class_label") == "dog").iter_rows(named=True)}
    assert dog["leash"]["n_scored"] == 5 and dog["leash"]["p_class_given_cue"] == 1.0
    assert dog["leash"]["lift"] == pytest.approx(5 / 2) and dog["leash"]["pmi"] == pytest.approx(np.log2(5 / 2))
    assert dog["leash"]["nmi"] is not None and dog["ball"]["lift"] == pytest.approx(1.0)
    # the class-specific cue outranks the cue every class has, though fewer dogs show it
    assert (dog["leash"]["rank"], dog["ball"]["rank"]) == (1, 2)
    assert set(stats["class_label"]) == {"cat", "dog"} and stats.height == 3  # no rows for cues a class never listed


def test_clip_scores_cues_on_other_classes_and_a_rerun_adds_only_what_is_missing(animals: Workspace,
                                                                                 tiny_clip: str) -> None:
    _llm_cues(animals, {"dog": ["leash", "ball"], "cat": ["yarn"]})
    first = propose(animals, make_proposer("clip", model=tiny_clip, cue_source="llm"), progress=False)
    assert first.counts == {"embeddings_computed": 5, "evidence": 5 * 3, "items": 5, "negative_items": 5}
    rows = {(r.item_id, r.attribute): r for r in animals.catalog.evidence(source="clip")}
    labels = {i.item_id: i.label for i in animals.catalog.items()}
    for (item_id, attribute), row in rows.items():
        own = attribute in {"dog": {"leash", "ball"}, "cat": {"yarn"}}[labels[item_id]]
        assert row.extra.get("negative_of") == (None if own else ("dog" if attribute != "yarn" else "cat"))
    # an image is scored in the words of its own class, whichever class listed the cue
    clip = load_model(tiny_clip)
    cat_id = next(i for i, label in labels.items() if label == "cat")
    contrast = clip.encode_texts([t.format(label="cat") for t in DEFAULT_CONTRAST]).mean(0)
    image = rows[(cat_id, "leash")].extra["similarity"], rows[(cat_id, "leash")].extra["contrast_similarity"]
    table = animals.tables.read(embeddings_table(tiny_clip))
    vector = np.asarray(table.filter(table["item_id"] == cat_id)["embedding"][0], dtype=np.float32)
    assert image[1] == pytest.approx(float(vector @ (contrast / np.linalg.norm(contrast))), abs=1e-5)

    again = propose(animals, make_proposer("clip", model=tiny_clip, cue_source="llm"), progress=False)
    assert again.counts == {} and len(animals.catalog.evidence(source="clip")) == 15
    _llm_cues(animals, {"cat": ["leash"]})  # cats now list leash too: their rows become their own
    third = propose(animals, make_proposer("clip", model=tiny_clip, cue_source="llm"), progress=False)
    assert third.counts == {"evidence": 3, "items": 3}
    assert all("negative_of" not in r.extra for r in animals.catalog.evidence(source="clip")
               if r.attribute == "leash" and labels[r.item_id] == "cat")


def test_a_capped_negative_pool_is_the_same_sample_on_every_run(animals: Workspace, tiny_clip: str) -> None:
    _llm_cues(animals, {"dog": ["leash"], "cat": ["yarn"]})
    result = propose(animals, make_proposer("clip", model=tiny_clip, cue_source="llm", negatives=1), progress=False)
    assert result.counts["negative_items"] == 2  # one other image for each class
    negatives = {(r.item_id, r.attribute) for r in animals.catalog.evidence(source="clip") if "negative_of" in r.extra}
    assert len(negatives) == 2
    again = propose(animals, make_proposer("clip", model=tiny_clip, cue_source="llm", negatives=1), progress=False)
    assert again.counts == {}
    with pytest.raises(ProposeError, match="negatives is how many other classes' images"):
        propose(animals, make_proposer("clip", model=tiny_clip, negatives=-1), progress=False)


def test_new_cues_then_new_items_are_scored_exactly_once(animals: Workspace, tiny_clip: str, tmp_path: Path) -> None:
    """Pending work is (item, cue): cues added after a proposal are scored on every item, items added
    after it on every cue, and nothing already stored is scored again."""
    _background_priors(animals)
    clip = make_proposer("clip", model=tiny_clip, negatives=0)
    first = propose(animals, clip, progress=False)
    background = {(r.item_id, r.attribute) for r in animals.catalog.evidence(source="clip")}
    propose(animals, make_proposer("priors", types=("Shape",)), progress=False)
    shape_cues = {(c.class_label, c.attribute) for c in animals.catalog.cues() if c.taxonomy_type == "Shape"}
    second = propose(animals, clip, progress=False)
    assert second.run.run_id == first.run.run_id
    wanted = {(i.item_id, attribute) for i in animals.catalog.items() for label, attribute in shape_cues
              if label == i.label} - background
    assert wanted and second.counts["evidence"] == len(wanted)
    after = {(r.item_id, r.attribute) for r in animals.catalog.evidence(source="clip")}
    assert after == background | wanted

    (tmp_path / "more" / "dog").mkdir(parents=True)
    distinct_image(99).save(tmp_path / "more" / "dog" / "new.png")
    ingest(animals, FolderSource(tmp_path / "more"), progress=False)
    third = propose(animals, clip, progress=False)
    [new] = [i for i in animals.catalog.items() if i.uri.endswith("new.png")]
    dog_cues = {c.attribute for c in animals.catalog.cues(class_label="dog")}
    assert third.counts["evidence"] == len(dog_cues) and third.counts["items"] == 1
    final = animals.evidence.scan(source="clip").collect()
    assert set(final.filter(pl.col("item_id") == new.item_id)["attribute"]) == dog_cues
    assert final.height == final.select("item_id", "attribute").n_unique() == len(after) + len(dog_cues)


def test_pairs_scored_by_another_model_version_are_scored_again(animals: Workspace, tiny_clip: str) -> None:
    """Pending work is (item, cue, model version): a row the loaded model's earlier version stored is
    replaced, the rest stays done."""
    _background_priors(animals)
    clip = make_proposer("clip", model=tiny_clip, negatives=0)
    propose(animals, clip, progress=False)
    stale = animals.catalog.evidence(source="clip")[0]
    animals.catalog.add_evidence([Evidence(stale.item_id, stale.attribute, stale.source, stale.run_id, stale.role,
                                           stale.taxonomy_type, 0.123, [], stale.model, "old-weights", stale.extra)])
    again = propose(animals, clip, progress=False)
    assert again.counts["evidence"] == 1
    rows = animals.catalog.evidence(source="clip")
    assert {r.model_version for r in rows} == {"curate-tiny-clip@random"} and len(rows) == len(set(
        (r.item_id, r.attribute) for r in rows))
