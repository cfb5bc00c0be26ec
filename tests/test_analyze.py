"""Cue statistics against hand-worked values, and the analyze run with its pictures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import distinct_image
from PIL import Image

from curate.analyze import STATS_TABLE, analyze_cues, cues, rank_by_score
from curate.analyze.cues import cue_statistics, labels_frame, presence_scan, wilson
from curate.ingest import FolderSource, ingest
from curate.records import Evidence, EvidenceRole, Verdict
from curate.workspace import Workspace
from curate.workspace.evidence import SCHEMA

DOG_SCORES = [0.9, 0.8, 0.7, 0.01]
CAT_SCORES = [0.6, 0.04, 0.0, 0.02]


def _presence() -> pl.DataFrame:
    rows = [{"item_id": f"{label}{i}", "class_label": label, "attribute": "grass", "taxonomy_type": "Background",
             "score": score, "present": score >= 0.05}
            for label, scores in (("dog", DOG_SCORES), ("cat", CAT_SCORES)) for i, score in enumerate(scores)]
    return pl.DataFrame(rows)


def test_cue_statistics_by_hand() -> None:
    stats = {row["class_label"]: row for row in cue_statistics(_presence(), "machine:test").iter_rows(named=True)}
    dog, cat = stats["dog"], stats["cat"]
    assert (dog["n_scored"], dog["n_class"], dog["n_cue"], dog["n_both"]) == (8, 4, 4, 3)
    assert dog["p_cue_given_class"] == 0.75 and dog["p_class_given_cue"] == 0.75
    assert (dog["p_cue_given_class_low"], dog["p_cue_given_class_high"]) == pytest.approx(wilson(3, 4))
    assert dog["lift"] == pytest.approx(1.5) and dog["pmi"] == pytest.approx(math.log2(1.5))
    assert cat["lift"] == pytest.approx(0.5) and cat["pmi"] == pytest.approx(-1.0)
    mutual = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # nats; both marginals are 1/2
    assert dog["nmi"] == pytest.approx(mutual / math.log(2)) and cat["nmi"] == pytest.approx(dog["nmi"])
    assert dog["majority_acc"] == 0.5
    assert dog["predictivity_gain"] == pytest.approx(dog["predictivity_acc"] - 0.5)
    assert dog["rank"] == 1 and dog["evidence"] == "machine:test"


def test_wilson_interval_known_values() -> None:
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_ranking_breaks_ties_with_a_seeded_shuffle() -> None:
    scores = {f"i{n}": 0.5 for n in range(20)} | {"top": 0.9, "bottom": 0.0}
    first, again = rank_by_score(scores), rank_by_score(scores)
    assert first == again and first[0] == "top" and first[-1] == "bottom"
    assert first != ["top"] + [f"i{n}" for n in range(20)] + ["bottom"]  # ties are shuffled, not in insertion order
    assert rank_by_score(scores, seed=1) != first


def test_each_cue_breaks_its_ties_with_its_own_shuffle() -> None:
    zeros = {f"i{n}": 0.0 for n in range(20)}
    grass, leash = rank_by_score(zeros, cue=("dog", "grass")), rank_by_score(zeros, cue=("dog", "leash"))
    assert set(grass[-5:]) != set(leash[-5:])  # cues scoring 0 everywhere do not share their bottom K
    assert rank_by_score(zeros, cue=("dog", "grass")) == grass  # and a re-run gives the same order


@pytest.fixture
def scored(workspace: Workspace, tmp_path: Path) -> Workspace:
    for label, scores in (("dog", DOG_SCORES), ("cat", CAT_SCORES)):
        for index, _ in enumerate(scores):
            (tmp_path / "img" / label).mkdir(parents=True, exist_ok=True)
            distinct_image(hash((label, index)) % 10_000).save(tmp_path / "img" / label / f"{index}.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    by_path = {ref.locator: ref.item_id for ref in workspace.catalog.references()}
    rows = [Evidence(by_path[f"{label}/{i}.png"], "grass", "detector", "propose-x", EvidenceRole.CANDIDATE,
                     "Background", score)
            for label, scores in (("dog", DOG_SCORES), ("cat", CAT_SCORES)) for i, score in enumerate(scores)]
    workspace.catalog.add_evidence(rows)
    return workspace


def test_analyze_run_stores_statistics_and_pictures(scored: Workspace) -> None:
    result = analyze_cues(scored, source="detector", strip_k=2)
    assert result.stats.height == 2 and result.run.stage == "analyze"
    assert scored.tables.read(STATS_TABLE).filter(pl.col("class_label") == "dog")["lift"][0] == pytest.approx(1.5)
    names = sorted(p.name for p in result.pictures)
    assert names == ["lift-heatmap.png", "strip-cat-grass.png", "strip-dog-grass.png"]
    for picture in result.pictures:
        assert picture.is_relative_to(scored.root / "reports") and Image.open(picture).size[0] > 100
    assert result.run.counts == {"rows": 2, "pictures": 3}


def test_labels_read_a_batch_at_a_time_give_the_same_analysis(scored: Workspace,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    whole = analyze_cues(scored, source="detector", strip_k=2)
    monkeypatch.setattr(cues, "LABEL_BATCH", 3)  # 8 items: three batches
    batched = analyze_cues(scored, source="detector", strip_k=2)
    assert batched.stats.equals(whole.stats)
    assert [p.read_bytes() for p in batched.pictures] == [p.read_bytes() for p in whole.pictures]


def test_a_release_shows_the_pictures_of_the_analysis_that_covered_its_classes(scored: Workspace) -> None:
    from curate.analyze import pictures_of

    both = analyze_cues(scored, source="detector", strip_k=2)  # dogs and cats
    cats = [i.item_id for i in scored.catalog.items(label="cat")]
    scored.catalog.add_evidence(Evidence(i, "sofa", "clip", "propose-y", EvidenceRole.CANDIDATE, "Object", s)
                                for i, s in zip(cats, (0.9, 0.8, 0.1, 0.0), strict=True))
    only_cats = analyze_cues(scored, source="clip", strip_k=2)  # newer, and of cats only
    folders = {p.parent.name for p in pictures_of(scored, {"dog"})}
    assert [p.name for p in pictures_of(scored, {"dog"})] == ["strip-dog-grass.png"]
    assert folders == {both.run.run_id}  # not the newest analysis, which never saw a dog
    assert sorted(p.name for p in pictures_of(scored, {"cat"})) == ["lift-heatmap.png", "strip-cat-sofa.png"]
    assert {p.parent.name for p in pictures_of(scored, {"cat"})} == {only_cats.run.run_id}
    assert pictures_of(scored, {"bird"}) == []


def test_human_verdicts_are_analyzed_apart(scored: Workspace) -> None:
    dog_items = [i.item_id for i in scored.catalog.items(label="dog")]
    cat_items = [i.item_id for i in scored.catalog.items(label="cat")]
    scored.catalog.add_verdicts(
        [Verdict(i, "grass", "ann", "round-1", "spurious", "Background") for i in dog_items]
        + [Verdict(i, "grass", "ann", "round-1", "not present", "Background") for i in cat_items[:3]]
        + [Verdict(cat_items[3], "grass", "ann", "round-1", "unsure")])
    result = analyze_cues(scored, use_verdicts=True, verdict_round="round-1")
    dog = result.stats.filter(pl.col("class_label") == "dog").row(0, named=True)
    assert dog["evidence"] == "human:round-1" and dog["n_scored"] == 7  # "unsure" is left out
    assert dog["p_cue_given_class"] == 1.0 and dog["p_class_given_cue"] == 1.0
    with pytest.raises(ValueError, match="no evidence from 'clip'"):
        analyze_cues(scored, source="clip")


def test_a_run_registered_while_analyze_starts_is_not_counted(scored: Workspace,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Analyze lists the runs once; holding one, it reads that run's rows alone, so a proposal that
    registers a second run between that list and the scan adds no row twice."""
    before = scored.evidence.run_ids()
    scored.catalog.add_evidence(Evidence(i.item_id, "grass", "detector", "propose-z", EvidenceRole.CANDIDATE,
                                         "Background", 0.99) for i in scored.catalog.items())
    monkeypatch.setattr(type(scored.evidence), "run_ids", lambda self: before)  # the list taken before it
    dog = analyze_cues(scored, source="detector").stats.filter(pl.col("class_label") == "dog").row(0, named=True)
    assert (dog["n_scored"], dog["n_both"], dog["lift"]) == (8, 3, pytest.approx(1.5))


