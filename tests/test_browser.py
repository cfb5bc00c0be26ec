"""A verification round through an annotator's eyes: real photos, the workspace's own Label Studio,
and headless Chromium logged in as an annotator."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TaskPage, login, open_annotator_stream
from PIL import Image

from annotation import rounds, server
from curate.ingest import FolderSource, ingest
from curate.records import Evidence, EvidenceRole
from curate.workspace import Workspace

CUES = {"leash": 0.9, "grass": 0.06}
PHOTOS = ("astronaut", "chelsea", "coffee")


@pytest.fixture
def round_workspace(tmp_path: Path, photos: dict[str, Path]) -> Iterator[Workspace]:
    """Three real photos as class ``scene``, with detector evidence for two cues; the workspace's
    server runs for the test."""
    for name in PHOTOS:
        (tmp_path / "img" / "scene").mkdir(parents=True, exist_ok=True)
        shutil.copy(photos[name], tmp_path / "img" / "scene" / photos[name].name)
    workspace = Workspace.init(tmp_path / "ws")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    workspace.catalog.add_evidence(Evidence(item.item_id, cue, "detector", "propose-1", EvidenceRole.CANDIDATE,
                                            "Background", score)
                                   for item in workspace.catalog.items() for cue, score in CUES.items())
    server.serve(workspace.root)
    try:
        yield workspace
    finally:
        server.stop(workspace.root)


def test_an_annotator_sees_named_prefills_answers_in_the_browser_and_pull_reads_it(
        round_workspace: Workspace, browser: Any, photos: dict[str, Path], tmp_path: Path) -> None:
    annotator = server.add_annotator(round_workspace.root, "ann@example.org")
    connection = server.connection(round_workspace.root)
    report = rounds.push(round_workspace, connection, rounds.RoundSpec("browser-1", budget=3, threshold=0.5))
    assert report.counts["tasks_pushed"] == 3

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        login(page, connection.url, annotator.email, annotator.password)
        task: TaskPage = open_annotator_stream(page, connection.url, report.project_id)
        page.screenshot(path=str(tmp_path / "annotator-stream.png"), full_page=True)
        rows = [t for t in page.locator("h4").all_inner_texts() if t.split(" (")[0] in CUES]
        groups = page.locator(".lsf-choices_layout_inline")
        prefilled = [groups.nth(i).locator(".ant-radio-wrapper-checked").inner_text().split("[")[0].strip()
                     for i in range(len(rows))]
        groups.nth(1).get_by_text("spurious", exact=False).first.click()  # correct the second row: one click
        with page.expect_response(lambda r: "/annotations" in r.url and r.request.method == "POST"):
            page.get_by_test_id("bottombar-submit-button").click()
        page.screenshot(path=str(tmp_path / "after-submit.png"), full_page=True)
    finally:
        page.close()

    assert task.image_width in {Image.open(photos[name]).width for name in PHOTOS}, "the task image did not load"
    assert task.failed_images == [], task.failed_images
    assert task.image_url.split("?d=")[1].startswith("images/")
    # every attribute by name and type, its machine guess pre-filled beside it (0.9 >= 0.5 > 0.06)
    assert rows == ["leash (Background)", "grass (Background)"]
    assert prefilled == ["spurious", "not present"]
    pulled = rounds.pull(round_workspace, connection, rounds.RoundSpec("browser-1", budget=3, threshold=0.5))
    assert pulled.counts["annotated_tasks"] == 1 and pulled.counts["rejected_annotations"] == 0
    answers = {(v.attribute, v.value, v.annotator) for v in round_workspace.catalog.verdicts("browser-1")}
    assert answers == {("leash", "spurious", "ann@example.org"), ("grass", "spurious", "ann@example.org")}


def test_box_mcq_setting_and_logo_reviews_show_their_question_beside_the_image(
        round_workspace: Workspace, browser: Any, tmp_path: Path) -> None:
    import polars as pl

    item = next(round_workspace.catalog.items())
    width, height = item.display_size
    round_workspace.catalog.add_evidence([Evidence(item.item_id, "saucer", "detector", "propose-1",
                                                   EvidenceRole.CANDIDATE, "Co-occurring Objects", 0.4,
                                                   [[0.1 * width, 0.1 * height, 0.6 * width, 0.6 * height, 0.4]])])
    pl.DataFrame({"item_id": [item.item_id], "question": ["Which feature best indicates what this is?"],
                  "choices": [["A. a cup", "B. a table", "C. a spoon", "D. daylight"]], "answer": ["A"]}
                 ).write_parquet(tmp_path / "mcq.parquet")
    pl.DataFrame({"item_id": [item.item_id], "time": ["day"], "weather": ["none"], "locations": ["indoors"]}
                 ).write_csv(tmp_path / "settings.csv")
    pl.DataFrame({"item_id": [item.item_id]}).write_csv(tmp_path / "logos.csv")
    pl.DataFrame({"item_id": [item.item_id], "class_label": ["rocket"], "cue": ["saucer"]}
                 ).write_csv(tmp_path / "spurious-only.csv")
    connection = server.connection(round_workspace.root)
    shown = {"boxes": ("Fix the boxes of: saucer", "boxes correct"),
             "mcq": ("Which feature best indicates what this is?", "answer wrong"),
             "setting": ("Check the setting of the image", "Weather", "partly cloudy"),
             "logo": ("not a logo", "logo"),
             "spurious-only": ("Is there saucer in the image?", "Is there a rocket")}  # the pair's class
    units = {"mcq": "mcq.parquet", "setting": "settings.csv", "logo": "logos.csv", "spurious-only": "spurious-only.csv"}
    admin = server.admin_login(round_workspace.root)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        login(page, connection.url, admin.email, admin.password)
        for kind, texts in shown.items():
            spec = rounds.RoundSpec(f"{kind}-look", kind=kind, units=str(tmp_path / units[kind]) if kind in units
                                    else None)
            report = rounds.push(round_workspace, connection, spec)
            task: TaskPage = open_annotator_stream(page, connection.url, report.project_id)
            page.screenshot(path=str(tmp_path / f"{kind}.png"))
            assert task.image_width == width and task.failed_images == [], kind
            for text in texts:  # in view beside the image, not below the fold
                box = page.get_by_text(text, exact=False).first.bounding_box()
                assert box is not None and box["y"] + box["height"] < 900, (kind, text)
            if kind == "boxes":
                assert page.locator(".lsf-outliner-item, [class*=outliner] [class*=item]").count() >= 1
    finally:
        page.close()
