from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from curate.cli import app
from curate.workspace import SCHEMA_VERSION

runner = CliRunner()


def _all_command_paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(command: object, prefix: list[str]) -> None:
        paths.append(prefix)
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            for name, sub in command.commands.items():
                walk(sub, [*prefix, name])

    walk(get_command(app), [])
    return paths


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "curate")
def test_every_command_has_help(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_the_road_so_far_through_the_cli(tmp_path: Path, write_image: Callable[..., Path]) -> None:
    ws = str(tmp_path / "ws")
    write_image(tmp_path / "img" / "cat" / "1.png", 1)
    write_image(tmp_path / "img" / "dog" / "2.png", 2)
    (tmp_path / "img" / "dog" / "3.png").write_bytes(b"")
    pl.DataFrame({"path": ["img/cat/1.png", "img/dog/2.png"], "label": ["cat", "dog"]}).write_csv(tmp_path / "m.csv")

    init = runner.invoke(app, ["init", ws])
    assert init.exit_code == 0 and f"schema v{SCHEMA_VERSION}" in init.output
    folder = runner.invoke(app, ["ingest", "folder", str(tmp_path / "img"), "-w", ws, "--license", "CC0-1.0"])
    assert folder.exit_code == 0, folder.output
    assert "2 new items" in folder.output and "1 quarantined (empty 1)" in folder.output
    manifest = runner.invoke(app, ["ingest", "manifest", str(tmp_path / "m.csv"), "-w", ws])
    assert manifest.exit_code == 0 and "2 duplicates" in manifest.output

    status = runner.invoke(app, ["status", "-w", ws])
    assert status.exit_code == 0
    assert status.output.strip().splitlines()[-1].startswith("2 items in 2 classes from 2 sources; 1 quarantined")

    runs = runner.invoke(app, ["runs", "-w", ws])
    assert runs.exit_code == 0 and runs.output.strip().endswith("2 runs")
    listed = runner.invoke(app, ["runs", "--stage", "ingest", "-w", ws])
    first_id = next(line.split()[1] for line in listed.output.splitlines() if "ingest-" in line)
    shown = runner.invoke(app, ["runs", "show", first_id, "-w", ws])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.output[: shown.output.rindex("}") + 1])
    assert body["stage"] == "ingest" and body["config"]["source"]["kind"] in ("folder", "manifest")

    held = runner.invoke(app, ["quarantine", "-w", ws])
    assert "dog/3.png" in held.output and held.output.strip().endswith("1 quarantined entries")
    export = runner.invoke(app, ["export", "items", str(tmp_path / "items.parquet"), "-w", ws])
    assert export.exit_code == 0 and pl.read_parquet(tmp_path / "items.parquet").height == 2


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["status", "-w", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "curate init" in missing.output
    runner.invoke(app, ["init", str(tmp_path / "ws")])
    bad_source = runner.invoke(app, ["ingest", "folder", str(tmp_path / "nope"), "-w", str(tmp_path / "ws")])
    assert bad_source.exit_code == 2 and "no folder" in bad_source.output
    bad_run = runner.invoke(app, ["runs", "show", "zzz", "-w", str(tmp_path / "ws")])
    assert bad_run.exit_code == 2 and "no run matches" in bad_run.output
    assert "Traceback" not in bad_source.output + bad_run.output


def test_propose_and_inspect_evidence_through_the_cli(tmp_path: Path, write_image: Callable[..., Path],
                                                      tiny_clip: str) -> None:
    ws = str(tmp_path / "ws")
    for seed in range(3):
        write_image(tmp_path / "img" / "cat" / f"{seed}.png", seed)
    runner.invoke(app, ["init", ws])
    runner.invoke(app, ["ingest", "folder", str(tmp_path / "img"), "-w", ws, "-q"])
    priors = runner.invoke(app, ["propose", "priors", "--set", "types=Background,Lighting and Shadows", "-w", ws])
    assert priors.exit_code == 0, priors.output
    assert "propose priors: 20 cues" in priors.output
    clip = runner.invoke(app, ["propose", "--proposer", "clip", "--model", tiny_clip, "--set", "batch_size=2",
                               "-w", ws, "-q"])
    assert clip.exit_code == 0, clip.output
    assert "60 evidence, 3 items" in clip.output
    shown = runner.invoke(app, ["evidence", "--source", "clip", "--limit", "5", "-w", ws])
    assert shown.output.strip().endswith("60 evidence rows (showing 5)")
    queried = runner.invoke(app, ["evidence", "--source", "clip", "--out", str(tmp_path / "q.csv"), "-w", ws])
    assert queried.exit_code == 0 and pl.read_csv(tmp_path / "q.csv").height == 60
    listed = runner.invoke(app, ["cues", "--class", "cat", "-w", ws])
    assert listed.output.strip().endswith("20 cues for 1 classes")
    export = runner.invoke(app, ["export", "evidence", str(tmp_path / "e.parquet"), "--source", "clip", "-w", ws])
    assert export.exit_code == 0 and pl.read_parquet(tmp_path / "e.parquet").height == 60
    assert runner.invoke(app, ["models", "--family", "yoloe"]).output.strip().endswith("2 models")
    bad = runner.invoke(app, ["propose", "clip", "--set", "nonsense=1", "-w", ws])
    assert bad.exit_code == 2 and "no option nonsense" in bad.output
    offline = runner.invoke(app, ["propose", "clip", "-w", ws])
    assert offline.exit_code == 2 and "hf download" in offline.output


def test_evaluate_through_the_cli(tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    runner.invoke(app, ["init", ws])
    pl.DataFrame({"y": [0, 0, 1, 1], "a": [0, 1, 0, 1], "pred": [0, 1, 1, 1], "split": ["val"] * 4}).write_csv(
        tmp_path / "p.csv")
    result = runner.invoke(app, ["evaluate", "groups", str(tmp_path / "p.csv"), "--set", "eval_split=val",
                                 "--out", str(tmp_path / "m.json"), "-w", ws])
    assert result.exit_code == 0, result.output
    assert "evaluate groups: acc_avg 0.7500, acc_wg 0.0000" in result.output
    assert json.loads((tmp_path / "m.json").read_text())["acc_y:0_a:1"] == 0.0
    wrong = runner.invoke(app, ["evaluate", "groups", str(tmp_path / "p.csv"), "-w", ws])
    assert wrong.exit_code == 2 and "no rows with split == 'test'" in wrong.output


def test_analyze_and_report_through_the_cli(tmp_path: Path, write_image: Callable[..., Path],
                                            tiny_clip: str) -> None:
    ws = str(tmp_path / "ws")
    for label in ("cat", "dog"):
        for seed in range(3):
            write_image(tmp_path / "img" / label / f"{seed}.png", seed + (10 if label == "dog" else 0))
    runner.invoke(app, ["init", ws])
    runner.invoke(app, ["ingest", "folder", str(tmp_path / "img"), "-w", ws, "-q"])
    runner.invoke(app, ["propose", "priors", "--set", "types=Background", "-w", ws])
    runner.invoke(app, ["propose", "clip", "--model", tiny_clip, "-w", ws, "-q"])
    analyzed = runner.invoke(app, ["analyze", "--source", "clip", "--top", "2", "-w", ws])
    assert analyzed.exit_code == 0, analyzed.output
    assert "analyze machine:clip: 30 (class, cue) rows for 2 classes, 3 pictures" in analyzed.output
    written = runner.invoke(app, ["report", "--format", "html", "-w", ws])
    assert written.exit_code == 0 and (tmp_path / "ws" / "reports" / "report.html").is_file()
    nothing = runner.invoke(app, ["analyze", "--source", "detector", "-w", ws])
    assert nothing.exit_code == 2 and "no evidence from 'detector'" in nothing.output


def test_error_messages_with_brackets_are_printed_whole(tmp_path: Path) -> None:
    runner.invoke(app, ["init", str(tmp_path / "ws")])
    manifest = tmp_path / "m.csv"
    pl.DataFrame({"path": ["a.png"]}).write_csv(manifest)
    result = runner.invoke(app, ["ingest", "manifest", str(manifest), "--label-column", "[species]",
                                 "-w", str(tmp_path / "ws")])
    assert result.exit_code == 2 and "label_column='[species]'" in result.output


def test_the_cli_starts_without_torch_or_the_label_studio_sdk() -> None:
    import subprocess
    import sys

    code = ("import sys, curate.cli; "
            "print(sorted(m for m in ('torch', 'ultralytics', 'openai', 'label_studio_sdk') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"  # heavy modules load inside the commands that need them


def test_a_long_key_does_not_squeeze_the_values_out_of_a_table() -> None:
    """`curate annotate status` showed every figure with an empty value at 80 columns: a pair of
    annotators' e-mails made the first column wider than the terminal."""
    from rich.console import Console

    from curate.cli import _table

    console = Console(width=80, record=True)
    console.print(_table("round r", ["figure", "value"], [
        ["krippendorff_alpha", "0.632"],
        ["cohen_kappa:sim-1@simulated.curate.invalid|sim-2@simulated.curate.invalid", "0.631"]]))
    text = console.export_text()
    assert "0.632" in text and "0.631" in text
    assert "sim-2@simulated" in text and "invalid" in text  # the long key folds onto a second line, whole