def test_of_two_runs_scoring_the_same_cue_the_first_counts(scored: Workspace) -> None:
    """Two runs of one proposer scored grass on every image: each (item, cue) counts once, with the
    score of the first run by id, before anything else reads the rows."""
    scored.catalog.add_evidence(Evidence(i.item_id, "grass", "detector", "propose-z", EvidenceRole.CANDIDATE,
                                         "Background", 0.99) for i in scored.catalog.items())
    assert len(scored.evidence.run_ids()) == 2
    dog = analyze_cues(scored, source="detector").stats.filter(pl.col("class_label") == "dog").row(0, named=True)
    assert (dog["n_scored"], dog["n_both"], dog["lift"]) == (8, 3, pytest.approx(1.5))


def test_report_links_every_picture_and_figure(scored: Workspace, tmp_path: Path) -> None:
    from curate.analyze.report import build_report
    from curate.evaluate import evaluate
    from curate.ingest import GroupTableSource

    analyze_cues(scored, source="detector", strip_k=2)
    images = Path(next(scored.catalog.items()).uri).parent.parent
    pl.DataFrame({"id": [1, 2, 3], "filename": ["dog/0.png", "dog/1.png", "cat/0.png"], "split": [0, 0, 2],
                  "y": [1, 1, 0], "a": [0, 1, 1]}).write_csv(images / "groups.csv")
    ingest(scored, GroupTableSource(images / "groups.csv"), progress=False)
    predictions = tmp_path / "p.csv"
    pl.DataFrame({"y": [0, 0, 1, 1], "a": [0, 1, 0, 1], "pred": [0, 0, 1, 0]}).write_csv(predictions)
    evaluate(scored, "groups", predictions)
    text = build_report(scored).read_text()
    assert "| dog | 1 | grass | Background | 75% [30%, 95%] | 75% | 1.500 |" in text
    assert "| acc_wg | 0.000 |" in text and "| acc_avg | 0.750 |" in text
    links = [line[line.index("](") + 2:-1] for line in text.splitlines() if line.startswith("![")]
    assert "| split 0: y=1, a=0 | 1 |" in text and "| split 2: y=0, a=1 | 1 |" in text
    assert len(links) == 5  # group sizes, heatmap, two strips, accuracy per group
    report_dir = scored.root / "reports"
    assert all((report_dir / link).is_file() for link in links)
    page = build_report(scored, "html").read_text()
    assert page.count("<img") == 5 and "<table>" in page and "<td>grass</td>" in page


