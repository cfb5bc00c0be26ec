"""``errors``: spurious cues discovered from the mistakes of a model under test.

Input: the model's predictions on workspace items (a CSV, TSV, parquet or JSON-lines table with
``item_id``, ``pred`` and optionally ``score``, as ``curate evaluate`` reads them). An item is wrong
when ``pred`` is not its class. Each image needs a caption: from a column of the predictions, a
caption table (``captions``), or else a vision-language model through the cached LLM client.

Methods (``method``), each in a registry of its own:

- ``b2t`` (Bias-to-Text): keywords of the class's wrong images' captions by YAKE (n-grams up to
  ``max_ngram``, the ``keywords`` best, dedup 0.9 as B2T's code), each scored by B2T's CLIP score,
  the mean similarity of "a photo of a {keyword}" with the class's wrong images minus that with its
  right images, and by the error rate of the images whose caption mentions it against those whose
  caption does not;
- ``ladder``: an LLM reads the captions of the class's wrong images (and, as contrast, right ones)
  and writes typed hypotheses; each is then scored like a B2T keyword;
- ``domino``: a Gaussian mixture over the class's CLIP image embeddings (PCA-reduced) with the error
  as one more, weighted, coordinate; slices whose error rate exceeds the class's are kept, ranked by
  error rate, each named by the caption keywords nearest to (slice mean - class mean) in CLIP space.

``rank_by`` orders B2T and Ladder cues by the CLIP score (B2T's ranking) or by the error gap (error
rate with the cue minus without). Each class's cues (the best ``top``) are stored as ``Cue`` rows whose
``extra`` holds the evidence: error rates with and without the cue with 95% Wilson intervals, the
numbers of images, example item ids (wrong ones first) and counterexamples (images without the cue,
right ones first), the CLIP score, the method and the options.
Every image of the class gets an ``Evidence`` row per cue (score: 1 when its caption mentions the
cue, else 0; for a Domino slice the membership probability; ``extra`` holds the prediction, its
``score`` as ``pred_score``, whether it is wrong, and the caption where it mentions the cue), so
rounds, analysis and builders take discovered cues like any other. Keywords that name the class are
left out, as in the LLM cue path. Cues are typed into the nine MM-SpuBench types by the LLM with
``type_with_llm`` (Ladder's come typed); otherwise they stay untyped, with the reason in
``extra["type_error"]``, for a round to settle. Classes the model never or always gets wrong have no
contrast and are skipped (``classes_without_contrast``, set once in the run's counts).

A class is done once its cues are stored; a class whose captions or types the server failed to give
is left for the re-run, which asks only what failed (answers are cached).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from curate.executors import image_batches
from curate.llm_settings import LLMSettings
from curate.models import ClipModel, load_model
from curate.models.llm import LLMClient, LLMResult, Messages
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, ProposeError, Proposer, register_proposer
from curate.propose.embeddings import EmbeddingStore
from curate.propose.llm_common import count_cost, spent
from curate.propose.llm_cues import CueType, names_the_class, normalise_cue, singular
from curate.propose.prompts import PromptSet, load_prompts
from curate.propose.vlm import SpuriousAttribute, data_url
from curate.records import Cue, Evidence, EvidenceRole, Item
from curate.registry import Registry
from curate.secrets import scrub
from curate.tabular import read_table
from curate.taxonomy import SPURIOUS_TYPES

SOURCE = "errors"
B2T_TEMPLATE = "a photo of a {}"  # B2T's released code scores keywords with this prompt
UNTYPED = "not typed: discovered from errors; settle its type in a verification round, or use type_with_llm"
# Words that say where in the picture, not what: "snowy background" is mentioned by "a dog on snow".
_GENERIC = {"a", "an", "and", "at", "for", "in", "of", "on", "or", "the", "to", "with", "by", "near", "its",
            "background", "foreground", "scene", "image", "photo", "picture", "setting", "presence", "visible"}


class Caption(BaseModel):
    caption: str = Field(min_length=1)


class Hypotheses(BaseModel):
    hypotheses: list[SpuriousAttribute] = Field(min_length=1)  # an attribute with its type, as a VLM names one


@dataclass(frozen=True, slots=True)
class ClassErrors:
    """One class's images with the model's predictions, whether each is wrong, its caption, and its
    unit-length CLIP image embedding (rows in item order)."""

    label: str
    items: list[Item]
    preds: list[str]
    wrong: np.ndarray
    captions: list[str]
    vectors: np.ndarray


@dataclass(frozen=True, slots=True)
class Finding:
    """A discovered cue of a class: its presence per image (0..1, in ``ClassErrors.items`` order),
    the value it is ranked by, and what the method knows of it (type, CLIP score, names)."""

    attribute: str
    presence: np.ndarray
    rank_value: float
    taxonomy_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_predictions(path: str | Path) -> pl.DataFrame:
    """The predictions table (``item_id``, ``pred``, optional ``score`` and caption column), checked:
    a missing column, a missing prediction or an item predicted twice is a one-line error.

    >>> import tempfile, os
    >>> table = os.path.join(tempfile.mkdtemp(), "preds.csv")
    >>> _ = open(table, "w").write("item_id,pred\\nab,dog\\n")
    >>> read_predictions(table).rows()
    [('ab', 'dog')]
    """
    frame = read_table(Path(path), ProposeError)
    _require(frame, f"predictions {path}", "item_id", "pred")
    frame = frame.with_columns(pl.col("item_id").cast(pl.String), pl.col("pred").cast(pl.String))
    if frame["pred"].null_count():
        raise ProposeError(f"{frame['pred'].null_count()} of {frame.height} rows of {path} have no pred")
    repeated = frame.filter(pl.col("item_id").is_duplicated())["item_id"].unique().sort()
    if repeated.len():
        raise ProposeError(f"{repeated.len()} items are predicted twice in {path}, e.g. {repeated[0]}")
    return frame


def _require(frame: pl.DataFrame, what: str, *columns: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ProposeError(f"{what} have no column {', '.join(missing)}; columns: {', '.join(frame.columns)}")


def caption_words(text: str) -> set[str]:
    """The singular words of a caption.

    >>> sorted(caption_words("Two dogs on snowy hills"))
    ['dog', 'hill', 'on', 'snowy', 'two']
    """
    return {singular(word) for word in re.findall(r"[a-z0-9']+", text.lower())}


def mentions(phrase: str, words: set[str]) -> bool:
    """Whether a caption (its ``caption_words``) mentions a cue: every word of the cue that says what
    (not "background", "on", "the") is in it. A cue of only such words is never mentioned.

    >>> words = caption_words("a dog lying on snow near a red ball")
    >>> [mentions(p, words) for p in ["snow", "snowy background", "snow background", "red balls", "grass"]]
    [True, False, True, True, False]
    """
    content = caption_words(phrase) - _GENERIC
    return bool(content) and content <= words


def yake_keywords(captions: Sequence[str], max_ngram: int, top: int) -> list[str]:
    """YAKE keywords of the captions taken as one text, best first, as B2T extracts them.

    >>> sorted(yake_keywords(["a dog on snow", "a dog in snow", "a dog lying on snow"], 1, 3)[:2])
    ['dog', 'snow']
    """
    import yake

    text = " ".join(c.strip().rstrip(".") + "." for c in captions if c.strip())
    if not text:
        return []
    extractor = yake.KeywordExtractor(lan="en", n=max_ngram, dedupLim=0.9, top=top, features=None)
    return [keyword for keyword, _ in extractor.extract_keywords(text)]


def b2t_clip_score(vectors: np.ndarray, text: np.ndarray, wrong: np.ndarray) -> float:
    """B2T's CLIP score: mean similarity of ``text`` with the wrong images minus that with the right ones.

    >>> images = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> b2t_clip_score(images, np.array([1.0, 0.0]), np.array([True, True, False]))
    1.0
    """
    similarity = vectors @ text
    return float(similarity[wrong].mean() - similarity[~wrong].mean())


def error_evidence(wrong: np.ndarray, present: np.ndarray) -> dict[str, float | int]:
    """Error rates of the images with and without a cue, with 95% Wilson intervals, and their gap.

    >>> evidence = error_evidence(np.array([True, True, False, False]), np.array([True, True, False, True]))
    >>> [round(evidence[k], 3) for k in ("n_with", "errors_with", "error_rate_with", "error_gap")]
    [3, 2, 0.667, 0.667]
    """
    from curate.analyze.cues import wilson  # here: importing the proposers would load analysis and matplotlib

    result: dict[str, float | int] = {}
    for name, chosen in (("with", present), ("without", ~present)):
        n, errors = int(chosen.sum()), int((wrong & chosen).sum())
        low, high = wilson(errors, n)
        result |= {f"n_{name}": n, f"errors_{name}": errors, f"error_rate_{name}": errors / n if n else float("nan"),
                   f"error_rate_{name}_low": low, f"error_rate_{name}_high": high}
    result["error_gap"] = float(result["error_rate_with"]) - float(result["error_rate_without"])
    return result


@dataclass
class Tools:
    """What the methods share in one run: the options, CLIP, the LLM client (when one is used) and
    the prompts."""

    proposer: ErrorsProposer
    context: ProposeContext
    clip: ClipModel
    prompts: PromptSet
    client: LLMClient | None = None
    pred_scores: dict[str, float] = field(default_factory=dict)

    def text_vectors(self, phrases: Sequence[str], template: str = B2T_TEMPLATE) -> np.ndarray:
        """Unit-length CLIP embeddings of the phrases in ``template`` (cached per text)."""
        if not phrases:
            return np.zeros((0, 0), dtype=np.float32)
        return self.clip.encode_texts([template.format(p) for p in phrases], self.context.workspace.cache)

    def ask(self, requests: list[tuple[Messages, type[BaseModel]]]) -> list[LLMResult]:
        """Answers of the LLM, counted in the run (``llm_failed``: requests without a valid answer)."""
        assert self.client is not None
        before = Counter(self.client.stats.counts)
        results = self.client.ask_many(requests)
        self.context.count(**spent(self.client, before), llm_failed=sum(1 for r in results if not r.ok))
        return results

    def messages(self, template: str, **fields: object) -> Messages:
        return [{"role": "system", "content": self.prompts.render("system")},
                {"role": "user", "content": self.prompts.render(template, **fields)}]


Method = Callable[[Tools, ClassErrors], list[Finding]]
METHODS: Registry[Method] = Registry("discovery method", ProposeError)


def _scored_phrases(tools: Tools, data: ClassErrors, phrases: dict[str, str | None]) -> list[Finding]:
    """Phrases (-> type) scored like B2T keywords; those mentioned by fewer than ``min_images``
    captions, or naming the class, are left out, and of phrases saying the same ("in the snow",
    "snow") the shortest is kept."""
    words = [caption_words(c) for c in data.captions]
    same: dict[frozenset[str], str] = {}
    for phrase in sorted(phrases, key=len):
        same.setdefault(frozenset(caption_words(phrase) - _GENERIC), phrase)
    kept = {}
    for phrase in (p for p in phrases if p in same.values()):
        present = np.array([mentions(phrase, w) for w in words])
        if int(present.sum()) >= tools.proposer.min_images and not names_the_class(phrase, data.label):
            kept[phrase] = (present, phrases[phrase])
    texts = tools.text_vectors(list(kept))
    findings = []
    for row, (phrase, (present, kind)) in enumerate(kept.items()):
        clip_score = b2t_clip_score(data.vectors, texts[row], data.wrong)
        gap = error_evidence(data.wrong, present)["error_gap"]
        findings.append(Finding(phrase, present.astype(float), clip_score if tools.proposer.rank_by == "clip" else gap,
                                kind, {"clip_score": clip_score}))
    return findings


@METHODS.register("b2t")
def b2t(tools: Tools, data: ClassErrors) -> list[Finding]:
    """B2T: YAKE keywords of the wrong images' captions, scored by CLIP score and error rates."""
    captions = [c for c, w in zip(data.captions, data.wrong, strict=True) if w]
    keywords = yake_keywords(captions, tools.proposer.max_ngram, tools.proposer.keywords)
    return _scored_phrases(tools, data, dict.fromkeys(dict.fromkeys(normalise_cue(k) for k in keywords if k)))


