"""Every metric against values worked out by hand on small tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.evaluate import EVALUATIONS_TABLE, EvaluateError, evaluate
from curate.evaluate.metrics import focus_metrics, group_metrics, mcq_metrics, parse_choice, spurious_score
from curate.workspace import Workspace


def _groups_table() -> pl.DataFrame:
    train = [(0, 0)] * 6 + [(0, 1)] * 2 + [(1, 0)] + [(1, 1)]
    test = {(0, 0): [1, 1, 1, 0], (0, 1): [1, 0], (1, 0): [0, 0], (1, 1): [1, 1]}  # 1 = correct
    rows = [{"split": "train", "y": y, "a": a, "pred": None} for y, a in train]
    for (y, a), outcomes in test.items():
        rows += [{"split": "test", "y": y, "a": a, "pred": y if ok else 1 - y} for ok in outcomes]
    return pl.DataFrame(rows)


def test_group_metrics_by_hand(tmp_path: Path, workspace: Workspace) -> None:
    table = _groups_table()
    test = table.filter(pl.col("split") == "test")
    metrics = group_metrics(test, train_counts={(0, 0): 6, (0, 1): 2, (1, 0): 1, (1, 1): 1},
                            value_names={"y": ["landbird", "waterbird"], "a": ["land", "water"]})
    assert metrics["acc_avg"] == pytest.approx(0.6)
    assert metrics["acc_wg"] == 0.0
    assert metrics["acc_group_balanced"] == pytest.approx((0.75 + 0.5 + 0.0 + 1.0) / 4)
    assert metrics["acc_train_adjusted"] == pytest.approx(0.75 * 0.6 + 0.5 * 0.2 + 0.0 * 0.1 + 1.0 * 0.1)
    assert metrics["acc_class_balanced"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert metrics["acc_y:landbird_a:land"] == 0.75 and metrics["count_y:landbird_a:land"] == 4
    assert metrics["acc_y:waterbird_a:land"] == 0.0 and metrics["count_y:waterbird_a:water"] == 2

    # the same through the registry, with training counts read from the train rows
    path = tmp_path / "predictions.parquet"
    table.write_parquet(path)
    result = evaluate(workspace, "groups", path)
    assert result.metrics["acc_train_adjusted"] == pytest.approx(0.65)
    assert result.metrics["acc_y:0_a:1"] == 0.5
    stored = json.loads(workspace.tables.read(EVALUATIONS_TABLE)["metrics"][0])
    assert stored == pytest.approx(result.metrics)
    assert "acc_wg 0.0000" in result.summary()


def test_group_metrics_refuse_missing_groups_and_columns(tmp_path: Path, workspace: Workspace) -> None:
    test = _groups_table().filter(pl.col("split") == "test")
    with pytest.raises(ValueError, match="no test predictions"):
        group_metrics(test, train_counts={(0, 0): 1, (2, 0): 5})
    path = tmp_path / "p.csv"
    test.drop("pred").write_csv(path)
    with pytest.raises(EvaluateError, match="no column pred"):
        evaluate(workspace, "groups", path)
    with pytest.raises(EvaluateError, match="unknown evaluation 'nope'"):
        evaluate(workspace, "nope", path)


def test_mcq_metrics_by_hand() -> None:
    frame = pl.DataFrame({
        "answer": ["A", "B", "D"],
        "prediction": ["A. the ears", "c", " d"],
        "spurious_correlation_type": [["Background", "Shape"], ["Background", "Orientation"],
                                      ["Texture and Noise", "Shape"]],
    })
    metrics = mcq_metrics(frame)
    assert metrics["acc_avg"] == pytest.approx(2 / 3)
    assert metrics["acc_type:Background"] == 0.5 and metrics["count_type:Background"] == 2
    assert metrics["acc_type:Shape"] == 1.0 and metrics["acc_type:Orientation"] == 0.0
    assert metrics["acc_type:Texture and Noise"] == 1.0


def test_focus_metrics_by_hand() -> None:
    frame = pl.DataFrame({
        "correct": [1, 1, 0, 1, 0, 1], "n_uncommon": [0, 0, 1, 1, 2, 3],
        "uncommon_time": [False, False, True, False, True, True],
        "uncommon_weather": [False, False, False, True, False, True],
        "uncommon_locations": [False, False, False, False, True, True],
    })
    metrics = focus_metrics(frame)
    assert [metrics[f"acc_uncommon:{n}"] for n in range(4)] == [1.0, 0.5, 0.0, 1.0]
    assert [metrics[f"count_uncommon:{n}"] for n in range(4)] == [2, 2, 1, 1]
    assert metrics["gap_time"] == pytest.approx(1 / 3 - 1.0)
    assert metrics["gap_weather"] == pytest.approx(1.0 - 0.5)
    assert metrics["gap_locations"] == pytest.approx(0.5 - 0.75)


def test_spurious_imagenet_reports_ap_and_auc_by_hand(tmp_path: Path, workspace: Workspace) -> None:
    assert spurious_score([0.9, 0.8], [0.1, 0.85]) == {"ap": pytest.approx((1 + 2 / 3) / 2), "roc_auc": 0.75,
                                                       "n_positive": 2, "n_negative": 2}
    path = tmp_path / "scores.jsonl"
    pl.DataFrame({"class_label": ["k1"] * 4 + ["k2"] * 3, "score": [0.9, 0.8, 0.1, 0.85, 0.7, 0.2, 0.3],
                  "kind": ["real", "real", "spurious", "spurious", "real", "spurious", "spurious"]}).write_ndjson(path)
    metrics = evaluate(workspace, "spurious-imagenet", path).metrics
    assert metrics["ap_class:k2"] == 1.0 and metrics["roc_auc_class:k1"] == 0.75
    assert metrics["ap_mean"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert metrics["roc_auc_mean"] == pytest.approx(0.875)
    with pytest.raises(ValueError, match="at least one positive"):
        spurious_score([], [0.1])


def test_evaluating_the_same_file_twice_is_one_run(tmp_path: Path, workspace: Workspace) -> None:
    path = tmp_path / "p.parquet"
    _groups_table().write_parquet(path)
    first = evaluate(workspace, "groups", path)
    second = evaluate(workspace, "groups", path)
    assert first.run.run_id == second.run.run_id
    assert workspace.tables.read(EVALUATIONS_TABLE).height == 1


def test_missing_predictions_are_an_error_unless_counted_wrong(tmp_path: Path, workspace: Workspace) -> None:
    rows = _groups_table().filter(pl.col("split") == "test")
    half_missing = rows.with_columns(pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.col("pred")).alias("pred"))
    path = tmp_path / "half.csv"
    half_missing.write_csv(path)
    with pytest.raises(EvaluateError, match="5 of 10 rows have no pred; .* missing=wrong"):
        evaluate(workspace, "groups", path)
    metrics = evaluate(workspace, "groups", path, missing="wrong").metrics
    kept = half_missing.filter(pl.col("pred").is_not_null())
    assert metrics["missing_predictions"] == 5 and metrics["count"] == 10
    assert metrics["acc_avg"] == pytest.approx(float((kept["pred"] == kept["y"]).sum()) / 10)
    # the metric functions themselves count a missing answer as wrong, never skip it
    assert group_metrics(pl.DataFrame({"y": [1, 1], "a": [0, 0], "pred": [1, None]}))["acc_avg"] == 0.5
    focus = pl.DataFrame({"correct": [1, None], "n_uncommon": [0, 0]})
    assert focus_metrics(focus)["acc_avg"] == 0.5 and focus_metrics(focus)["missing_predictions"] == 1


CHOICES = ["A. compact design", "B. round shape", "C. marble-like background", "D. shiny surface"]


@pytest.mark.parametrize("answer", ["B", "b", "(B)", "B.", "B)", "Answer: B", "answer: (B)", "the answer is B",
                                    "The correct answer is B.", "round shape", "Round shape.",
                                    "B. round shape", "It is the round shape of the bottle."])
def test_mcq_answers_are_read_in_every_common_form(answer: str) -> None:
    frame = pl.DataFrame({"answer": ["B"], "prediction": [answer], "choices": [CHOICES],
                          "spurious_correlation_type": [["Shape", "Background"]]})
    assert parse_choice(answer, CHOICES) == "B"
    assert mcq_metrics(frame)["acc_avg"] == 1.0


@pytest.mark.parametrize("answer", ["A dog's bottle", "C", "I cannot tell", "", "round shape or shiny surface"])
def test_mcq_answers_that_name_another_or_no_choice_are_wrong(answer: str) -> None:
    assert parse_choice(answer, CHOICES) != "B"
    frame = pl.DataFrame({"answer": ["B"], "prediction": [answer], "choices": [CHOICES],
                          "spurious_correlation_type": [["Shape", "Background"]]})
    assert mcq_metrics(frame)["acc_avg"] == 0.0


def test_mcq_null_predictions_and_literal_string_lists(tmp_path: Path, workspace: Workspace) -> None:
    # as in the released MM-SpuBench files: lists stored as Python-literal strings
    frame = pl.DataFrame({"answer": ["B", "A", "C"], "prediction": ["Answer: B", None, "(C)"],
                          "choices": [str(CHOICES)] * 3,
                          "spurious_correlation_type": ["['Shape', 'Background']", "['Shape', 'Color']",
                                                        "['Background', 'Color']"]})
    metrics = mcq_metrics(frame)
    assert metrics["acc_avg"] == pytest.approx(2 / 3) and metrics["missing_predictions"] == 1
    assert metrics["acc_type:Shape"] == 0.5 and metrics["acc_type:Color"] == 0.5
    assert metrics["acc_type:Background"] == 1.0 and metrics["count_type:Background"] == 2
    path = tmp_path / "answers.jsonl"
    frame.write_ndjson(path)
    with pytest.raises(EvaluateError, match="1 of 3 rows have no prediction"):
        evaluate(workspace, "mcq", path)
    assert evaluate(workspace, "mcq", path, missing="wrong").metrics["acc_avg"] == pytest.approx(2 / 3)


def test_worst_class_accuracy_by_hand() -> None:
    test = _groups_table().filter(pl.col("split") == "test")  # class 0: 4 of 6 right, class 1: 2 of 4
    metrics = group_metrics(test)
    assert metrics["acc_wc"] == pytest.approx(0.5)
    assert metrics["acc_class_balanced"] == pytest.approx((4 / 6 + 2 / 4) / 2)


def test_bootstrap_intervals_are_seeded_and_match_resampling_items() -> None:
    outcomes = {(0, 0): (30, 40), (0, 1): (6, 10), (1, 0): (5, 10), (1, 1): (40, 40)}  # (correct, n)
    rows = [{"y": y, "a": a, "pred": y if i < k else 1 - y} for (y, a), (k, n) in outcomes.items() for i in range(n)]
    frame = pl.DataFrame(rows)
    metrics = group_metrics(frame, bootstrap=4000, seed=7)
    assert metrics == group_metrics(frame, bootstrap=4000, seed=7)  # the same seed, the same intervals
    assert metrics["ci_low_acc_y:1_a:1"] == metrics["ci_high_acc_y:1_a:1"] == 1.0  # all right in every resample
    for key in ("acc_avg", "acc_wg", "acc_wc", "acc_y:0_a:1"):
        assert metrics[f"ci_low_{key}"] <= metrics[key] <= metrics[f"ci_high_{key}"]
    # the same intervals as resampling the items themselves, within each group
    rng = np.random.default_rng(0)
    correct = {g: np.r_[np.ones(k), np.zeros(n - k)] for g, (k, n) in outcomes.items()}
    draws = [{g: rng.choice(c, c.size).mean() for g, c in correct.items()} for _ in range(4000)]
    for key, value in (("acc_wg", [min(d.values()) for d in draws]), ("acc_y:0_a:0", [d[(0, 0)] for d in draws])):
        low, high = np.quantile(value, [0.025, 0.975])
        assert metrics[f"ci_low_{key}"] == pytest.approx(low, abs=0.03)
        assert metrics[f"ci_high_{key}"] == pytest.approx(high, abs=0.03)
    assert not any(key.startswith("ci_") for key in group_metrics(frame, bootstrap=0))


def test_missing_predictions_through_the_cli(tmp_path: Path, workspace: Workspace) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    path = tmp_path / "p.csv"
    pl.DataFrame({"y": [0, 0, 1, 1], "a": [0, 1, 0, 1], "pred": [0, None, 1, None]}).write_csv(path)
    refused = CliRunner().invoke(app, ["evaluate", "groups", str(path), "-w", str(workspace.root)])
    assert refused.exit_code == 2 and "2 of 4 rows have no pred" in " ".join(refused.output.split())
    counted = CliRunner().invoke(app, ["evaluate", "groups", str(path), "--set", "missing=wrong",
                                       "-w", str(workspace.root)])
    assert counted.exit_code == 0, counted.output
    assert "acc_avg 0.5000" in counted.output and "2 missing predictions counted wrong" in counted.output
