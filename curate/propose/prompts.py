"""Versioned prompt templates: a folder of ``.txt`` files with ``$placeholders``.

The version recorded with every run is the folder name plus a hash of the files, so an edited
prompt can never pass for the old one.

>>> prompts = load_prompts("llm-cues-v1")
>>> prompts.version.startswith("llm-cues-v1@")
True
>>> prompts.render("filter_part_of", cue="leash", label="dog")
'Is a leash part of a dog? Answer as JSON: {"answer": "yes"} or {"answer": "no"}.'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from string import Template

PROMPTS_DIR = Path(__file__).with_name("prompts")


@dataclass(frozen=True, slots=True)
class PromptSet:
    """The templates of one prompt folder, by file stem."""

    name: str
    version: str
    templates: dict[str, Template]

    def render(self, template: str, **fields: object) -> str:
        """Fill a template; a missing placeholder is an error, not a silent gap."""
        if template not in self.templates:
            raise KeyError(f"prompt set {self.name} has no template {template!r}")
        return self.templates[template].substitute(**fields).strip()


def load_prompts(name_or_path: str) -> PromptSet:
    """A built-in prompt set by name (``llm-cues-v1``) or a folder of your own."""
    folder = Path(name_or_path) if Path(name_or_path).is_dir() else PROMPTS_DIR / name_or_path
    files = sorted(folder.glob("*.txt"))
    if not files:
        known = ", ".join(sorted(p.name for p in PROMPTS_DIR.iterdir() if p.is_dir()))
        raise FileNotFoundError(f"no prompt templates in {folder}; built-in sets: {known}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    templates = {path.stem: Template(path.read_text()) for path in files}
    return PromptSet(folder.name, f"{folder.name}@{digest.hexdigest()[:12]}", templates)
