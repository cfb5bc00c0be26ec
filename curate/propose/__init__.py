"""Propose: cues per class (priors, LLM) and evidence per item (CLIP, detector).

>>> sorted(PROPOSERS)  # doctest: +NORMALIZE_WHITESPACE
['clip', 'clip+detector', 'detector', 'focus-settings', 'llm-cues', 'logo-mining', 'neural-pca', 'priors',
 'vlm-attributes']
"""

from curate.propose import clip, detector, focus, llm_cues, logos, neural_pca, priors, vlm  # noqa: F401  (registers them)
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
