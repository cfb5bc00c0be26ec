"""The nine spurious-correlation types of MM-SpuBench, spelled exactly as its released data spells them.

A type string from a model or a file is accepted only if it is one of the nine (ignoring case and
spacing) or an alias listed in ``TYPE_ALIASES``; anything else is refused, never stored silently.

>>> canonical_type("co-occurring objects")
'Co-occurring Objects'
>>> canonical_type("lighting")
'Lighting and Shadows'
>>> canonical_type("Material")
Traceback (most recent call last):
...
curate.taxonomy.OffTaxonomyError: 'Material' is not one of the nine MM-SpuBench types
"""

from __future__ import annotations

import re

SPURIOUS_TYPES: tuple[str, ...] = (
    "Background",
    "Co-occurring Objects",
    "Orientation",
    "Shape",
    "Texture and Noise",
    "Colorization",
    "Lighting and Shadows",
    "Perspective and Angle",
    "Relative Size",
)

# Explicit, reviewed mappings of near-miss spellings. Labels the released data holds off-taxonomy
# ("Context", "Material", "Packaging", "Position", "Size", "Appearance", "Motion Blur") are
# deliberately absent: they are refused, not guessed.
TYPE_ALIASES: dict[str, str] = {
    "background": "Background",
    "backgrounds": "Background",
    "co-occurring object": "Co-occurring Objects",
    "cooccurring objects": "Co-occurring Objects",
    "co occurring objects": "Co-occurring Objects",
    "texture": "Texture and Noise",
    "texture and noise": "Texture and Noise",
    "noise": "Texture and Noise",
    "color": "Colorization",
    "colour": "Colorization",
    "colorisation": "Colorization",
    "lighting": "Lighting and Shadows",
    "lighting and shadow": "Lighting and Shadows",
    "perspective": "Perspective and Angle",
    "angle": "Perspective and Angle",
    "perspective and angles": "Perspective and Angle",
    "relative sizes": "Relative Size",
    "orientations": "Orientation",
    "shapes": "Shape",
}


class OffTaxonomyError(ValueError):
    """A type string that is neither one of the nine types nor a listed alias."""


def _key(text: str) -> str:
    return re.sub(r"[\s_]+", " ", text.strip().lower())


_CANONICAL = {_key(t): t for t in SPURIOUS_TYPES} | {_key(a): t for a, t in TYPE_ALIASES.items()}


def canonical_type(text: str) -> str:
    """The exact MM-SpuBench spelling of ``text``, or ``OffTaxonomyError``."""
    found = _CANONICAL.get(_key(text))
    if found is None:
        raise OffTaxonomyError(f"{text!r} is not one of the nine MM-SpuBench types")
    return found
