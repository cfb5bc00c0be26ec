"""``priors``: a built-in, offline list of candidate cues per taxonomy type, so the road runs
without any LLM. The list is data (``data/priors.json``) and can be replaced by the user's own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from curate.propose.base import ProposeContext, ProposeError, Proposer, register_proposer
from curate.records import Cue, EvidenceRole
from curate.taxonomy import OffTaxonomyError, canonical_type

BUILTIN_PRIORS = Path(__file__).with_name("data") / "priors.json"


def load_priors(path: Path = BUILTIN_PRIORS) -> dict[str, list[str]]:
    """``{type: [cue, ...]}`` with every type checked against the nine MM-SpuBench types.

    >>> sorted(load_priors())[:2]
    ['Background', 'Co-occurring Objects']
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ProposeError(f"cannot read priors from {path}: {error}") from error
    priors: dict[str, list[str]] = {}
    for type_name, cues in raw.items():
        try:
            priors[canonical_type(type_name)] = [str(c).strip().lower() for c in cues if str(c).strip()]
        except OffTaxonomyError as error:
            raise ProposeError(f"{path}: {error}") from error
    return priors


@register_proposer("priors")
@dataclass
class PriorsProposer(Proposer):
    """Every prior cue becomes a candidate cue of every class (optionally only some ``types``);
    ``core`` names a JSON file ``{class: [core attribute, ...]}`` whose attributes become core cues
    of their class (what MM-SpuBench items need beside spurious ones)."""

    types: tuple[str, ...] | None = None
    path: str | None = None
    core: str | None = None

    def run(self, context: ProposeContext) -> None:
        priors = load_priors(Path(self.path) if self.path else BUILTIN_PRIORS)
        core = _load_core(Path(self.core)) if self.core else {}
        wanted = {canonical_type(t) for t in self.types} if self.types else set(priors)
        for label in context.pending_classes():
            cues: dict[str, str] = {}  # cue -> its type
            for type_name, names in priors.items():
                for name in names if type_name in wanted else []:
                    cues.setdefault(name, type_name)  # a cue listed under two types keeps the first
            context.write_cues([Cue(label, name, self.name, context.run.run_id, type_name, EvidenceRole.CANDIDATE,
                                    {"prior_list": str(self.path or "builtin")})
                                for name, type_name in sorted(cues.items()) if name not in core.get(label, ())]
                               + [Cue(label, name, self.name, context.run.run_id, None, EvidenceRole.CORE,
                                      {"core_list": str(self.core)}) for name in core.get(label, ())])


def _load_core(path: Path) -> dict[str, list[str]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ProposeError(f"cannot read core attributes from {path}: {error}") from error
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ProposeError(f"{path}: core attributes are {{class: [attribute, ...]}}")
    return {str(label): sorted({str(a).strip().lower() for a in names if str(a).strip()})
            for label, names in raw.items()}
