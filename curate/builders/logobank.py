"""``logobank``: a bank of verified logos and the spurious-logo search (after SLANT), in three stages.

1. ``candidates``: the top ``keep_fraction`` of the pool by ``logo-mining`` score, near-duplicates
   dropped (cosine similarity of stored CLIP embeddings at or above ``dedup_threshold``), optionally
   cropped to a detector's best ``logo`` box. Writes ``units.csv`` for a logo verification round
   (``curate annotate push NAME --kind logo --units units.csv``).
2. ``bank``: the candidates people confirmed as logos (majority of ``is_logo`` verdicts), cropped
   into ``logos/``, with their brand when given.
3. ``attack``: every banked logo pasted at image corners, at ``logo_scale`` of the shorter image
   side, onto images of the ``target`` class and of the other classes; a CLIP zero-shot classifier
   over the classes labels clean and pasted images. Per logo: the share of *images* whose
   prediction flips *to* the target at any corner (on other classes' images) and *away* from it
   (on target images), with 95% Wilson intervals over images (the corners of one image are not
   independent trials); logos are ranked by the flip-to rate.

Near-duplicate removal needs stored image embeddings (``curate propose clip``); when they are
missing it is skipped, and ``release.json`` says so under ``near_duplicates``.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from PIL import Image

from curate.analyze.cues import wilson
from curate.builders.base import Builder, BuildError, Release, register_builder
from curate.builders.mmspubench import source_name
from curate.images import open_image
from curate.progress import progress_bar
from curate.records import Item
from curate.verdicts import resolved_verdicts
from curate.workspace import Workspace
from curate.workspace.tables import embeddings_table

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
CORNERS: tuple[Corner, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")


def paste_logo(image: Image.Image, logo: Image.Image, corner: str, scale: float, margin: float = 0.02) -> Image.Image:
    """``image`` with ``logo`` pasted at ``corner``: the logo's longer side is ``scale`` times the
    image's shorter side, ``margin`` (of the shorter side) from the edges; alpha is respected.

    >>> out = paste_logo(Image.new("RGB", (100, 50), "gray"), Image.new("RGB", (10, 10), "red"), "top-left", 0.2, 0)
    >>> out.getpixel((0, 0)), out.getpixel((9, 9)), out.getpixel((10, 10))
    ((255, 0, 0), (255, 0, 0), (128, 128, 128))
    """
    if corner not in CORNERS:
        raise BuildError(f"corner {corner!r} is not one of {CORNERS}")
    side = min(image.size)
    target = max(1, round(scale * side))
    ratio = target / max(logo.size)
    resized = logo.convert("RGBA").resize((max(1, round(logo.width * ratio)), max(1, round(logo.height * ratio))))
    gap = round(margin * side)
    x = gap if corner.endswith("left") else image.width - resized.width - gap
    y = gap if corner.startswith("top") else image.height - resized.height - gap
    pasted = image.convert("RGB").copy()
    pasted.paste(resized, (x, y), resized)
    return pasted


@register_builder("logobank")
@dataclass
class LogoBankBuilder(Builder):
    """Logo candidates, the verified bank, and the spurious-logo search (``stage``)."""

    stage: Literal["candidates", "bank", "attack"] = "candidates"
    mining_source: str = "logo-mining"
    keep_fraction: float = 0.01
    dedup_threshold: float = 0.95
    embeddings_model: str = "clip-vit-b-32"
    crop_source: str | None = None
    verdict_round: str | None = None
    target: str | None = None
    model: str = "clip-vit-b-32"
    weights: str | None = None
    logo_scale: float = 0.2
    corners: tuple[Corner, ...] = CORNERS
    max_images: int = 100
    seed: int = 0

    def defining_attributes(self) -> list[str]:
        return [] if self.stage == "candidates" else ["is_logo"]

    def build(self, workspace: Workspace) -> Release:
        stages = {"candidates": self._candidates_release, "bank": self._bank_release, "attack": self._attack_release}
        if self.stage not in stages:
            raise BuildError(f"stage is one of {', '.join(stages)}, not {self.stage!r}")
        return stages[self.stage](workspace)

    # 1. candidates ------------------------------------------------------------------------------
    def candidates(self, workspace: Workspace) -> pl.DataFrame:
        """The mined, de-duplicated candidates, best first."""
        return self._mine(workspace)[0]

    def _mine(self, workspace: Workspace) -> tuple[pl.DataFrame, dict[str, Any]]:
        """The candidates, and what near-duplicate removal did (or that it was skipped)."""
        mined = (workspace.catalog.evidence_scan(source=self.mining_source, attribute="logo")
                 .select("item_id", "run_id", score=pl.col("score").fill_null(0.0))
                 .sort("item_id", "run_id").unique("item_id", keep="last").collect())  # the last run's score
        if not mined.height:
            raise BuildError(f"no '{self.mining_source}' evidence: run `curate propose logo-mining` first")
        top = (mined.sort(["score", "item_id"], descending=[True, False])
               .head(max(1, math.ceil(self.keep_fraction * mined.height))))
        ranked: list[str] = top["item_id"].to_list()
        scores = dict(zip(ranked, top["score"], strict=True))
        vectors = self._embeddings(workspace, ranked)
        kept: list[str] = []
        dropped = 0
        unchecked = sum(item_id not in vectors for item_id in ranked)
        for item_id in ranked:
            vector = vectors.get(item_id)
            if vector is not None and any(float(vector @ vectors[k]) >= self.dedup_threshold
                                          for k in kept if k in vectors):
                dropped += 1
                continue
            kept.append(item_id)
        crops = self._crops(workspace, kept)
        sources = {i: source_name(workspace, i) for i in kept}
        frame = pl.DataFrame({"item_id": kept, "uri": [workspace.catalog.item(i).uri for i in kept],
                              "source": [sources[i] for i in kept], "logo_score": [scores[i] for i in kept],
                              "crop": [crops.get(i) for i in kept]},
                             schema={"item_id": pl.String, "uri": pl.String, "source": pl.String,
                                     "logo_score": pl.Float64, "crop": pl.List(pl.Float64)})
        method = f"cosine similarity of stored {self.embeddings_model} image embeddings >= {self.dedup_threshold}"
        if unchecked == len(ranked):
            summary = (f"near-duplicate removal skipped: no stored {self.embeddings_model} image embeddings for the "
                       f"{len(ranked)} candidates (run `curate propose clip --model {self.embeddings_model}` first)")
        else:
            summary = f"{dropped} near-duplicates dropped ({method})" + (
                f"; {unchecked} of {len(ranked)} candidates have no stored embedding and were not checked"
                if unchecked else "")
        return frame, {"method": method, "dropped": dropped, "unchecked": unchecked, "candidates": len(ranked),
                       "skipped": unchecked == len(ranked), "summary": summary}

    def _embeddings(self, workspace: Workspace, item_ids: list[str]) -> dict[str, np.ndarray]:
        """The stored image embeddings of ``item_ids`` (those that have one)."""
        name = embeddings_table(self.embeddings_model)
        if name not in workspace.tables.names():
            return {}
        frame = workspace.tables.scan(name).filter(
            pl.col("item_id").is_in(pl.Series(item_ids, dtype=pl.String).implode())).collect()
        return {i: np.asarray(v, dtype=np.float32) for i, v in zip(frame["item_id"], frame["embedding"], strict=True)}

    def _crops(self, workspace: Workspace, item_ids: list[str]) -> dict[str, list[float]]:
        """The first ``logo`` box of ``item_ids`` in ``crop_source`` evidence (the last run's that has one)."""
        if not self.crop_source:
            return {}
        boxes = (workspace.catalog.evidence_scan(source=self.crop_source, attribute="logo")
                 .filter(pl.col("item_id").is_in(pl.Series(item_ids, dtype=pl.String).implode())
                         & (pl.col("boxes").list.len() > 0))
                 .sort("item_id", "run_id").unique("item_id", keep="last")
                 .select("item_id", pl.col("boxes").list.first().list.head(4)).collect())
        return dict(zip(boxes["item_id"], boxes["boxes"].to_list(), strict=True))

    def _candidates_release(self, workspace: Workspace) -> Release:
        frame, near_duplicates = self._mine(workspace)
        return Release(self.name, {"candidates": frame}, {"near_duplicates_dropped": near_duplicates["dropped"],
                                                          "near_duplicates": near_duplicates,
                                                          "keep_fraction": self.keep_fraction},
                       {"units.csv": lambda path: frame.select("item_id").write_csv(path)})

    # 2. bank ------------------------------------------------------------------------------------
    def bank(self, workspace: Workspace) -> pl.DataFrame:
        """Candidates confirmed as logos by the majority of a round's ``is_logo`` verdicts."""
        return self._bank(workspace)[0]

    def _bank(self, workspace: Workspace) -> tuple[pl.DataFrame, dict[str, Any]]:
        """The bank, and the candidates' near-duplicate report."""
        votes: dict[str, Counter[str]] = defaultdict(Counter)
        brands: dict[str, Counter[str]] = defaultdict(Counter)
        for verdict in resolved_verdicts(workspace, self.verdict_round):
            if verdict.attribute == "is_logo":
                votes[verdict.item_id][verdict.value] += 1
                if verdict.extra.get("brand"):
                    brands[verdict.item_id][str(verdict.extra["brand"]).strip()] += 1
        candidates, near_duplicates = self._mine(workspace)
        confirmed = [i for i in candidates["item_id"] if votes[i]["logo"] > votes[i]["not a logo"]]
        if not confirmed:
            raise BuildError("no candidate was confirmed as a logo by people yet (logo verification round)")
        bank = candidates.filter(pl.col("item_id").is_in(confirmed))
        return bank.with_columns(
            pl.Series("logo_id", [f"logo-{n:04d}" for n in range(bank.height)]),
            pl.Series("brand", [brands[i].most_common(1)[0][0] if brands[i] else None for i in bank["item_id"]],
                      dtype=pl.String),
            pl.Series("votes", [json.dumps(dict(votes[i]), sort_keys=True) for i in bank["item_id"]], dtype=pl.String),
        ), near_duplicates

    def _logo_image(self, workspace: Workspace, row: dict[str, Any]) -> Image.Image:
        image = open_image(workspace.resolve_uri(row["uri"]))
        return image.crop(tuple(round(v) for v in row["crop"])) if row["crop"] else image

    def _bank_release(self, workspace: Workspace) -> Release:
        bank, near_duplicates = self._bank(workspace)
        bank = bank.with_columns(("logos/" + pl.col("logo_id") + ".png").alias("logo_file"))  # the crop written

        def write_logos(folder: Path) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            for row in bank.iter_rows(named=True):
                self._logo_image(workspace, row).save(folder.parent / row["logo_file"])

        return Release(self.name, {"bank": bank}, {"logos": bank.height, "verdict_round": self.verdict_round,
                                                   "near_duplicates": near_duplicates},
                       {"logos": write_logos})

    # 3. attack ----------------------------------------------------------------------------------
    def _attack_release(self, workspace: Workspace) -> Release:
        from curate.analyze.gap import ClipZeroShot

        if not self.target:
            raise BuildError("the attack stage needs a target class (target=...)")
        classes = sorted({i.label for i in workspace.catalog.items() if i.label})
        if self.target not in classes:
            raise BuildError(f"no items of the target class {self.target!r}; classes: {', '.join(classes)}")
        bank, near_duplicates = self._bank(workspace)
        rng = np.random.default_rng(self.seed)
        bank_ids = set(bank["item_id"])
        pool: dict[bool, list[Item]] = {True: [], False: []}  # is the image of the target class?
        for item in workspace.catalog.items():
            if item.label and item.item_id not in bank_ids:
                pool[item.label == self.target].append(item)
        chosen = [pool[flag][i] for flag in (True, False)
                  for i in sorted(rng.permutation(len(pool[flag]))[:self.max_images])]
        classifier = ClipZeroShot(self.model, self.weights)
        images = {item.item_id: open_image(workspace.resolve_uri(item.uri)) for item in chosen}
        clean = dict(zip(images, classifier.predict(list(images.values()), classes), strict=True))
        rows = []
        with progress_bar(f"logo search ({classifier.name})", bank.height) as advance:
            for logo in bank.iter_rows(named=True):
                rows += self._attack_logo(workspace, logo, chosen, images, clean, classifier, classes)
                advance()
        attack = pl.DataFrame(rows)
        ranking = self._ranking(attack, bank)
        return Release(self.name, {"bank": bank, "attack": attack, "ranking": ranking}, {
            "target": self.target, "classes": classes, "logo_scale": self.logo_scale, "corners": list(self.corners),
            "images_per_side": {"target": len(pool[True][:self.max_images]),
                                "other": len(pool[False][:self.max_images])},
            "classifier": f"{classifier.name} ({classifier.version})",
            "near_duplicates": near_duplicates,
            "flip_rates": "per image, over images: to: clean != target and pasted == target at any corner, on "
                          "other classes' images; away: clean == target and pasted != target at any corner, on "
                          "target images; 95% Wilson intervals over images (n_to, n_away count images)"})

    def _attack_logo(self, workspace: Workspace, logo: dict[str, Any], chosen: list[Any], images: dict[str, Any],
                     clean: dict[str, str], classifier: Any, classes: list[str]) -> list[dict[str, Any]]:
        """Paste one logo at every corner of every chosen image; clean and pasted predictions."""
        logo_image = self._logo_image(workspace, logo)
        pasted = [(item, corner, paste_logo(images[item.item_id], logo_image, corner, self.logo_scale))
                  for item in chosen for corner in self.corners]
        predictions = classifier.predict([p for _, _, p in pasted], classes)
        return [{"logo_id": logo["logo_id"], "item_id": item.item_id, "class_label": item.label, "corner": corner,
                 "clean_prediction": clean[item.item_id], "pasted_prediction": prediction}
                for (item, corner, _), prediction in zip(pasted, predictions, strict=True)]

    def _ranking(self, attack: pl.DataFrame, bank: pl.DataFrame) -> pl.DataFrame:
        rows = []
        for logo_id in bank["logo_id"]:
            mine = attack.filter(pl.col("logo_id") == logo_id)
            per_image = mine.group_by("item_id").agg(  # did any corner flip this image?
                pl.col("class_label").first(), pl.col("clean_prediction").first(),
                (pl.col("pasted_prediction") == self.target).any().alias("to_target"),
                (pl.col("pasted_prediction") != self.target).any().alias("off_target"))
            to = per_image.filter((pl.col("class_label") != self.target) & (pl.col("clean_prediction") != self.target))
            away = per_image.filter((pl.col("class_label") == self.target)
                                    & (pl.col("clean_prediction") == self.target))
            flips_to = int(to["to_target"].sum())
            flips_away = int(away["off_target"].sum())
            low_to, high_to = wilson(flips_to, to.height)
            low_away, high_away = wilson(flips_away, away.height)
            rows.append({"logo_id": logo_id, "flip_to_rate": flips_to / to.height if to.height else None,
                         "flip_to_low": low_to, "flip_to_high": high_to, "n_to": to.height,
                         "flip_away_rate": flips_away / away.height if away.height else None,
                         "flip_away_low": low_away, "flip_away_high": high_away, "n_away": away.height})
        ranking = pl.DataFrame(rows).with_columns(pl.col(pl.Float64).fill_nan(None))
        return ranking.sort("flip_to_rate", descending=True, nulls_last=True).with_row_index("rank", offset=1)
