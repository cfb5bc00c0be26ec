"""Options: every value converted and checked against its declared type in one place, from the CLI
(``--set key=value``) and from Python keyword arguments alike; a bad value is one line and nothing runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
from typer.testing import CliRunner

from curate.builders import BuildError, make_builder
from curate.cli import app
from curate.evaluate import EvaluateError, evaluate
from curate.ingest import SourceError, make_source
from curate.options import OptionError, check_options, convert, parse_pairs
from curate.propose import ProposeError, make_proposer
from curate.workspace import Workspace

runner = CliRunner()


@dataclass
class Example:
    flag: bool = False
    count: int = 1
    share: float = 0.5
    names: tuple[str, ...] = ()
    pair: tuple[int, float] = (0, 0.0)
    codes: tuple[int, ...] | None = None
    mode: Literal["fast", "exact"] = "fast"
    maybe: str | None = None
    where: Path | None = None


@pytest.mark.parametrize(("name", "text", "value"), [
    ("flag", "true", True), ("flag", "No", False), ("flag", "1", True), ("count", "12", 12), ("share", "0.9", 0.9),
    ("share", "3", 3.0), ("names", "a, b,c", ("a", "b", "c")), ("pair", "2,0.5", (2, 0.5)), ("codes", "1,0", (1, 0)),
    ("codes", "none", None), ("mode", "exact", "exact"), ("maybe", "null", None), ("maybe", "x", "x"),
    ("where", "a/b", Path("a/b")),
])
def test_text_is_converted_to_the_declared_type(name: str, text: str, value: object) -> None:
    converted = check_options(Example, {name: text})[name]
    assert converted == value and type(converted) is type(value)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("flag", "ture", "option flag: 'ture' is not a bool (true or false)"),
    ("flag", 1, "option flag: 1 is not a bool"),
    ("count", "1.5", "option count: '1.5' is not an integer"),
    ("share", "half", "option share: 'half' is not a number"),
    ("pair", "1,2,3", "option pair: '1,2,3' has 3 values, not 2"),
    ("codes", "1,x", "option codes: value 2: 'x' is not an integer"),
    ("mode", "globally", "option mode: 'globally' is not one of fast, exact"),
    ("nope", "1", "has no option nope; its options: codes, count, flag, maybe, mode, names, pair, share, where"),
])
def test_bad_values_are_one_line_naming_what_is_allowed(name: str, value: object, message: str) -> None:
    with pytest.raises(OptionError) as raised:
        check_options(Example, {name: value})
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_python_values_are_checked_too() -> None:
    assert check_options(Example, {"names": ["a", "b"], "share": 1, "codes": [1, 0]}) == {
        "names": ("a", "b"), "share": 1.0, "codes": (1, 0)}
    assert convert(None, int | None) is None
    with pytest.raises(OptionError, match="not a bool"):
        convert("maybe", bool)
    assert parse_pairs(["a-b=1", "c= x "]) == {"a_b": "1", "c": "x"}
    with pytest.raises(OptionError, match="key=value"):
        parse_pairs(["novalue"])


def test_the_issue_examples_through_the_api(judged: Workspace) -> None:
    with pytest.raises(BuildError, match="builder 'groups' option allow_machine: 'ture' is not a bool"):
        make_builder("groups", attribute="water", allow_machine="ture")
    with pytest.raises(BuildError, match="option balance: 'globally' is not one of within_class, all"):
        make_builder("groups", attribute="water", balance="globally")
    builder = make_builder("groups", attribute="water", classes="dog,cat", majority="1,0", allow_machine="true",
                           train_correlation="0.8")
    assert builder.majority == (1, 0) and builder.allow_machine is True and builder.classes == ("dog", "cat")
    counts = builder.build(judged).metadata["group_counts"]
    # dog's majority is now a=1 (8 left after val and test) with 2 a=0 items; cat's is a=0: 16 with 4 a=1
    assert (counts["train|y=0|a=1"], counts["train|y=0|a=0"]) == (8, 2)
    assert (counts["train|y=1|a=0"], counts["train|y=1|a=1"]) == (16, 4)
    with pytest.raises(BuildError, match="majority gives the majority a .* of each of the 2 classes"):
        make_builder("groups", attribute="water", classes="dog,cat", majority="1,0,1").build(judged)
    with pytest.raises(BuildError, match="option stage: 'atack' is not one of candidates, bank, attack"):
        make_builder("logobank", stage="atack")
    with pytest.raises(ProposeError, match="option batch_size: 'lots' is not an integer"):
        make_proposer("clip", batch_size="lots")
    with pytest.raises(SourceError, match="option allow_absolute: 'sure' is not a bool"):
        make_source("manifest", "list.csv", allow_absolute="sure")


def test_evaluator_options_are_checked_before_anything_runs(tmp_path: Path, workspace: Workspace) -> None:
    path = tmp_path / "p.csv"
    pl.DataFrame({"y": [0, 1], "a": [0, 1], "pred": [0, 1]}).write_csv(path)
    with pytest.raises(EvaluateError, match="option missing: 'skip' is not one of error, wrong"):
        evaluate(workspace, "groups", path, missing="skip")
    with pytest.raises(EvaluateError, match="option bootstrap: 'many' is not an integer"):
        evaluate(workspace, "groups", path, bootstrap="many")
    assert workspace.runs.list("evaluate") == []
    assert evaluate(workspace, "groups", path, bootstrap="10").metrics["ci_resamples"] == 10


@pytest.mark.parametrize(("setting", "message"), [
    ("allow_machine=ture", "option allow_machine: 'ture' is not a bool (true or false)"),
    ("balance=globally", "option balance: 'globally' is not one of within_class, all"),
    ("majority=1,x", "option majority: value 2: 'x' is not an integer"),
])
def test_the_issue_examples_through_the_cli(judged: Workspace, tmp_path: Path,
                                            setting: str, message: str) -> None:
    out = tmp_path / "rel"
    result = runner.invoke(app, ["build", "groups", "--out", str(out), "--set", "attribute=water",
                                 "--set", setting, "-w", str(judged.root)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not out.exists() and judged.runs.list("build") == []  # nothing ran


def test_a_good_majority_builds_through_the_cli(judged: Workspace, tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "groups", "--out", str(tmp_path / "rel"), "--set", "attribute=water",
                                 "--set", "classes=dog,cat", "--set", "majority=1,0", "--set", "balance=all",
                                 "--set", "train_correlation=0.8",
                                 "--set", "allow_machine=false", "-w", str(judged.root)])
    assert result.exit_code == 0, result.output
    manifest = (tmp_path / "rel" / "release.json").read_text()
    assert '"majority": [\n      1,\n      0\n    ]' in manifest and '"balance": "all"' in manifest
