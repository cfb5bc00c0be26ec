"""``llm-cues``: candidate spurious cues per class from an LLM, by the SpurLens procedure, typed
into the nine MM-SpuBench types.

1. Four prompts of ``n_items`` items each: objects in images of X (not part of X), background
   elements, objects next to X, objects associated with X. Longer lists are cut to ``n_items``.
2. Normalise: lowercase, singularise with ``inflect`` (as SpurLens does), drop items containing a
   word of the class name anywhere ("doghouse" for dog), deduplicate.
3. Four yes/no filters; a cue is kept unless "Can a {cue} exist without a {X}?" is No, or "Do all
   or almost all {X}s have a {cue}?", "Is a {cue} part of a {X}?" or "Do all or almost all {cue}s
   have a {X}?" is Yes (plurals by ``inflect``). An unanswered question keeps the cue and is recorded.
4. Each kept cue is typed; an answer outside the nine types is asked again, then left untyped
   with the reason recorded (never stored as an off-taxonomy type).

A class is done once its failures are recorded (``llm-failures``, perhaps none). A re-run works again
on classes with a request that never got an answer (an unanswered filter, an untyped cue, a missing
list): every other answer comes from the cache, so only what failed is asked again, and the class's
cues are replaced by the repaired ones.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Literal

import polars as pl
from pydantic import BaseModel, field_validator

from curate.llm_settings import LLMSettings
from curate.models.llm import LLMClient, Messages
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.llm_common import (
    count_cost,
    failure,
    failure_counts,
    record_failures,
    recorded_failures,
    retryable,
    spent,
)
from curate.propose.prompts import PromptSet, load_prompts
from curate.records import Cue, EvidenceRole
from curate.taxonomy import SPURIOUS_TYPES, canonical_type

if TYPE_CHECKING:
    import inflect

LIST_PROMPTS = ("list_objects", "list_background", "list_next_to", "list_associated")
FILTERS = {  # template -> the answer that drops the cue
    "filter_exists_without": "no",
    "filter_all_class_have": "yes",
    "filter_part_of": "yes",
    "filter_all_cue_have": "yes",
}
# Nouns that are plural only: a pair of glasses is "glasses", never "glass" (another object).
PLURAL_ONLY = ("glasses", "sunglasses", "eyeglasses", "goggles", "binoculars", "jeans", "pants", "shorts",
               "trousers", "leggings", "tights", "overalls", "pajamas", "clothes", "scissors", "pliers", "tongs",
               "headphones", "earphones", "stairs", "dice")
# Singular nouns ending in "s" that inflect would cut ("lens" -> "len", "bus" -> "bu").
SINGULAR_IN_S = ("lens", "bus", "gas", "canvas", "atlas", "iris", "tennis", "cactus", "walrus", "octopus",
                 "platypus", "hippopotamus", "asparagus", "hibiscus", "lotus", "citrus", "fungus", "circus",
                 "campus", "abacus", "virus", "chassis")


@cache
def _inflect() -> inflect.engine:
    """The one ``inflect`` engine, made on first use: importing ``inflect`` takes seconds (typeguard
    instruments it), which every process importing a proposer (a Ray actor, the CLI) would pay."""
    import inflect

    engine = inflect.engine()
    for noun in PLURAL_ONLY:
        engine.defnoun(noun, noun)
    return engine


class ItemList(BaseModel):
    items: list[str]


class YesNo(BaseModel):
    answer: Literal["yes", "no"]

    @field_validator("answer", mode="before")
    @classmethod
    def _plain(cls, value: object) -> object:
        return re.sub(r"[^a-z]", "", str(value).lower()) if isinstance(value, str) else value


class CueType(BaseModel):
    type: str

    @field_validator("type")
    @classmethod
    def _nine_types(cls, value: str) -> str:
        return canonical_type(value)  # off-taxonomy answers fail validation and are asked again


def singular(word: str) -> str:
    """The English singular of a noun, by ``inflect``; singular and plural-only nouns stay as they are.

    >>> [singular(w) for w in ["leashes", "puppies", "glasses", "tomatoes", "lens", "buses", "people"]]
    ['leash', 'puppy', 'glasses', 'tomato', 'lens', 'bus', 'person']
    """
    if not word or word in SINGULAR_IN_S:
        return word
    return _inflect().singular_noun(word) or word


def plural(phrase: str) -> str:
    """The English plural of a noun phrase (its last word), by ``inflect``; a plural stays as it is.

    >>> [plural(w) for w in ["bus", "glasses", "tennis ball", "knife", "lens", "jeans"]]
    ['buses', 'glasses', 'tennis balls', 'knives', 'lenses', 'jeans']
    """
    words = phrase.split()
    if not words or singular(words[-1].lower()) != words[-1].lower():
        return phrase
    return _inflect().plural_noun(phrase)


def normalise_cue(text: str) -> str:
    """Lowercase, strip numbering and punctuation, singularise the last word.

    >>> normalise_cue(" 3. Tennis Balls! ")
    'tennis ball'
    """
    unnumbered = re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", text.lower())
    words = re.sub(r"[^a-z0-9' -]+", " ", unnumbered).split()
    return " ".join([*words[:-1], singular(words[-1])]) if words else ""


def names_the_class(cue: str, label: str) -> bool:
    """Whether a cue contains a word of the class name, also inside a word ("doghouse" for dog), as
    SpurLens filters. Words of one or two letters ("ox") count only as whole words, and "of", "the"
    and the like not at all.

    >>> [names_the_class(c, "dog") for c in ["doghouse", "dogs bowl", "hot dog", "leash"]]
    [True, True, True, False]
    >>> [names_the_class(c, "ox") for c in ["ox cart", "box"]]
    [True, False]
    """
    words = cue.split()
    for word in {singular(w) for w in re.findall(r"[a-z0-9']+", label.lower())} - _FUNCTION_WORDS:
        if word in words or (len(word) > 2 and word in cue):
            return True
    return False


_FUNCTION_WORDS = {"a", "an", "and", "at", "for", "in", "of", "on", "or", "the", "to", "with"}


def clean_cues(label: str, raw: dict[str, list[str]]) -> dict[str, list[str]]:
    """Normalised cue -> the list prompts that proposed it, without cues naming the class.

    >>> clean_cues("golden retriever", {"list_objects": ["Balls", "retriever collar", "ball"]})
    {'ball': ['list_objects']}
    """
    cues: dict[str, list[str]] = {}
    for prompt, items in raw.items():
        for item in items:
            cue = normalise_cue(item)
            if cue and not names_the_class(cue, label) and prompt not in cues.setdefault(cue, []):
                cues[cue].append(prompt)
    return {cue: prompts for cue, prompts in cues.items() if prompts}


@register_proposer("llm-cues")
@dataclass
class LLMCuesProposer(LLMSettings, Proposer):
    """Ask an OpenAI-compatible LLM for cues per class, by the SpurLens procedure."""

    prompts: str = "llm-cues-v2"
    n_items: int = 16

    def run(self, context: ProposeContext) -> None:
        prompts = load_prompts(self.prompts)
        client = LLMClient(self.settings(), context.workspace.cache)
        context.models[self.model] = f"{self.settings().server()} prompts={prompts.version}"
        earlier = {label: recorded_failures(context, label) for label in context.class_labels()}
        classes = [label for label, failed in earlier.items() if failed is None or retryable(failed)]
        with progress_bar("llm-cues", len(classes), context.progress) as advance:
            for label in classes:
                before = Counter(client.stats.counts)
                stored = context.workspace.catalog.cues(class_label=label, source=self.name, run_id=context.run.run_id)
                raw, candidates, cues, failures = self._class_cues(context, client, prompts, label)
                filtered_out = set(candidates) - {cue.attribute for cue in cues}
                context.replace_cues(label, self.name, cues, **spent(client, before),
                                     **failure_counts(retryable(earlier[label]), failures),
                                     cues_filtered_out=len(filtered_out - _filtered_before(label, raw, stored,
                                                                                           earlier[label])),
                                     untyped_cues=_untyped(cues) - _untyped(stored))
                record_failures(context, label, failures)  # after the cues: this marks the class done
                advance()
        count_cost(context, client)

    def _messages(self, prompts: PromptSet, template: str, **fields: str | int) -> Messages:
        """The messages of one request; templates may also name ``$labels`` and ``$cues`` (the plurals)."""
        plurals = {f"{name}s": plural(str(fields[name])) for name in ("label", "cue") if name in fields}
        return [{"role": "system", "content": prompts.render("system")},
                {"role": "user", "content": prompts.render(template, **fields, **plurals)}]

    def _class_cues(self, context: ProposeContext, client: LLMClient, prompts: PromptSet, label: str
                    ) -> tuple[dict[str, list[str]], dict[str, list[str]], list[Cue], list[dict[str, object]]]:
        """(the lists answered, the candidates they give, the cues kept, the failed requests) of a class."""
        failures: list[dict[str, object]] = []
        listed = client.ask_many([(self._messages(prompts, name, n=self.n_items, label=label), ItemList)
                                  for name in LIST_PROMPTS])
        raw: dict[str, list[str]] = {}
        for name, result in zip(LIST_PROMPTS, listed, strict=True):
            if result.ok:
                raw[name] = result.value.items[:self.n_items]  # type: ignore[union-attr]  # value is set when result.ok
            else:
                failures.append(failure(context, label, name, result))
        candidates = clean_cues(label, raw)
        names = sorted(candidates)
        questions = [(self._messages(prompts, template, cue=cue, label=label), YesNo)
                     for cue in names for template in FILTERS]
        answers = iter(client.ask_many(questions))
        kept: dict[str, dict[str, str]] = {}
        for cue in names:
            verdicts = {}
            for template in FILTERS:
                result = next(answers)
                if result.ok:
                    verdicts[template] = result.value.answer  # type: ignore[union-attr]  # value is set when result.ok
                else:
                    verdicts[template] = "unanswered"
                    failures.append(failure(context, label, template, result, cue))
            if not any(verdicts[t] == drop for t, drop in FILTERS.items()):
                kept[cue] = verdicts
        typed = client.ask_many([(self._messages(prompts, "type", cue=cue, label=label,
                                                 types="\n".join(SPURIOUS_TYPES)), CueType) for cue in kept])
        cues = []
        for (cue, verdicts), result in zip(kept.items(), typed, strict=True):
            extra: dict[str, object] = {"prompts": candidates[cue], "filters": verdicts,
                                        "prompt_version": prompts.version}
            if not result.ok:
                failures.append(failure(context, label, "type", result, cue))
                extra["type_error"] = result.error
            cues.append(Cue(label, cue, self.name, context.run.run_id,
                            # ignored below (union-attr): value is set when result.ok
                            result.value.type if result.ok else None,  # type: ignore[union-attr]
                            EvidenceRole.CANDIDATE, extra))
        return raw, candidates, cues, failures


def _filtered_before(label: str, raw: dict[str, list[str]], stored: list[Cue],
                     earlier: pl.DataFrame | None) -> set[str]:
    """The cues a class's earlier pass filtered out (and counted): candidates of the lists it had,
    less the cues it kept. Answers are only ever added, so these are filtered out again now."""
    if earlier is None:
        return set()
    answered = {name: items for name, items in raw.items() if name not in set(earlier["step"])}
    return set(clean_cues(label, answered)) - {cue.attribute for cue in stored}


def _untyped(cues: list[Cue]) -> int:
    return sum(1 for cue in cues if cue.taxonomy_type is None)
