"""Propose: cues per class (priors, LLM) and evidence per item (CLIP, detector).

>>> sorted(PROPOSERS)  # doctest: +NORMALIZE_WHITESPACE
['clip', 'clip+detector', 'detector', 'errors', 'focus-settings', 'llm-cues', 'logo-mining', 'neural-pca',
 'priors', 'vlm-attributes']
"""

from curate.propose import (  # noqa: F401  (registers them)
    clip,
    detector,
    errors,
    focus,
    llm_cues,
    logos,
    neural_pca,
    priors,
    vlm,
)
from curate.propose.base import (
    PROPOSERS,
    ProposeContext,
    ProposeError,
    Proposer,
    ProposeResult,
    make_proposer,
    propose,
    register_proposer,
)

__all__ = [
    "PROPOSERS", "ProposeContext", "ProposeError", "ProposeResult", "Proposer", "make_proposer", "propose",
    "register_proposer",
]
