"""``mmspubench``: multiple-choice items in exactly MM-SpuBench's released schema, plus
``class_label`` and ``source_dataset``; and an importer that validates existing MM-SpuBench files.

Released fields: ``core_attributes`` (2-5 strings), ``spurious_attributes`` (2-5 strings),
``spurious_correlation_type`` (exactly 2 of the nine types), ``question``, ``choices`` (4 strings
``"A. ..."`` to ``"D. ..."``), ``answer`` (the letter of the choice restating a core attribute) and
``image`` (the file name, ``images/<n><ext>`` in the release folder; ``file_name`` in the tables,
whose published ``image`` column is the picture itself). Items are made from *verified* attributes:
the consensus of human verdicts ("core" / "spurious", with the type people confirmed or corrected).
The three distractors are spurious attributes of exactly two types, and those two are the item's
``spurious_correlation_type`` (the type shown twice first), so per-type accuracy counts only the
types an item shows.
"""

from __future__ import annotations

import ast
import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.builders.base import Builder, BuildError, Release, image_name, register_builder
from curate.taxonomy import SPURIOUS_TYPES
from curate.verdicts import resolved_verdicts
from curate.workspace import Workspace

LETTERS = ("A", "B", "C", "D")
LIST_FIELDS = ("core_attributes", "spurious_attributes", "spurious_correlation_type", "choices")
SCHEMA_FIELDS = ("core_attributes", "spurious_attributes", "spurious_correlation_type", "question", "choices",
                 "answer", "image")
DEFAULT_QUESTIONS = ("Which feature best indicates the identity of the {label} in this image?",
                     "Which feature best indicates the identity of the object in this image?")


