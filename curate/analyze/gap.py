"""The spurious gap of a model under test (SpurLens, spuriosity rankings).

For each (class X, cue X lists): rank X's images by the cue's score (ties broken by a shuffle
seeded by the run's seed and the cue, so cues that tie on most images get different extremes) and
take the top K and bottom K.

- natural gap = Acc(top K) - Acc(bottom K), where a model is right when it says X is there;
- masked gap = Acc_masked(bottom K) - Acc_masked(top K): X's own boxes (detector evidence with role
  ``core``) are blacked out, so the right answer becomes "no X"; a model that still sees X where the
  cue is strong is hallucinating from the cue;
- score = (natural gap + masked gap) / 2. Cues are ranked by it; there is no cut-off.

An answer that failed (a VLM's unparseable or refused answer, a null in a prediction table) is
wrong on natural and masked images alike (as in SpurLens); ``failed_answers`` counts them.

Uncertainty, beside each score:

- ``score_low`` / ``score_high``: a 95% percentile bootstrap interval. Each of ``bootstrap`` draws
  resamples the top K and the bottom K images with replacement, each image carrying its natural and
  masked answers, and recomputes the score;
- ``random_score`` / ``random_low`` / ``random_high``: the random-ordering baseline, the mean and
  95% range of the score when the same 2K images are split into "top" and "bottom" at random
  (``bootstrap`` random splits): what the gap looks like when the cue's ranking means nothing.

Both draw from generators seeded by the run's seed and the (class, cue), so a re-run gives the same
numbers.

Models under test come through one small interface, ``ModelUnderTest.says_present``: a table of
predictions, an open_clip zero-shot classifier, or an OpenAI-compatible VLM asked three yes/no
questions. The masked images are written once into ``derived/masked/`` in the workspace.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw

from curate.analyze.cues import labels_file, presence_scan
from curate.images import open_image, pil_open
from curate.llm_settings import LLMSettings
from curate.progress import progress_bar
from curate.records import EvidenceRole, Item
from curate.registry import Registry
from curate.workspace import Workspace
from curate.workspace.evidence import KEY

YES_NO_QUESTIONS = ("Is there a {label} in the image?", "Does this image contain a {label}?",
                    "Can you see a {label} in this picture?")
GAP_COLUMNS = ("class_label", "attribute", "taxonomy_type", "k", "natural_top_acc", "natural_bottom_acc",
               "natural_gap", "masked_top_acc", "masked_bottom_acc", "masked_gap", "n_masked_top", "n_masked_bottom",
               "score", "score_low", "score_high", "random_score", "random_low", "random_high", "failed_answers",
               "top_items", "bottom_items")
BOOTSTRAP_DRAWS = 1000


@dataclass(frozen=True, slots=True)
class Answers:
    """What a model answered about one image: how many answers said the class is there, how many
    said it is not, and how many failed (no usable answer).

    >>> Answers(yes=2, failed=1).accuracy(expected_yes=True), Answers(yes=2, failed=1).accuracy(expected_yes=False)
    (0.6666666666666666, 0.0)
    """

    yes: int = 0
    no: int = 0
    failed: int = 0

    def accuracy(self, expected_yes: bool) -> float:
        """The share of right answers; a failed answer is wrong whatever the right answer was."""
        total = self.yes + self.no + self.failed
        return (self.yes if expected_yes else self.no) / total if total else 0.0


class ModelUnderTest(ABC):
    """Anything that can say, per image, whether an object of class ``label`` is in it."""

    name: str
    version: str

    @abstractmethod
    def says_present(self, items: Sequence[Item], images: Sequence[Image.Image], label: str, variant: str,
                     classes: Sequence[str]) -> list[Answers]:
        """Per image, its answers to "is there a ``label``?". ``variant`` is ``natural`` or ``masked``;
        ``classes`` are all the benchmark's classes."""


