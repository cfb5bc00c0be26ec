"""Running a completed build or publish again reports its rows once, not once per run."""

from __future__ import annotations

from pathlib import Path

from curate.builders import build, make_builder
from curate.publish import publish
from curate.workspace import Workspace


def test_a_completed_build_and_publish_run_again_count_their_rows_once(judged: Workspace,
                                                                      tmp_path: Path) -> None:
    builder = make_builder("groups", attribute="water", classes=("dog", "cat"), train_correlation=0.9)
    first = build(judged, builder, tmp_path / "release")
    again = build(judged, builder, tmp_path / "release")
    assert again.run.run_id == first.run.run_id
    assert again.run.counts == first.run.counts == {f"rows_{k}": v for k, v in first.release.counts().items()}
    published = publish(judged, tmp_path / "release", f"folder:{tmp_path / 'hub'}", license="CC0-1.0")
    republished = publish(judged, tmp_path / "release", f"folder:{tmp_path / 'hub'}", license="CC0-1.0")
    assert republished.run.run_id == published.run.run_id
    assert republished.run.counts["rows"] == published.run.counts["rows"] == sum(first.release.counts().values())
    assert republished.run.counts["files_changed"] == 0