@METHODS.register("ladder")
def ladder(tools: Tools, data: ClassErrors) -> list[Finding]:
    """Ladder: typed LLM hypotheses from the wrong images' captions (right ones as contrast), each
    scored like a B2T keyword."""
    limit = tools.proposer.max_captions
    wrong = [c for c, w in zip(data.captions, data.wrong, strict=True) if w][:limit]
    right = [c for c, w in zip(data.captions, data.wrong, strict=True) if not w][:limit]
    [answer] = tools.ask([(tools.messages(
        "hypotheses", label=data.label, n_wrong=len(wrong), n_right=len(right), k=tools.proposer.keywords,
        wrong="\n".join(f"- {c}" for c in wrong), right="\n".join(f"- {c}" for c in right),
        types="\n".join(SPURIOUS_TYPES)), Hypotheses)])
    if not answer.ok:
        tools.context.failed_requests += int(answer.retryable)
        return []
    phrases: dict[str, str | None] = {}
    for hypothesis in answer.value.hypotheses:  # type: ignore[union-attr]  # an ok answer has a value
        phrases.setdefault(normalise_cue(hypothesis.attribute), hypothesis.type)
    return _scored_phrases(tools, data, {p: t for p, t in phrases.items() if p})


@METHODS.register("domino")
def domino(tools: Tools, data: ClassErrors) -> list[Finding]:
    """Domino-style: error-aware Gaussian-mixture slices of the CLIP image embeddings, named by text."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    options = tools.proposer
    n = len(data.items)
    dims = min(options.pca_dims, n - 1, data.vectors.shape[1])
    reduced = (PCA(n_components=dims, random_state=options.seed).fit_transform(data.vectors) if dims > 0
               else data.vectors)
    reduced = reduced / max(float(reduced.std()), 1e-12)
    features = np.hstack([reduced, options.error_weight * data.wrong[:, None].astype(float)])
    mixture = GaussianMixture(n_components=min(options.slices, n), covariance_type="diag", reg_covar=1e-3,
                              random_state=options.seed).fit(features)
    membership, assigned = mixture.predict_proba(features), mixture.predict(features)
    vocabulary = [p for p in dict.fromkeys(normalise_cue(k) for k in yake_keywords(
        data.captions, options.max_ngram, 2 * options.keywords)) if p and not names_the_class(p, data.label)]
    texts = tools.text_vectors(vocabulary)
    base_rate, used, findings = float(data.wrong.mean()), set(), []
    slices = [k for k in range(mixture.n_components) if int((assigned == k).sum()) >= options.min_images]
    slices.sort(key=lambda k: (-float(data.wrong[assigned == k].mean()), -int((assigned == k).sum()), k))
    for k in slices:
        members = assigned == k
        rate = float(data.wrong[members].mean())
        if rate <= base_rate or not vocabulary:
            continue
        direction = data.vectors[members].mean(axis=0) - data.vectors.mean(axis=0)
        order = [vocabulary[i] for i in np.argsort(-(texts @ direction), kind="stable")]
        names = [p for p in order if p not in used][:options.names]
        if not names:
            continue
        used.add(names[0])
        findings.append(Finding(names[0], membership[:, k], rate,
                                extra={"slice": int(k), "names": names, "members": int(members.sum()),
                                       "clip_score": b2t_clip_score(data.vectors, texts[vocabulary.index(names[0])],
                                                                    data.wrong)}))
    return findings


@register_proposer(SOURCE)
@dataclass
class ErrorsProposer(LLMSettings, Proposer):
    """Discover each class's spurious cues from a model's mistakes (``method``: b2t, ladder, domino).

    >>> ErrorsProposer(predictions="").method
    Traceback (most recent call last):
    ...
    curate.propose.base.ProposeError: errors needs predictions: a table with item_id and pred (--predictions)
    """

    predictions: str = ""
    method: str = "b2t"
    captions: str | None = None
    caption_column: str = "caption"
    rank_by: str = "clip"
    top: int = 10
    keywords: int = 20
    max_ngram: int = 3
    min_images: int = 2
    examples: int = 8
    max_captions: int = 40
    slices: int = 8
    pca_dims: int = 32
    error_weight: float = 10.0
    names: int = 3
    seed: int = 0
    clip_model: str = "clip-vit-b-32"
    clip_weights: str | None = None
    device: str = "cpu"
    batch_size: int = 32
    image_max_side: int = 768
    type_with_llm: bool = False
    prompts: str = "errors-v1"
    predictions_sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.predictions:
            raise ProposeError("errors needs predictions: a table with item_id and pred (--predictions)")
        METHODS[self.method]  # an unknown method is an error now, not after the captions
        if self.rank_by not in ("clip", "error_gap"):
            raise ProposeError(f"rank_by is clip or error_gap, not {self.rank_by!r}")
        path = Path(self.predictions)
        if not path.is_file():
            raise ProposeError(f"no predictions table at {path}")
        self.predictions = str(path.resolve())
        if self.captions is not None:
            self.captions = str(Path(self.captions).resolve())
        if self.predictions_sha256 is None:  # in the run's config: other predictions are another run
            self.predictions_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

    def run(self, context: ProposeContext) -> None:
        frame = read_predictions(self.predictions)
        known = {item.item_id: item for item in context.workspace.catalog.items() if item.label is not None}
        preds = {i: pred for i, pred in zip(frame["item_id"], frame["pred"], strict=True) if i in known}
        if not preds:
            raise ProposeError(f"none of the {frame.height} predicted items is a labelled item of this workspace")
        per_class: dict[str, list[Item]] = {}
        for item_id in sorted(preds):
            per_class.setdefault(str(known[item_id].label), []).append(known[item_id])
        contrast = {label for label, items in per_class.items()
                    if len({preds[i.item_id] == label for i in items}) == 2}  # some wrong and some right
        context.workspace.runs.set_counts(context.run.run_id, {  # what the input is, not what was done
            "predictions_unknown": frame.height - len(preds),
            "classes_without_contrast": len(set(context.class_labels()) - contrast)})
        labels = [label for label in context.pending_classes() if label in contrast]
        captions = self._given_captions(frame)
        needs_llm = captions is None or self.method == "ladder" or self.type_with_llm
        prompts = load_prompts(self.prompts)
        client = LLMClient(self.settings(), context.workspace.cache) if needs_llm else None
        if client is not None:
            context.models[self.model] = f"{self.settings().server()} prompts={prompts.version}"
        clip = load_model(self.clip_model, weights=self.clip_weights, device=self.device)
        context.models[clip.name] = clip.version
        scores = (dict(frame.select("item_id", pl.col("score").cast(pl.Float64)).drop_nulls().iter_rows())
                  if "score" in frame.columns else {})
        tools = Tools(self, context, clip, prompts, client, scores)
        store = EmbeddingStore(context.workspace, clip, context.run.run_id)
        with progress_bar(f"errors {self.method}", len(labels), context.progress) as advance:
            for label in labels:
                data = self._class_errors(tools, store, label, per_class[label], preds, captions)
                if data is not None:
                    self._discover(tools, data)
                advance()
        store.flush()
        if client is not None:
            count_cost(context, client)

    def _given_captions(self, frame: pl.DataFrame) -> dict[str, str] | None:
        """Captions the user gave (a caption table, or a column of the predictions), or None."""
        if self.captions is None:
            if self.caption_column not in frame.columns:
                return None
            table, where = frame, self.predictions
        else:
            table, where = read_table(Path(self.captions), ProposeError), self.captions
        _require(table, f"captions {where}", "item_id", self.caption_column)
        rows = table.select(pl.col("item_id").cast(pl.String), pl.col(self.caption_column).cast(pl.String)).drop_nulls()
        return dict(rows.iter_rows())

    def _class_errors(self, tools: Tools, store: EmbeddingStore, label: str, items: list[Item],
                      preds: dict[str, str], given: dict[str, str] | None) -> ClassErrors | None:
        """The class's predicted items that have a caption and an embedding, or None when some captions
        failed (left for the re-run) or no wrong or no right image is left (counted)."""
        context = tools.context
        context.count(unreadable=len(store.embed(items, self.batch_size)))
        items = [item for item in items if store.has(item.item_id)]
        captions = given if given is not None else self._vlm_captions(tools, label, items)
        if captions is None:
            return None
        context.count(items_without_caption=sum(1 for i in items if i.item_id not in captions))
        items = [item for item in items if item.item_id in captions]
        wrong = np.array([preds[i.item_id] != label for i in items], dtype=bool)
        if not wrong.any() or wrong.all():
            context.count(classes_without_captioned_contrast=1)
            return None
        return ClassErrors(label, items, [preds[i.item_id] for i in items], wrong,
                           [captions[i.item_id] for i in items], store.vectors(items))

    def _vlm_captions(self, tools: Tools, label: str, items: list[Item]) -> dict[str, str] | None:
        """Captions of the items by the VLM, or None when the server failed to answer some (a re-run
        asks them again); an item whose answer was no caption is left out."""
        system, text = tools.prompts.render("system"), tools.prompts.render("caption")
        captions, failed = {}, 0
        for batch in image_batches(tools.context.workspace, items, self.batch_size):
            answers = tools.ask([([{"role": "system", "content": system}, {"role": "user", "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": data_url(image, self.image_max_side)}}]}], Caption)
                for image in batch.images])
            for item, answer in zip(batch.items, answers, strict=True):
                if answer.ok:
                    captions[item.item_id] = answer.value.caption  # type: ignore[union-attr]  # ok: has a value
                failed += int(answer.retryable)
        if failed:
            tools.context.failed_requests += failed
            tools.context.count(classes_left_for_rerun=1)
            return None
        return captions

    def _discover(self, tools: Tools, data: ClassErrors) -> None:
        """Find, rank, type and store one class's cues with their evidence."""
        findings = sorted(METHODS[self.method](tools, data), key=lambda f: -f.rank_value)
        findings = [f for f in findings if f.rank_value > 0][:self.top]
        types = self._types(tools, data.label, findings)
        if types is None:
            return
        cues, rows = [], []
        for rank, (finding, (kind, type_error)) in enumerate(zip(findings, types, strict=True), start=1):
            present = finding.presence >= 0.5
            order = sorted(np.flatnonzero(present), key=lambda i: (not data.wrong[i], data.items[i].item_id))
            others = sorted(np.flatnonzero(~present), key=lambda i: (bool(data.wrong[i]), data.items[i].item_id))
            extra = {"method": self.method, "rank": rank, "ranked_by": "error_rate" if self.method == "domino"
                     else self.rank_by, "n_images": len(data.items), "errors": int(data.wrong.sum()),
                     **error_evidence(data.wrong, present), **finding.extra,
                     "examples": [data.items[i].item_id for i in order[:self.examples]],
                     "counterexamples": [data.items[i].item_id for i in others[:self.examples]],
                     "options": self.options()}
            if type_error:
                extra["type_error"] = type_error
            cues.append(Cue(data.label, finding.attribute, SOURCE, tools.context.run.run_id, kind,
                            EvidenceRole.CANDIDATE, extra))
            rows += [Evidence(item.item_id, finding.attribute, SOURCE, tools.context.run.run_id, EvidenceRole.CANDIDATE,
                              kind, float(finding.presence[i]), [], None, None,
                              {"method": self.method, "error": bool(data.wrong[i]), "pred": data.preds[i]}
                              | ({"pred_score": tools.pred_scores[item.item_id]}
                                 if item.item_id in tools.pred_scores else {})
                              | ({"caption": data.captions[i]} if present[i] else {}))
                     for i, item in enumerate(data.items)]
        tools.context.write_evidence(rows, items=len(data.items), errors=int(data.wrong.sum()))
        tools.context.write_cues(cues)  # after the evidence: a class with cues is done

    def _types(self, tools: Tools, label: str, findings: list[Finding]) -> list[tuple[str | None, str | None]] | None:
        """(type, why untyped) of each finding: the method's own type, else the LLM's with
        ``type_with_llm``, else untyped; None when the server failed to answer (the class is left for
        the re-run)."""
        asked = [f for f in findings if f.taxonomy_type is None]
        answers: dict[str, Any] = {}
        errors = dict.fromkeys((f.attribute for f in asked), UNTYPED)
        if asked and self.type_with_llm:
            values = tools.ask([(tools.messages("type", cue=f.attribute, label=label, types="\n".join(SPURIOUS_TYPES)),
                                 CueType) for f in asked])
            unanswered = sum(1 for v in values if v.retryable)
            if unanswered:
                tools.context.failed_requests += unanswered
                return None
            answers = {f.attribute: v.value for f, v in zip(asked, values, strict=True) if v.ok}
            errors = {f.attribute: scrub(v.error or "") for f, v in zip(asked, values, strict=True) if not v.ok}
        typed: list[tuple[str | None, str | None]] = []
        for finding in findings:
            if finding.taxonomy_type is not None:
                typed.append((finding.taxonomy_type, None))
            elif finding.attribute in answers:
                typed.append((answers[finding.attribute].type, None))
            else:
                typed.append((None, errors[finding.attribute]))
        return typed