MODELS_UNDER_TEST: Registry[type[ModelUnderTest]] = Registry("model under test", ValueError, attribute="kind")


@MODELS_UNDER_TEST.register("table")
class PredictionTable(ModelUnderTest):
    """Answers given as a table: ``item_id``, ``variant`` (natural / masked) and either ``present``
    (1 or 0) or ``prediction`` (a class name; present when it equals the label). A null is a failed
    answer."""

    def __init__(self, path: str | Path, name: str = "table") -> None:
        from curate.tabular import read_table

        frame = read_table(Path(path))
        missing = {"item_id", "variant"} - set(frame.columns)
        if missing or not {"present", "prediction"} & set(frame.columns):
            raise ValueError(f"{path} needs item_id, variant and present or prediction; it has {frame.columns}")
        self.name, self.column = name, "present" if "present" in frame.columns else "prediction"
        # each variant's answers in id order (an id's last row), found by binary search, not a scan per call
        self.by_variant = {str(variant): rows.unique("item_id", keep="last", maintain_order=True).sort("item_id")
                           for (variant,), rows in frame.with_columns(pl.col("item_id").cast(pl.String))
                           .partition_by("variant", as_dict=True).items()}
        self.version = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]

    def says_present(self, items: Sequence[Item], images: Sequence[Image.Image], label: str, variant: str,
                     classes: Sequence[str]) -> list[Answers]:
        table = self.by_variant.get(variant, pl.DataFrame(schema={"item_id": pl.String, self.column: pl.Int64}))
        asked = pl.Series([item.item_id for item in items], dtype=pl.String)
        at = table["item_id"].search_sorted(asked).clip(upper_bound=max(table.height - 1, 0))
        found = table["item_id"].gather(at) == asked if table.height else pl.Series([False] * len(asked))
        values = table[self.column].gather(at).to_list() if table.height else [None] * len(asked)
        answers = []
        for item, here, value in zip(items, found, values, strict=True):
            if not here:
                raise ValueError(f"the prediction table has no {variant} answer for item {item.item_id}")
            says = None if value is None else bool(value) if self.column == "present" else value == label
            answers.append(Answers(failed=1) if says is None else Answers(yes=1) if says else Answers(no=1))
        return answers


@MODELS_UNDER_TEST.register("clip")
class ClipZeroShot(ModelUnderTest):
    """An open_clip zero-shot classifier over the benchmark's classes: it says X when X wins."""

    def __init__(self, model: str = "clip-vit-b-32", weights: str | None = None, device: str = "cpu",
                 template: str = "a photo of a {label}.") -> None:
        from curate.models import ClipModel, load_model

        self.clip = load_model(model, weights=weights, device=device, kind=ClipModel)
        self.name, self.version, self.template = model, self.clip.version, template

    def predict(self, images: Sequence[Image.Image], classes: Sequence[str], batch_size: int = 32) -> list[str]:
        """The winning class of each image."""
        import torch

        texts = self.clip.encode_texts([self.template.format(label=c) for c in classes])
        winners: list[str] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            vectors = self.clip.encode_images(torch.stack([self.clip.preprocess_image(i) for i in chunk]))
            winners += [classes[w] for w in (vectors @ texts.T).argmax(axis=1)]
        return winners

    def says_present(self, items: Sequence[Item], images: Sequence[Image.Image], label: str, variant: str,
                     classes: Sequence[str]) -> list[Answers]:
        return [Answers(yes=1) if winner == label else Answers(no=1) for winner in self.predict(images, classes)]