def literal_list(value: Any) -> list[str]:
    """A list of strings given as a list or as its Python-literal string (as in the released
    MM-SpuBench files); ``ValueError`` says what is wrong.

    >>> literal_list("['Background', 'Shape']"), literal_list(("Shape",))
    (['Background', 'Shape'], ['Shape'])
    """
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"is neither a list nor a Python-literal list: {value[:60]!r}") from None
    if isinstance(value, tuple) or (hasattr(value, "to_list") and not isinstance(value, list)):
        value = list(value.to_list() if hasattr(value, "to_list") else value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("is not a list of strings")
    return value


def validate_item(raw: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """An MM-SpuBench record with list fields parsed (lists or Python-literal strings), and the
    problems found: off-taxonomy types, wrong counts, malformed choices or answer.

    >>> item, problems = validate_item({"core_attributes": "['a', 'b']", "spurious_attributes": ["c", "d"],
    ...     "spurious_correlation_type": ["Background", "Context"], "question": "Which?",
    ...     "choices": ["A. a", "B. c", "C. d", "D. e"], "answer": "A", "image": "000000.png"})
    >>> problems
    ["off-taxonomy type 'Context'"]
    """
    problems: list[str] = []
    item = dict(raw)
    for name in SCHEMA_FIELDS:
        if name not in item:
            problems.append(f"missing field {name!r}")
    if problems:
        return None, problems
    for name in LIST_FIELDS:
        try:
            item[name] = literal_list(item[name])
        except ValueError as problem:
            problems.append(f"{name} {problem}")
    if problems:
        return None, problems
    for name in ("core_attributes", "spurious_attributes"):
        if not 2 <= len(item[name]) <= 5:
            problems.append(f"{name} has {len(item[name])} entries, not 2-5")
    types = item["spurious_correlation_type"]
    if len(types) != 2:
        problems.append(f"spurious_correlation_type has {len(types)} entries, not 2")
    problems += [f"off-taxonomy type {t!r}" for t in types if t not in SPURIOUS_TYPES]
    choices = item["choices"]
    if len(choices) != 4 or [c[:3] for c in choices] != [f"{letter}. " for letter in LETTERS]:
        problems.append("choices are not four strings 'A. ...' to 'D. ...'")
    if item["answer"] not in LETTERS:
        problems.append(f"answer {item['answer']!r} is not one of A-D")
    return item, problems


def import_mmspubench(path: str | Path) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Read an MM-SpuBench ``annotation.json`` (a JSON list) into valid items and flagged ones.

    Returns (the valid items with their ``index``, [{index, problems}] for the rest).
    """
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BuildError(f"cannot read {path}: {error}") from error
    if not isinstance(records, list):
        raise BuildError(f"{path} holds a {type(records).__name__}, not a JSON list of items")
    valid, flagged = [], []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            flagged.append({"index": index, "problems": [f"not an object but a {type(record).__name__}"]})
            continue
        item, problems = validate_item(record)
        if problems or item is None:
            flagged.append({"index": index, "problems": problems})
        else:
            valid.append({"index": index, **{name: item[name] for name in SCHEMA_FIELDS}})
    return pl.DataFrame(valid) if valid else pl.DataFrame(schema={"index": pl.Int64}), flagged


@register_builder("mmspubench")
@dataclass
class MMSpuBenchBuilder(Builder):
    """MCQ items from verified core and spurious attributes (consensus of a round's verdicts)."""

    verdict_round: str | None = None
    source_dataset: str | None = None
    questions: tuple[str, ...] = DEFAULT_QUESTIONS
    seed: int = 0

    def _verified(self, workspace: Workspace) -> dict[str, dict[str, tuple[str, str | None]]]:
        """item -> attribute -> (consensus role, confirmed type)."""
        votes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        types: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for verdict in resolved_verdicts(workspace, self.verdict_round):
            if verdict.value in ("core", "spurious", "not present"):
                votes[(verdict.item_id, verdict.attribute)][verdict.value] += 1
                if verdict.taxonomy_type in SPURIOUS_TYPES:
                    types[(verdict.item_id, verdict.attribute)][verdict.taxonomy_type] += 1
        verified: dict[str, dict[str, tuple[str, str | None]]] = defaultdict(dict)
        for (item_id, attribute), counts in votes.items():
            ranked = counts.most_common()
            if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
                continue  # a tie is not verified
            kind = types[(item_id, attribute)].most_common(1)
            verified[item_id][attribute] = (ranked[0][0], kind[0][0] if kind else None)
        return verified

    def build(self, workspace: Workspace) -> Release:
        rng = np.random.default_rng(self.seed)
        candidates, skipped = [], Counter[str]()
        for item_id, attributes in sorted(self._verified(workspace).items()):
            core = sorted(a for a, (role, _) in attributes.items() if role == "core")
            spurious = sorted((a, t) for a, (role, t) in attributes.items() if role == "spurious" and t)[:5]
            if len(core) < 2:
                skipped["fewer than 2 verified core attributes"] += 1
            elif len(spurious) < 3:
                skipped["fewer than 3 verified, typed spurious attributes"] += 1
            elif not _two_type_triples(spurious):
                skipped["no 3 spurious attributes of exactly 2 types"] += 1
            else:
                candidates.append((item_id, core[:5], spurious))
        if not candidates:
            raise BuildError(f"no item has enough verified attributes for an MCQ item ({dict(skipped)})")
        letters = [LETTERS[n % 4] for n in range(len(candidates))]
        letters = [letters[i] for i in rng.permutation(len(letters))]  # balanced A-D, in a seeded order
        rows = []
        for number, ((item_id, core, spurious), answer) in enumerate(zip(candidates, letters, strict=True)):
            item = workspace.catalog.item(item_id)
            triples = _two_type_triples(spurious)
            chosen = [spurious[i] for i in triples[int(rng.integers(len(triples)))]]
            chosen = [chosen[i] for i in rng.permutation(3)]
            distractors = [name for name, _ in chosen]
            shown = Counter(t for _, t in chosen)  # the types of the options shown, the commoner first
            two_types = sorted(shown, key=lambda t: (-shown[t], [kind for _, kind in chosen].index(t)))
            options = distractors[:]
            options.insert(LETTERS.index(answer), str(rng.choice(core)))
            question = self.questions[int(rng.integers(len(self.questions)))].format(label=item.label or "object")
            rows.append({
                "core_attributes": core, "spurious_attributes": [name for name, _ in spurious],
                "spurious_correlation_type": two_types, "question": question,
                "choices": [f"{letter}. {text}" for letter, text in zip(LETTERS, options, strict=True)],
                "answer": answer, "file_name": image_name(f"{number:06d}", item.uri), "class_label": item.label,
                "source_dataset": self.source_dataset or source_name(workspace, item_id), "item_id": item_id,
                "uri": item.uri,
            })
        table = pl.DataFrame(rows)
        answers = dict(Counter(table["answer"]))
        types = Counter(t for pair in table["spurious_correlation_type"] for t in pair)
        return Release(self.name, {"test": table}, {
            "schema": "MM-SpuBench annotation.json fields (its image is file_name here), plus class_label, "
                      "source_dataset, item_id, uri",
            "answer_letters": answers, "type_counts": dict(types), "skipped_items": dict(skipped),
            "verdict_round": self.verdict_round or "all rounds", "seed": self.seed,
        }, {"annotation.json": lambda path: path.write_text(json.dumps(table.select(
            *(pl.col("file_name").alias("image") if name == "image" else pl.col(name) for name in SCHEMA_FIELDS),
            "class_label", "source_dataset").to_dicts(), indent=1))},
            table.select(pl.col("file_name").alias("name"), "uri"))


def _two_type_triples(spurious: list[tuple[str, str]]) -> list[tuple[int, int, int]]:
    """Index triples of spurious attributes whose types are exactly two, so that an item's two
    ``spurious_correlation_type`` entries are the types of the three distractors it shows."""
    return [triple for triple in itertools.combinations(range(len(spurious)), 3)
            if len({spurious[i][1] for i in triple}) == 2]


def source_name(workspace: Workspace, item_id: str) -> str:
    """The folder or file name of the first source an item came from."""
    refs = workspace.catalog.references(item_id=item_id)
    return Path(workspace.catalog.source(refs[0].source_id).location).name if refs else "unknown"
