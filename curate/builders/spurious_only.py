"""``spurious-only``: images that show a class's spurious cue without the class object (Spurious ImageNet).

Two stages, with a verification round between them:

1. ``candidates``: the (class, cue) pairs people verified as spurious (``resolved_verdicts`` of
   ``pairs_round``: images of class k whose cue was judged ``spurious``), and for each pair the
   images *not* of class k (other classes' images, or items ingested without a label) that the
   cue's evidence scores highest, ``candidates_per_pair`` of them. Writes ``units.csv`` for a
   two-question round (``curate annotate push NAME --kind spurious-only --units units.csv``): is
   the cue there, is the class object there?
2. ``release``: per pair, the candidates people answered with cue *yes* and object *no* (each
   question decided by ``resolved_verdicts`` of ``verdict_round``), best cue score first, at most
   ``per_pair`` (75, as Spurious ImageNet). Each row carries its pair, the cue's type and its votes;
   ``release.json`` carries each pair's verdict provenance and how many images it was short.

Positives of the matching evaluation (``curate evaluate spurious-imagenet``) are the model's
class-k *test* images, which this release does not hold: a user adds them with ``kind = "real"``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from curate.builders.base import Builder, BuildError, Release, image_name, register_builder
from curate.records import NEGATIVE_OF, Verdict
from curate.verdicts import (
    SPURIOUS_ONLY_ANSWERS,
    SPURIOUS_ONLY_QUESTIONS,
    VerdictValue,
    question_attribute,
    resolved_verdicts,
)
from curate.workspace import Workspace

YES, NO = SPURIOUS_ONLY_ANSWERS[:2]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


@dataclass(frozen=True, slots=True)
class Pair:
    """A (class, cue) pair people verified as spurious, with the type they gave and the verdicts behind it."""

    class_label: str
    cue: str
    cue_type: str | None
    provenance: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.class_label}|{self.cue}"


@register_builder("spurious-only")
@dataclass
class SpuriousOnlyBuilder(Builder):
    """Spurious-only images per verified (class, cue) pair: candidates to verify, then the release."""

    stage: Literal["candidates", "release"] = "candidates"
    pairs_round: str | None = None  # the rounds whose "spurious" verdicts make the pairs (None: all)
    verdict_round: str | None = None  # the two-question round(s) that decide the candidates (None: all)
    evidence_source: str | None = None  # the proposer whose scores rank candidates (None: any)
    classes: tuple[str, ...] | None = None
    min_pair_images: int = 1  # images of the class whose cue was judged spurious, for a pair to count
    candidates_per_pair: int = 150
    per_pair: int = 75

    def defining_attributes(self) -> list[str] | None:
        return [] if self.stage == "candidates" else None

    def build(self, workspace: Workspace) -> Release:
        stages = {"candidates": self._candidates_release, "release": self._spurious_release}
        if self.stage not in stages:
            raise BuildError(f"stage is one of {', '.join(stages)}, not {self.stage!r}")
        if self.per_pair < 1 or self.candidates_per_pair < 1 or self.min_pair_images < 1:
            raise BuildError("per_pair, candidates_per_pair and min_pair_images are at least 1")
        return stages[self.stage](workspace)

    # the pairs ------------------------------------------------------------------------------------
    def pairs(self, workspace: Workspace) -> list[Pair]:
        """The verified pairs, sorted by class and cue."""
        spurious = [v for v in resolved_verdicts(workspace, self.pairs_round) if v.value == VerdictValue.SPURIOUS]
        judged = workspace.catalog.items_frame(columns=["label"]).filter(
            pl.col("item_id").is_in(pl.Series(sorted({v.item_id for v in spurious}), dtype=pl.String).implode()))
        labels = dict(judged.iter_rows())
        found: dict[tuple[str, str], list[Verdict]] = defaultdict(list)
        for verdict in spurious:
            label = labels.get(verdict.item_id)
            if label and (self.classes is None or label in self.classes):
                found[(label, verdict.attribute)].append(verdict)
        pairs = []
        for (label, cue), verdicts in sorted(found.items()):
            if len(verdicts) < self.min_pair_images:
                continue
            types = Counter(v.taxonomy_type for v in verdicts if v.taxonomy_type).most_common(1)
            names = Counter(str(v.extra["name"]) for v in verdicts if v.extra.get("name")).most_common(1)
            pairs.append(Pair(label, cue, types[0][0] if types else None, {
                "named": names[0][0] if names else None, "images_judged_spurious": len(verdicts),
                "decided_by": dict(sorted(Counter(v.annotator for v in verdicts).items())),
                "rounds": sorted({r for v in verdicts for r in v.round.split(",")}),
                "simulated": any(v.extra.get("simulated") for v in verdicts)}))
        if not pairs:
            raise BuildError(f"no (class, cue) pair was verified as spurious by people (in "
                             f"{self.pairs_round or 'any round'}, at least {self.min_pair_images} images each): "
                             "verify cues in an attribute round first")
        return pairs

    def _ranked(self, workspace: Workspace, pairs: list[Pair]) -> pl.DataFrame:
        """Per pair (``pair``, in the order of ``pairs``), the images not of its class, by the cue's best
        evidence score (``score``, highest first, a missing score last; then by ``item_id``). Rows scored
        only as negatives for another class's cue do not count for this pair."""
        wanted = pl.LazyFrame({"attribute": [p.cue for p in pairs], "class_label": [p.class_label for p in pairs],
                               "pair": [p.name for p in pairs], "order": list(range(len(pairs)))},
                              schema={"attribute": pl.String, "class_label": pl.String, "pair": pl.String,
                                      "order": pl.Int64})
        labels = workspace.catalog.items_frame(columns=["label"]).lazy()
        return (workspace.catalog.evidence_scan(source=self.evidence_source)
                .filter(pl.col("attribute").is_in(pl.Series([p.cue for p in pairs], dtype=pl.String).implode()))
                .select("item_id", "attribute", NEGATIVE_OF,
                        score=pl.col("score").fill_null(-math.inf))
                .join(wanted, on="attribute")
                .join(labels, on="item_id", how="left")
                .filter(pl.col("label").is_null() | (pl.col("label") != pl.col("class_label")),
                        pl.col(NEGATIVE_OF).is_null() | (pl.col(NEGATIVE_OF) == "")
                        | (pl.col(NEGATIVE_OF) == pl.col("class_label")))
                .group_by("order", "pair", "item_id").agg(pl.col("score").max())
                .sort(["order", "score", "item_id"], descending=[False, True, False])
                .select("pair", "item_id", "score").collect())

    # 1. candidates ---------------------------------------------------------------------------------
    def _candidates_release(self, workspace: Workspace) -> Release:
        pairs = self.pairs(workspace)
        ranked = self._ranked(workspace, pairs)
        top = (ranked.group_by("pair", maintain_order=True).head(self.candidates_per_pair)
               .with_columns(rank=pl.int_range(1, pl.len() + 1).over("pair")))
        by_name = {pair.name: pair for pair in pairs}
        rows = [{"item_id": item_id, "uri": workspace.catalog.item(item_id).uri,
                 "class_label": by_name[name].class_label, "cue": by_name[name].cue,
                 "cue_type": by_name[name].cue_type, "pair": name, "cue_score": score, "rank": rank}
                for name, item_id, score, rank in top.iter_rows()]
        if not rows:
            raise BuildError(f"no image outside the pairs' classes has evidence on their cues "
                             f"({', '.join(p.name for p in pairs)}); score the pool with a proposer first")
        frame = pl.DataFrame(rows, schema={"item_id": pl.String, "uri": pl.String, "class_label": pl.String,
                                           "cue": pl.String, "cue_type": pl.String, "pair": pl.String,
                                           "cue_score": pl.Float64, "rank": pl.Int64})
        counts = dict(Counter(frame["pair"]))
        metadata = {"pairs": [{"class_label": p.class_label, "cue": p.cue, "cue_type": p.cue_type,
                               "verified_by": p.provenance, "candidates": counts.get(p.name, 0)} for p in pairs],
                    "candidates_per_pair": self.candidates_per_pair}
        return Release(self.name, {"candidates": frame}, metadata,
                       {"units.csv": lambda path: frame.select("item_id", "class_label", "cue").write_csv(path)})

    # 2. the release --------------------------------------------------------------------------------
    def _answers(self, workspace: Workspace) -> dict[tuple[str, str], Verdict]:
        """(item, question attribute) -> the decided answer of the two-question round."""
        return {(v.item_id, v.attribute): v for v in resolved_verdicts(workspace, self.verdict_round)
                if v.attribute.split("|", 1)[0] in SPURIOUS_ONLY_QUESTIONS and v.value in (YES, NO)}

    def _spurious_release(self, workspace: Workspace) -> Release:
        pairs = self.pairs(workspace)
        ranked = self._ranked(workspace, pairs)
        answers = self._answers(workspace)
        if not answers:
            raise BuildError(f"no candidate has decided answers of a spurious-only round (in "
                             f"{self.verdict_round or 'any round'}): push and pull one on the candidates' units.csv")
        y_names = sorted({p.class_label for p in pairs})
        rows: list[dict[str, Any]] = []
        report = []
        totals = dict(ranked.group_by("pair").len().iter_rows())
        answered = ranked.filter(pl.col("item_id").is_in(pl.Series(sorted({i for i, _ in answers}),
                                                                   dtype=pl.String).implode()))
        answered_of = {str(name): frame for (name,), frame in answered.group_by("pair")}
        for pair in pairs:
            outcome: Counter[str] = Counter()
            kept = 0
            candidates = answered_of.get(pair.name, answered.clear())
            if totals.get(pair.name, 0) > candidates.height:  # ranked images nobody answered about
                outcome["undecided"] += totals[pair.name] - candidates.height
            for item_id, score in candidates.select("item_id", "score").iter_rows():
                cue = answers.get((item_id, question_attribute("cue", pair.class_label, pair.cue)))
                thing = answers.get((item_id, question_attribute("object", pair.class_label, pair.cue)))
                if cue is None or thing is None:
                    outcome["undecided"] += 1
                    continue
                outcome[f"cue {cue.value}, object {thing.value}"] += 1
                if cue.value != YES or thing.value != NO or kept >= self.per_pair:
                    continue
                kept += 1
                item = workspace.catalog.item(item_id)
                rows.append({"item_id": item_id, "uri": item.uri,
                             "file_name": image_name(f"{kept:03d}", item.uri,
                                                     f"images/{_slug(pair.class_label)}__{_slug(pair.cue)}"),
                             "y": y_names.index(pair.class_label), "class_label": pair.class_label, "cue": pair.cue,
                             "cue_name": pair.provenance["named"] or pair.cue,
                             "cue_type": pair.cue_type, "pair": pair.name, "kind": "spurious",
                             "cue_score": score if math.isfinite(score) else None, "source_label": item.label,
                             "cue_votes": json.dumps(cue.extra.get("votes", {}), sort_keys=True),
                             "object_votes": json.dumps(thing.extra.get("votes", {}), sort_keys=True),
                             "decided_by": ",".join(sorted({cue.annotator, thing.annotator}))})
            report.append({"class_label": pair.class_label, "cue": pair.cue, "cue_type": pair.cue_type,
                           "verified_by": pair.provenance, "wanted": self.per_pair, "kept": kept,
                           "short": self.per_pair - kept, "answers": dict(sorted(outcome.items()))})
        if not rows:
            raise BuildError("people answered cue yes and object no for no candidate of any pair "
                             f"({', '.join(p.name for p in pairs)})")
        frame = pl.DataFrame(rows, schema={"item_id": pl.String, "uri": pl.String, "file_name": pl.String,
                                           "y": pl.Int64, "class_label": pl.String, "cue": pl.String,
                                           "cue_name": pl.String, "cue_type": pl.String, "pair": pl.String,
                                           "kind": pl.String,
                                           "cue_score": pl.Float64, "source_label": pl.String,
                                           "cue_votes": pl.String, "object_votes": pl.String,
                                           "decided_by": pl.String})
        frame = frame.with_row_index("id", offset=1).with_columns(pl.col("id").cast(pl.Int64))
        metadata = {"y_names": y_names, "pairs": report, "per_pair": self.per_pair,
                    "pairs_round": self.pairs_round or "all rounds",
                    "verdict_round": self.verdict_round or "all rounds",
                    "kept_when": "people said the cue is in the image (yes) and the class object is not (no)",
                    "labels_from": {"pairs": "human verdicts (spurious)",
                                    "images": "human verdicts (cue yes, object no)", "machine": 0}}
        return Release(self.name, {"test": frame}, metadata, classes=sorted(frame["class_label"].unique()),
                       images=frame.select(pl.col("file_name").alias("name"), "uri"))