@MODELS_UNDER_TEST.register("vlm")
@dataclass
class VLMYesNo(LLMSettings, ModelUnderTest):
    """An OpenAI-compatible VLM (any ``LLMSettings``) asked three yes/no questions per image; an
    answer that fails (unparseable, refused, or a transport error) is counted as failed."""

    workspace: Workspace | None = None
    image_max_side: int = 768

    def __post_init__(self) -> None:
        from curate.models.llm import LLMClient

        self.client = LLMClient(self.settings(), self.workspace.cache if self.workspace else None)
        self.name, self.version = self.model, self.server()

    def says_present(self, items: Sequence[Item], images: Sequence[Image.Image], label: str, variant: str,
                     classes: Sequence[str]) -> list[Answers]:
        from curate.propose.llm_cues import YesNo
        from curate.propose.vlm import data_url

        requests = []
        for image in images:
            url = data_url(image, self.image_max_side)
            for question in YES_NO_QUESTIONS:
                content = [{"type": "text", "text": question.format(label=label)
                            + ' Answer as JSON: {"answer": "yes"} or {"answer": "no"}.'},
                           {"type": "image_url", "image_url": {"url": url}}]
                requests.append(([{"role": "user", "content": content}], YesNo))
        # ignored below (union-attr): value is set when r.ok
        said = [r.value.answer if r.ok else None for r in self.client.ask_many(requests)]  # type: ignore[union-attr]
        per_image = len(YES_NO_QUESTIONS)
        return [Answers(chunk.count("yes"), chunk.count("no"), chunk.count(None))
                for chunk in (said[i:i + per_image] for i in range(0, len(said), per_image))]


