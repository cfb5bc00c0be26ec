"""The logo bank: paste geometry, mining with near-duplicates, the verified bank, flip rates by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from curate.analyze.cues import wilson
from curate.builders import BuildError, build, make_builder
from curate.builders.logobank import paste_logo
from curate.ingest import FolderSource, ingest
from curate.propose import make_proposer, propose
from curate.records import Evidence, EvidenceRole, Verdict
from curate.workspace import Workspace


def test_paste_geometry_at_every_corner() -> None:
    base = Image.new("RGB", (200, 100), (128, 128, 128))
    logo = Image.new("RGBA", (40, 20), (255, 0, 0, 255))
    for corner, inside, outside in (("top-left", (2, 2), (2, 13)), ("top-right", (197, 2), (176, 2)),
                                    ("bottom-left", (2, 97), (2, 86)), ("bottom-right", (197, 97), (176, 97))):
        pasted = paste_logo(base, logo, corner, scale=0.2, margin=0.02)  # 20 x 10 logo, 2 px from the edges
        assert pasted.getpixel(inside) == (255, 0, 0), corner
        assert pasted.getpixel(outside) == (128, 128, 128), corner
        assert np.asarray(pasted).reshape(-1, 3).tolist().count([255, 0, 0]) == 20 * 10
    see_through = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert paste_logo(base, see_through, "top-left", 0.2, 0).getpixel((1, 1)) == (128, 128, 128)
    with pytest.raises(BuildError, match="corner"):
        paste_logo(base, logo, "middle", 0.2)


@pytest.fixture
def pool(workspace: Workspace, tmp_path: Path) -> tuple[Workspace, dict[str, str]]:
    """Red 'logos' (one a near-duplicate), and gray photos of dogs and cats."""
    folder = tmp_path / "pool"
    (folder / "dog").mkdir(parents=True)
    (folder / "cat").mkdir()
    red = np.full((32, 32, 3), (220, 10, 10), dtype=np.uint8)
    Image.fromarray(red).save(folder / "logo-a.png")
    near = red.copy()
    near[0, 0] = (221, 10, 10)
    Image.fromarray(near).save(folder / "logo-a-copy.png")
    Image.fromarray(np.full((32, 32, 3), (10, 10, 220), dtype=np.uint8)).save(folder / "logo-b.png")
    for index in range(3):
        Image.new("RGB", (64, 48), (100 + index, 100, 100)).save(folder / "dog" / f"{index}.png")
        Image.new("RGB", (64, 48), (60 + index, 60, 60)).save(folder / "cat" / f"{index}.png")
    ingest(workspace, FolderSource(folder), progress=False)
    return workspace, {ref.locator: ref.item_id for ref in workspace.catalog.references()}


def test_mining_candidates_drop_near_duplicates(pool: tuple[Workspace, dict[str, str]], tiny_clip: str,
                                                tmp_path: Path) -> None:
    workspace, ids = pool
    mined = propose(workspace, make_proposer("logo-mining", model=tiny_clip), progress=False)
    assert mined.counts["items"] == 9  # labelled or not, the whole pool is scored
    workspace.catalog.add_evidence([Evidence(i, "logo", "hand-scores", "r", EvidenceRole.CANDIDATE, None, s)
                                    for i, s in ((ids["logo-a.png"], 0.9), (ids["logo-a-copy.png"], 0.8),
                                                 (ids["logo-b.png"], 0.7), (ids["dog/0.png"], 0.1))])
    result = build(workspace, make_builder("logobank", mining_source="hand-scores", keep_fraction=0.75,
                                           embeddings_model=tiny_clip), tmp_path / "candidates")
    frame = result.release.tables["candidates"]
    assert frame["item_id"].to_list() == [ids["logo-a.png"], ids["logo-b.png"]]
    assert result.release.metadata["near_duplicates_dropped"] == 1
    assert result.release.metadata["near_duplicates"]["skipped"] is False
    assert result.release.metadata["near_duplicates"]["summary"].startswith("1 near-duplicates dropped")
    assert pl.read_csv(tmp_path / "candidates" / "units.csv")["item_id"].to_list() == frame["item_id"].to_list()


def _bank_ready(workspace: Workspace, ids: dict[str, str]) -> None:
    workspace.catalog.add_evidence([Evidence(i, "logo", "hand-scores", "r", EvidenceRole.CANDIDATE, None, s)
                                    for i, s in ((ids["logo-a.png"], 0.9), (ids["logo-b.png"], 0.8))])
    workspace.catalog.add_verdicts([
        Verdict(ids["logo-a.png"], "is_logo", "ann", "logos-1", "logo", extra={"brand": "Acme"}),
        Verdict(ids["logo-a.png"], "is_logo", "bob", "logos-1", "logo"),
        Verdict(ids["logo-b.png"], "is_logo", "ann", "logos-1", "not a logo")])


def test_the_bank_keeps_what_people_confirmed(pool: tuple[Workspace, dict[str, str]], tmp_path: Path) -> None:
    workspace, ids = pool
    _bank_ready(workspace, ids)
    result = build(workspace, make_builder("logobank", stage="bank", mining_source="hand-scores", keep_fraction=1.0,
                                           verdict_round="logos-1"), tmp_path / "bank")
    bank = result.release.tables["bank"]
    assert bank["item_id"].to_list() == [ids["logo-a.png"]] and bank["brand"].to_list() == ["Acme"]
    # no embeddings were stored, so near-duplicates could not be looked for: the release says so
    recorded = json.loads((tmp_path / "bank" / "release.json").read_text())["near_duplicates"]
    assert recorded["skipped"] is True and recorded["summary"].startswith("near-duplicate removal skipped")
    assert Image.open(tmp_path / "bank" / "logos" / "logo-0000.png").size == (32, 32)


def test_flip_rates_by_hand(pool: tuple[Workspace, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
                            tiny_clip: str) -> None:
    from curate.analyze.gap import ClipZeroShot

    workspace, ids = pool
    _bank_ready(workspace, ids)

    def red_top_left_means_dog(self: ClipZeroShot, images: list[Image.Image], classes: list[str]) -> list[str]:
        return ["dog" if image.getpixel((2, 2))[0] > 200 else "cat" for image in images]

    monkeypatch.setattr(ClipZeroShot, "predict", red_top_left_means_dog)
    release = make_builder("logobank", stage="attack", mining_source="hand-scores", keep_fraction=1.0,
                           verdict_round="logos-1", target="dog", model=tiny_clip).build(workspace)
    attack, ranking = release.tables["attack"], release.tables["ranking"]
    assert attack.height == 1 * 6 * 4  # one banked logo, 3 dog + 3 cat images, 4 corners
    row = ranking.row(0, named=True)
    # cat images: clean "cat"; the top-left paste turns each into "dog" -> 3 of 3 images flip (not 3 of 12
    # pastes: the four corners of one image are not independent trials)
    assert row["flip_to_rate"] == 1.0 and row["n_to"] == 3
    assert (row["flip_to_low"], row["flip_to_high"]) == pytest.approx(wilson(3, 3))
    assert row["n_away"] == 0 and row["flip_away_rate"] is None  # no dog image was called a dog when clean
    with pytest.raises(BuildError, match="needs a target"):
        make_builder("logobank", stage="attack", mining_source="hand-scores", verdict_round="logos-1").build(workspace)


def test_builders_import_neither_torch_nor_ultralytics_nor_openai() -> None:
    code = ("import sys, curate.builders; "
            "print(sorted(m for m in ('torch', 'ultralytics', 'openai') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_logos_are_cropped_to_the_detectors_box(pool: tuple[Workspace, dict[str, str]], tiny_clip: str,
                                                tmp_path: Path) -> None:
    workspace, ids = pool
    found = propose(workspace, make_proposer("detector", weights="random", text_encoder=tiny_clip, conf=1e-9,
                                             imgsz=160, vocabulary=("logo",)), progress=False)
    assert found.counts["items"] == 9  # the unlabelled logos too
    boxes = {r.item_id: r.boxes for r in workspace.catalog.evidence(source="detector") if r.attribute == "logo"}
    assert set(boxes) == set(ids.values())
    _bank_ready(workspace, ids)
    result = build(workspace, make_builder("logobank", stage="bank", mining_source="hand-scores", keep_fraction=1.0,
                                           verdict_round="logos-1", crop_source="detector"), tmp_path / "bank")
    row = result.release.tables["bank"].row(0, named=True)
    assert row["source"] == "pool" and len(row["crop"]) == 4
    x0, y0, x1, y1 = (round(v) for v in row["crop"])
    assert Image.open(tmp_path / "bank" / "logos" / "logo-0000.png").size == (x1 - x0, y1 - y0)