def test_importing_curate_leaves_matplotlib_backend_alone() -> None:
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import curate.builders, curate.analyze.plots, curate.publish; "
            "print(matplotlib.get_backend())")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.strip() == "svg"  # a notebook's inline backend survives `import curate`


def _sklearn_predictivity(ids: list[str], scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Out-of-fold accuracy of scikit-learn's GaussianNB with folds from the ids' first 15 hex digits
    (mod 60, mod k: k = 5 or the smallest class's size), and the majority-class accuracy."""
    from sklearn.naive_bayes import GaussianNB

    values, counts = np.unique(labels, return_counts=True)
    majority, splits = counts.max() / counts.sum(), min(5, int(counts.min()))
    if len(values) < 2 or splits < 2:
        return majority, majority
    folds = np.array([int(item_id[:15], 16) % 60 % splits for item_id in ids])
    correct = 0
    for fold in range(splits):
        train, test = folds != fold, folds == fold
        if not test.any():
            continue
        if not train.any():  # every image in one fold: the cue's majority class
            predicted = np.full(int(test.sum()), values[counts.argmax()])
        elif np.ptp(scores[train]) == 0:
            seen, seen_counts = np.unique(labels[train], return_counts=True)
            predicted = np.full(int(test.sum()), seen[seen_counts.argmax()])
        else:
            predicted = GaussianNB().fit(scores[train, None], labels[train]).predict(scores[test, None])
        correct += int((predicted == labels[test]).sum())
    return correct / len(labels), majority


def test_predictivity_is_scikit_learns_cross_validated_naive_bayes() -> None:
    """Random cues (2 to 6 classes, rounded scores with ties, constant training folds, tiny classes),
    several at once so their models share the pass: each cue's accuracy is scikit-learn's."""
    import hashlib

    rng = np.random.default_rng(0)
    for trial in range(40):
        frames, expected = [], {}
        for cue in range(5):
            n, k = (int(rng.integers(4, 300)), int(rng.integers(2, 7))) if cue < 4 else (4, 2)  # 4: tiny
            ids = [hashlib.sha256(f"{trial} {cue} {i}".encode()).hexdigest() for i in range(n)]
            labels = np.array([f"c{v}" for v in rng.integers(0, k, n)])
            scores = (rng.random(n) ** rng.uniform(0.2, 5)).round(int(rng.integers(0, 6)))
            if cue == 0:
                scores = np.r_[np.zeros(n - 1), 1.0]  # one image shows it: some training folds are constant
            expected[f"cue{cue}"] = _sklearn_predictivity(ids, scores, labels)
            frames.append(pl.DataFrame({"item_id": ids, "class_label": labels, "attribute": f"cue{cue}",
                                        "taxonomy_type": "Background", "score": scores, "present": scores > 0.5}))
        stats = cue_statistics(pl.concat(frames), "machine:clip")
        for cue, (acc, majority) in expected.items():
            row = stats.filter(pl.col("attribute") == cue).row(0, named=True)
            assert (row["predictivity_acc"], row["majority_acc"]) == pytest.approx((acc, majority), abs=1e-12), \
                (trial, cue)


def test_a_constant_score_predicts_at_the_majority_rate(recwarn: pytest.WarningsRecorder) -> None:
    presence = pl.DataFrame({"item_id": [f"{n:02x}" * 32 for n in range(10)], "class_label": ["a"] * 6 + ["b"] * 4,
                             "attribute": "grass", "taxonomy_type": "Background", "score": 1.0, "present": True})
    row = cue_statistics(presence, "machine:clip").row(0, named=True)
    assert (row["predictivity_acc"], row["majority_acc"]) == (0.6, 0.6)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_an_analysis_does_not_import_scikit_learn(tmp_path: Path) -> None:
    """Importing scikit-learn took seconds of every analysis; the statistics need none of it."""
    import subprocess
    import sys

    script = ("import sys, numpy as np, polars as pl\n"
              "from curate.analyze.cues import cue_statistics\n"
              "rng = np.random.default_rng(0)\n"
              "presence = pl.DataFrame({'item_id': [str(i) for i in range(60)], 'class_label': ['a', 'b'] * 30,\n"
              "                         'attribute': ['grass'] * 60, 'taxonomy_type': ['Background'] * 60,\n"
              "                         'score': rng.random(60), 'present': rng.random(60) > 0.5,\n"
              "                         'own': [True] * 60})\n"
              "assert cue_statistics(presence, 'machine:clip')['predictivity_acc'].null_count() == 0\n"
              "print('sklearn' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "False"


def test_statistics_do_not_depend_on_row_order_or_on_how_rows_are_predicted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan's row order can change from one run to the next (a streaming join): the folds of
    predictivity follow the items, not the rows, so the numbers are the same on every run; and
    counting rows by the intervals their class wins gives what evaluating every row's model gives."""
    import curate.analyze.cues as cues

    rng = np.random.default_rng(3)
    n = 400
    presence = pl.DataFrame({
        "item_id": [f"i{i:04d}" for i in range(n) for _ in range(3)],
        "class_label": [("a", "b", "c")[i % 3] for i in range(n) for _ in range(3)],
        "attribute": ["grass", "sofa", "leash"] * n, "taxonomy_type": ["Background"] * (3 * n),
        "score": rng.random(3 * n), "own": [True] * (3 * n)}).with_columns(present=pl.col("score") > 0.6)
    shuffled = presence.sample(fraction=1.0, shuffle=True, seed=1)

    def stats(frame: pl.DataFrame) -> pl.DataFrame:
        return cue_statistics(frame, "machine:clip").sort("class_label", "attribute")

    expected = stats(presence)
    assert expected["predictivity_acc"].n_unique() > 1
    assert stats(shuffled).equals(expected)
    monkeypatch.setattr(cues, "BAND", 1e30)  # every row is near an interval's end: its model is evaluated
    assert stats(shuffled).equals(expected)


def test_the_intervals_of_a_fold_model_are_where_it_predicts_each_class() -> None:
    """``_pieces`` against the model's own argmax on a dense grid: random models of 2 to 40 classes
    (some with no training rows, equal variances, wide and narrow ones), away from the interval ends;
    swept together (models of as many classes share a sweep) and each on its own, with the same result."""
    from curate.analyze.cues import BAND, FoldModels, _pieces, _predicted

    rng = np.random.default_rng(7)
    models = []
    for trial in range(300):
        k = int(rng.integers(2, 41))
        prior = rng.dirichlet(np.ones(k))
        prior[rng.random(k) < 0.1] = 0.0  # a class absent from the training folds
        prior[0] = max(prior[0], 0.01)
        var = np.full(k, 0.3) if trial % 5 == 0 else rng.gamma(1.0, 1.0, k) ** 2 + 1e-9
        with np.errstate(divide="ignore"):
            models.append((FoldModels(np.log(prior / prior.sum())[None], rng.normal(0, 2, k)[None], var[None],
                                      np.array([-1]), 100), 0))
    together = _pieces(models)
    assert together == [_pieces([model])[0] for model in models]
    assert max(len(pieces) for pieces in together) > 3  # some models change their prediction several times
    for (model, _), pieces in zip(models, together, strict=True):
        assert pieces[0][0] == -np.inf and pieces[-1][1] == np.inf
        assert all(left[1] == right[0] and left[2] != right[2] for left, right in zip(pieces, pieces[1:], strict=False))
        x = rng.normal(0, 6, 20_000)
        ends = np.array([high for _, high, _ in pieces[:-1]])
        far = np.all(np.abs(x[:, None] - ends[None]) > BAND * np.maximum(1.0, np.abs(ends))[None], axis=1)
        by_interval = np.array([winner for _, _, winner in pieces])[np.searchsorted(ends, x, side="right")]
        by_model = _predicted(model, np.zeros(len(x), dtype=np.int64), x)
        assert (by_interval[far] == by_model[far]).all()


def test_the_evidence_is_joined_to_the_labels_by_a_table_of_the_labels() -> None:
    """Left to choose, polars' streaming join buffers up to 10M rows of both sides before it decides
    which to build its hash table on: analyze's peak memory grew with the evidence (1,047 MiB at 10M
    rows against 395 at 1M in the evidence bench). The labels, one row per item, are the build side."""
    labels = labels_frame(pl.DataFrame({"item_id": ["a"], "label": ["dog"]}))
    plan = presence_scan(pl.LazyFrame(schema=SCHEMA), labels, 0.5).explain(engine="streaming")
    assert "BUILD SIDE: ForceRight" in plan


@pytest.mark.parametrize("first_hash", ["polars", "length"])
def test_evidence_meets_the_labels_of_its_own_item_whatever_the_ids(first_hash: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Evidence meets its labels by two hashes of the id (``ID_HASHES``), not by the ids: every row
    about a labelled item, and only those, comes out with that item's position, class and fold,
    for digest ids, hand-made ids, ids that differ in one character, unlabelled items and ids the
    labels do not know; also when the first hash collides everywhere (ids of one length), which
    leaves the second to tell them apart."""
    if first_hash == "length":
        monkeypatch.setattr(cues, "ID_HASHES", (pl.col("item_id").str.len_bytes().cast(pl.UInt64).alias("id_hash"),
                                                cues.ID_HASHES[1]))
    rng = np.random.default_rng(3)
    digests = [f"{n:064x}" for n in rng.integers(0, 2**62, 300)] + ["a" * 63 + "1", "a" * 63 + "2"]
    hand_made = ["i1", "i10", "I1", "i1 ", "dog/001.jpg", "dog/001.jpeg", "ü", ""]
    ids = digests + hand_made
    items = pl.DataFrame({"item_id": ids, "label": [None if n % 7 == 0 else f"c{n % 3}" for n in range(len(ids))]})
    labels = labels_frame(items).collect()
    about = [*ids, "i2", "f" * 64, "i1  "]  # the last three are no item's
    evidence = pl.DataFrame(
        [{"item_id": item_id, "attribute": f"cue{n % 4}", "source": "clip", "run_id": "r", "role": role,
          "taxonomy_type": "Background", "score": float(rng.random()), "negative_of": "c9" if n % 5 == 0 else None}
         for n, item_id in enumerate(about) for role in (EvidenceRole.SPURIOUS.value, EvidenceRole.CORE.value)],
        schema_overrides={"negative_of": pl.String}).lazy()
    got = presence_scan(evidence, labels.lazy(), 0.5, one_run=True).collect()
    expected = (evidence.filter(pl.col("role") != EvidenceRole.CORE.value).join(labels.lazy(), on="item_id")
                .collect())
    assert sorted(zip(labels["item_id"].gather(got["item"]), got["class_label"], got["fold_key"], got["attribute"],
                      got["score"], got["own"], strict=True)) == \
        sorted(zip(expected["item_id"], expected["class_label"], expected["fold_key"], expected["attribute"],
                   expected["score"], expected["negative_of"].is_null(), strict=True))
    assert got.height == expected.height > len(digests) // 2