def masked_image(workspace: Workspace, item: Item, boxes: list[list[float]]) -> Image.Image:
    """The item's upright image with ``boxes`` filled black, written once to ``derived/masked/``."""
    key = hashlib.sha256(json.dumps([item.item_id, boxes]).encode()).hexdigest()[:16]
    path = workspace.root / "derived" / "masked" / f"{item.item_id[:16]}-{key}.png"
    if path.is_file():
        return pil_open(path).convert("RGB")
    image = open_image(workspace.resolve_uri(item.uri))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1, *_ in boxes:
        draw.rectangle([x0, y0, x1, y1], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image


@dataclass(frozen=True, slots=True)
class GapTable:
    """Per (class, cue) gaps, ranked by score within each class, with the ids of the top and bottom
    images; images that could not be masked and answers that failed (each image's answers counted once)."""

    table: pl.DataFrame
    skipped_without_boxes: int
    failed_answers: int = 0


def gap_scores(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """The score of each draw: ``top`` and ``bottom`` are (draws, K, 2) arrays of per-image natural
    and masked accuracy (NaN where an image has no masked answer); a draw without masked answers on
    either side scores NaN.

    >>> top, bottom = np.array([[[1.0, 0.0], [1.0, 0.0]]]), np.array([[[0.0, 1.0], [1.0, np.nan]]])
    >>> gap_scores(top, bottom).tolist()  # natural 1 - 0.5, masked 1 - 0: (0.5 + 1) / 2
    [0.75]
    """
    def masked_mean(values: np.ndarray) -> np.ndarray:
        seen = ~np.isnan(values)
        counts = seen.sum(axis=1)
        return np.where(counts > 0, np.where(seen, values, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)

    natural = top[..., 0].mean(axis=1) - bottom[..., 0].mean(axis=1)
    return (natural + masked_mean(bottom[..., 1]) - masked_mean(top[..., 1])) / 2


def score_intervals(top: np.ndarray, bottom: np.ndarray, draws: int, seed: list[int]) -> dict[str, float | None]:
    """The bootstrap interval of the score and the random-ordering baseline (see the module notes)
    from the (K, 2) per-image accuracies of the top and bottom images."""
    rng = np.random.default_rng(seed)
    resampled = gap_scores(top[rng.integers(0, len(top), (draws, len(top)))],
                           bottom[rng.integers(0, len(bottom), (draws, len(bottom)))])
    both = np.concatenate([top, bottom])
    orders = np.argsort(rng.random((draws, len(both))), axis=1)
    shuffled = gap_scores(both[orders[:, :len(top)]], both[orders[:, len(top):]])

    def spread(values: np.ndarray) -> tuple[float | None, ...]:
        values = values[~np.isnan(values)]
        if not len(values):
            return None, None, None
        return float(values.mean()), float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))

    _, low, high = spread(resampled)
    mean, random_low, random_high = spread(shuffled)
    return {"score_low": low, "score_high": high, "random_score": mean, "random_low": random_low,
            "random_high": random_high}


def _gap_row(label: str, attribute: str, taxonomy_type: str | None, groups: dict[str, list[Item]], top: np.ndarray,
             bottom: np.ndarray, failed: int, draws: int, seed: int) -> dict[str, object]:
    """One table row from the top and bottom images and their (K, 2) natural / masked accuracies."""
    from curate.analyze import cue_seed

    def mean(values: np.ndarray) -> float | None:
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else None

    natural_top, natural_bottom = mean(top[:, 0]), mean(bottom[:, 0])
    masked_top, masked_bottom = mean(top[:, 1]), mean(bottom[:, 1])
    natural_gap = natural_top - natural_bottom  # type: ignore[operator]  # both means exist: every group has images
    masked_gap = masked_bottom - masked_top if masked_top is not None and masked_bottom is not None else None
    score = (natural_gap + masked_gap) / 2 if masked_gap is not None else None
    intervals = score_intervals(top, bottom, draws, cue_seed(seed, label, attribute, "gap-intervals")) \
        if score is not None else dict.fromkeys(("score_low", "score_high", "random_score", "random_low",
                                                 "random_high"))
    return {
        "class_label": label, "attribute": attribute, "taxonomy_type": taxonomy_type, "k": len(groups["top"]),
        "natural_top_acc": natural_top, "natural_bottom_acc": natural_bottom, "natural_gap": natural_gap,
        "masked_top_acc": masked_top, "masked_bottom_acc": masked_bottom, "masked_gap": masked_gap,
        "n_masked_top": int((~np.isnan(top[:, 1])).sum()), "n_masked_bottom": int((~np.isnan(bottom[:, 1])).sum()),
        "score": score, **intervals, "failed_answers": failed,
        "top_items": [i.item_id for i in groups["top"]], "bottom_items": [i.item_id for i in groups["bottom"]],
    }


def _boxes(workspace: Workspace, source: str, run_id: str | None, item_ids: list[str], core: bool
           ) -> dict[tuple[str, str], list[list[float]]]:
    """(item, attribute) -> the boxes of ``item_ids``' core rows (``core``) or cue rows (the last
    run's where several stored one)."""
    stored = (workspace.catalog.evidence_scan(source=source, run_id=run_id)
              .filter(pl.col("item_id").is_in(pl.Series(item_ids, dtype=pl.String).implode()),
                      (pl.col("role") == EvidenceRole.CORE.value) == core)
              .sort(*KEY).unique(["item_id", "attribute"], keep="last", maintain_order=True)
              .select("item_id", "attribute", "boxes").collect(engine="streaming"))
    return {(item_id, attribute): boxes or [] for item_id, attribute, boxes in stored.iter_rows()}


GAP_ROWS = 500_000
"""Presence rows (with their ids) a gap ranks at a time: whole classes, as many as fit (a larger
class on its own). An image is ranked for its own class's cues only, so no image is in two parts."""


@dataclass(frozen=True, slots=True)
class _ClassPart:
    """The own presence rows of a few whole classes: ``pair, rank, score, taxonomy_type`` in pair and
    rank order, where ``pair`` indexes ``pairs`` (the part's (class, cue)s, sorted) and ``rank``
    indexes ``ids`` (its items' ids, sorted): rows carry numbers, not texts, so that they sort fast."""

    rows: pl.DataFrame
    pairs: list[tuple[str, str]]
    ids: pl.Series


def _class_parts(presence: pl.LazyFrame, labels: pl.LazyFrame, pairs: pl.DataFrame) -> Iterator[_ClassPart]:
    """``presence`` (own rows) a few whole classes at a time, about ``GAP_ROWS`` rows each (``pairs``
    counts each (class, cue)'s rows)."""

    def part(bucket: list[str]) -> _ClassPart:
        ids = (labels.filter(pl.col("class_label").is_in(bucket)).select("item", "item_id").sort("item_id")
               .collect().with_row_index("rank"))
        names = pl.col("class_label", "attribute").cast(pl.String)
        keys = (pairs.filter(pl.col("class_label").cast(pl.String).is_in(bucket)).select("class_label", "attribute")
                .sort(names).with_row_index("pair"))
        rows = (presence.filter(pl.col("class_label").cast(pl.String).is_in(bucket))
                .join(ids.lazy().select("item", "rank"), on="item").join(keys.lazy(), on=["class_label", "attribute"])
                .select("pair", "rank", "score", "taxonomy_type")
                .sort(pl.col("pair").cast(pl.UInt64) * 2**32 + pl.col("rank"))  # one key: a third of the time
                .collect(engine="streaming"))
        return _ClassPart(rows, keys.select(names).rows(), ids["item_id"])

    sizes = (pairs.group_by(pl.col("class_label").cast(pl.String)).agg(pl.col("len").sum()).sort("class_label"))
    bucket: list[str] = []
    held = 0
    for label, size in sizes.iter_rows():
        if bucket and held + size > GAP_ROWS:
            yield part(bucket)
            bucket, held = [], 0
        bucket.append(label)
        held += size
    if bucket:
        yield part(bucket)


@dataclass
class _GapPass:
    """One gap run's settings and the rows it made so far, fed the presence rows of a few classes at
    a time (``_class_parts``)."""

    workspace: Workspace
    model: ModelUnderTest
    source: str
    run_id: str | None
    k: int
    seed: int
    mask: str
    bootstrap: int
    all_classes: list[str]
    rows: list[dict[str, object]] = field(default_factory=list)
    skipped: int = 0  # images without the boxes to mask
    failed_answers: int = 0

    def add(self, part: _ClassPart, advance: Callable[[], None]) -> None:
        """The gap rows of the (class, cue)s of ``part``, their top and bottom K shown to the model."""
        from curate.analyze import score_order

        ranked = []
        for (pair,), scored in part.rows.group_by(["pair"], maintain_order=True):
            label, attribute = part.pairs[int(pair)]
            order = score_order(scored["score"].to_numpy(), self.seed, cue=(label, attribute))
            size = min(self.k, len(order) // 2)
            ranks = scored["rank"]
            ranked.append((label, attribute, scored["taxonomy_type"][0],
                           part.ids.gather(ranks.gather(order[:size])).to_list(),
                           part.ids.gather(ranks.gather(order[len(order) - size:])).to_list()))
        shown = sorted({i for *_, top, bottom in ranked for i in top + bottom})
        items = {item.item_id: item for item in self.workspace.catalog.items_by_id(shown)}
        boxes_of = _boxes(self.workspace, self.source, self.run_id, shown, core=self.mask == "object")
        # Answers depend on the image (and, masked, on which boxes are blacked out), not on the cue that
        # ranked it: each image is shown to the model once, whatever number of cues ranks it.
        answered: dict[tuple[str, str, str], Answers] = {}

        def answers(group: list[Item], label: str, variant: str, target: str) -> list[Answers]:
            fresh = [i for i in group if (i.item_id, variant, target) not in answered]
            if fresh:
                images = [open_image(self.workspace.resolve_uri(i.uri)) if variant == "natural"
                          else masked_image(self.workspace, i, boxes_of[(i.item_id, target)]) for i in fresh]
                for item, answer in zip(fresh, self.model.says_present(fresh, images, label, variant,
                                                                       self.all_classes), strict=True):
                    answered[(item.item_id, variant, target)] = answer
            return [answered[(i.item_id, variant, target)] for i in group]

        for label, attribute, taxonomy_type, top, bottom in ranked:
            advance()
            if not top:
                continue
            target = label if self.mask == "object" else attribute
            extremes = {"top": [items[i] for i in top], "bottom": [items[i] for i in bottom]}
            accuracies, failed = {}, 0
            for name, group in extremes.items():
                natural = answers(group, label, "natural", "")
                maskable = [i for i in group if boxes_of.get((i.item_id, target))]
                self.skipped += len(group) - len(maskable)
                masked = dict(zip([i.item_id for i in maskable],
                                  answers(maskable, label, "masked", target) if maskable else [], strict=True))
                failed += sum(a.failed for a in natural) + sum(a.failed for a in masked.values())
                # right on a masked image: "no X" once the object is gone, "X" once the cue is
                accuracies[name] = np.array([[said.accuracy(True), masked[i.item_id].accuracy(self.mask == "cue")
                                              if i.item_id in masked else math.nan]
                                             for i, said in zip(group, natural, strict=True)])
            self.rows.append(_gap_row(label, attribute, taxonomy_type, extremes, accuracies["top"],
                                      accuracies["bottom"], failed, self.bootstrap, self.seed))
        self.failed_answers += sum(a.failed for a in answered.values())


def spurious_gaps(workspace: Workspace, model: ModelUnderTest, source: str = "detector", run_id: str | None = None,
                  k: int = 50, seed: int = 0, classes: Sequence[str] | None = None, mask: str = "object",
                  progress: bool = True, bootstrap: int = BOOTSTRAP_DRAWS) -> GapTable:
    """The natural, masked and combined spurious gap of ``model`` for every (class, cue), with its
    bootstrap interval and random-ordering baseline (``bootstrap`` draws each).

    ``mask="object"`` (SpurLens) blacks out the class object, so a right answer is "no X";
    ``mask="cue"`` blacks out the cue's own boxes instead, and a right answer stays "X".

    The own presence rows go to a scratch file and are ranked a few whole classes at a time
    (``GAP_ROWS``), so memory holds one part's rows, not every row of every class.
    """
    if mask not in ("object", "cue"):
        raise ValueError(f"mask is 'object' or 'cue', not {mask!r}")
    if bootstrap < 1:
        raise ValueError(f"bootstrap is a number of draws (1 or more), not {bootstrap}")
    all_classes = [label for label in workspace.catalog.labels() if label]
    wanted = sorted(set(classes) & set(all_classes) if classes else all_classes)
    gaps = _GapPass(workspace, model, source, run_id, k, seed, mask, bootstrap, all_classes)
    with tempfile.TemporaryDirectory(prefix="curate-gap-") as scratch:
        labels = labels_file(workspace, Path(scratch))
        evidence = workspace.catalog.evidence_scan(source=source, run_id=run_id)
        presence = (presence_scan(evidence, labels, threshold=0.0)  # the wanted classes' own cues
                    .filter(pl.col("own"), pl.col("class_label").cast(pl.String).is_in(wanted)))
        path = Path(scratch) / "presence.parquet"
        presence.select("item", "class_label", "attribute", "taxonomy_type", "score").sink_parquet(path)
        pairs = pl.scan_parquet(path).group_by("class_label", "attribute").len().collect()
        with progress_bar(f"spurious gap ({model.name})", pairs.height, progress) as advance:
            for part in _class_parts(pl.scan_parquet(path), labels, pairs):
                gaps.add(part, advance)
    if not gaps.rows:
        return GapTable(pl.DataFrame(schema={c: pl.List(pl.String) if c.endswith("_items") else pl.Float64
                                              for c in GAP_COLUMNS}), gaps.skipped, gaps.failed_answers)
    table = pl.DataFrame(gaps.rows, infer_schema_length=None).sort(["class_label", "score"], descending=[False, True],
                                                               nulls_last=True, maintain_order=True)
    return GapTable(table.select(GAP_COLUMNS), gaps.skipped, gaps.failed_answers)
