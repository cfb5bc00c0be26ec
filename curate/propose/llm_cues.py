"""``llm-cues``: candidate spurious cues per class from an LLM, by the SpurLens procedure, typed
into the nine MM-SpuBench types.

1. Four prompts of ``n_items`` items each: objects in images of X (not part of X), background
   elements, objects next to X, objects associated with X.
2. Normalise: lowercase, singularise, drop items containing a word of the class name, deduplicate.
3. Four yes/no filters; a cue is kept unless "Can a {cue} exist without a {X}?" is No, or "Do all
   or almost all {X}s have a {cue}?", "Is a {cue} part of a {X}?" or "Do all or almost all {cue}s
   have a {X}?" is Yes. An unanswered question keeps the cue and is recorded.
4. Each kept cue is typed; an answer outside the nine types is asked again, then left untyped
   with the reason recorded (never stored as an off-taxonomy type).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, field_validator

from curate.models.llm import LLMClient, LLMResult, Messages
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, Proposer, register_proposer
from curate.propose.llm_common import LLMOptions, count_cost, record_failures, spent
from curate.propose.prompts import PromptSet, load_prompts
from curate.records import Cue, EvidenceRole
from curate.taxonomy import SPURIOUS_TYPES, canonical_type

LIST_PROMPTS = ("list_objects", "list_background", "list_next_to", "list_associated")
FILTERS = {  # template -> the answer that drops the cue
    "filter_exists_without": "no",
    "filter_all_class_have": "yes",
    "filter_part_of": "yes",
    "filter_all_cue_have": "yes",
}
_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
              "mice": "mouse", "geese": "goose", "people": "person", "leaves": "leaf", "knives": "knife",
              "wolves": "wolf", "shelves": "shelf", "glasses": "glasses", "scissors": "scissors"}


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
    """A rule-based English singular (no corpus download).

    >>> [singular(w) for w in ["leashes", "puppies", "glasses", "trees", "grass", "people"]]
    ['leash', 'puppy', 'glasses', 'tree', 'grass', 'person']
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalise_cue(text: str) -> str:
    """Lowercase, strip numbering and punctuation, singularise the last word.

    >>> normalise_cue(" 3. Tennis Balls! ")
    'tennis ball'
    """
    words = re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", text.lower())
    words = re.sub(r"[^a-z0-9' -]+", " ", words).split()
    return " ".join([*words[:-1], singular(words[-1])]) if words else ""


def clean_cues(label: str, raw: dict[str, list[str]]) -> dict[str, list[str]]:
    """Normalised cue -> the list prompts that proposed it, without cues naming the class.

    >>> clean_cues("golden retriever", {"list_objects": ["Balls", "retriever collar", "ball"]})
    {'ball': ['list_objects']}
    """
    class_words = {singular(w) for w in re.findall(r"[a-z0-9']+", label.lower())}
    cues: dict[str, list[str]] = {}
    for prompt, items in raw.items():
        for item in items:
            cue = normalise_cue(item)
            if cue and not class_words & set(cue.split()) and prompt not in cues.setdefault(cue, []):
                cues[cue].append(prompt)
    return {cue: prompts for cue, prompts in cues.items() if prompts}


@register_proposer("llm-cues")
@dataclass
class LLMCuesProposer(LLMOptions, Proposer):
    """Ask an OpenAI-compatible LLM for cues per class, by the SpurLens procedure."""

    prompts: str = "llm-cues-v1"
    n_items: int = 16

    def run(self, context: ProposeContext) -> None:
        prompts = load_prompts(self.prompts)
        client = LLMClient(self.settings(), context.workspace.cache)
        context.models[self.model] = f"{self.settings().server()} prompts={prompts.version}"
        classes = context.pending_classes()
        with progress_bar("llm-cues", len(classes), context.progress) as advance:
            for label in classes:
                before = Counter(client.stats.counts)
                cues, filtered_out, failures = self._class_cues(context, client, prompts, label)
                record_failures(context, label, failures)  # before the cues: a crash between re-asks nothing
                context.write_cues(cues, **spent(client, before), cues_filtered_out=filtered_out,
                                   llm_failures_recorded=len(failures),
                                   untyped_cues=sum(1 for c in cues if c.taxonomy_type is None))
                advance()
        count_cost(context, client)

    def _messages(self, prompts: PromptSet, template: str, **fields: object) -> Messages:
        return [{"role": "system", "content": prompts.render("system")},
                {"role": "user", "content": prompts.render(template, **fields)}]

    def _class_cues(self, context: ProposeContext, client: LLMClient, prompts: PromptSet,
                    label: str) -> tuple[list[Cue], int, list[dict[str, str]]]:
        failures: list[dict[str, str]] = []

        def failed(step: str, result: LLMResult, cue: str = "") -> None:
            failures.append({"run_id": context.run.run_id, "class_label": label, "step": step, "cue": cue,
                             "error": result.error or ""})

        listed = client.ask_many([(self._messages(prompts, name, n=self.n_items, label=label), ItemList)
                                  for name in LIST_PROMPTS])
        raw: dict[str, list[str]] = {}
        for name, result in zip(LIST_PROMPTS, listed, strict=True):
            if result.ok:
                raw[name] = result.value.items  # type: ignore[union-attr]
            else:
                failed(name, result)
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
                    verdicts[template] = result.value.answer  # type: ignore[union-attr]
                else:
                    verdicts[template] = "unanswered"
                    failed(template, result, cue)
            if not any(verdicts[t] == drop for t, drop in FILTERS.items()):
                kept[cue] = verdicts
        typed = client.ask_many([(self._messages(prompts, "type", cue=cue, label=label,
                                                 types="\n".join(SPURIOUS_TYPES)), CueType) for cue in kept])
        cues = []
        for (cue, verdicts), result in zip(kept.items(), typed, strict=True):
            extra: dict[str, object] = {"prompts": candidates[cue], "filters": verdicts,
                                        "prompt_version": prompts.version}
            if not result.ok:
                failed("type", result, cue)
                extra["type_error"] = result.error
            cues.append(Cue(label, cue, self.name, context.run.run_id,
                            result.value.type if result.ok else None,  # type: ignore[union-attr]
                            EvidenceRole.CANDIDATE, extra))
        return cues, len(names) - len(kept), failures
