"""Named models as data, and one factory per model family.

Built-in names live in ``models.json``; ``add_model`` adds more. A family (``open_clip``,
``yolo-world``, ``yoloe``) is a loader registered with ``@register_family``, and the version its
models record, known from the spec and weights alone, registered with ``@register_version``.

>>> "clip-vit-b-32" in list_models()
True
>>> get_spec("yolo-world-v2-s").text_encoder
'clip-vit-b-32'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, overload

from curate.registry import Registry

_BUILTIN = Path(__file__).with_name("models.json")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A named model: its family, architecture, default weights and (for detectors) text encoder.

    ``architecture`` is an open_clip model name (or a path to an open_clip JSON config), or an
    ultralytics architecture name (its YAML builds it with random weights).
    """

    name: str
    family: str
    architecture: str
    weights: str | None = None
    text_encoder: str | None = None
    description: str = ""


Loader = Callable[[ModelSpec, str], Any]
_SPECS: dict[str, ModelSpec] = {
    name: ModelSpec(name=name, **fields) for name, fields in json.loads(_BUILTIN.read_text()).items()
}


class UnknownModelError(KeyError):
    """No model of that name, or no family to load it."""

    def __str__(self) -> str:
        return str(self.args[0])


FAMILIES: Registry[Loader] = Registry("model family", UnknownModelError)
register_family = FAMILIES.register
Versioner = Callable[[ModelSpec], str]
VERSIONS: Registry[Versioner] = Registry("model family", UnknownModelError)
register_version = VERSIONS.register


def list_models(family: str | None = None) -> list[str]:
    """Registered model names (of one family)."""
    return sorted(name for name, spec in _SPECS.items() if family is None or spec.family == family)


def add_model(spec: ModelSpec) -> None:
    """Register a model (replacing one of the same name)."""
    _SPECS[spec.name] = spec


def remove_model(name: str) -> None:
    """Forget a model registered with ``add_model`` (a name not registered is fine)."""
    _SPECS.pop(name, None)


def get_spec(name: str, **overrides: str | None) -> ModelSpec:
    """The spec of a registered model; overrides that are not None replace its fields
    (``weights="random"``, ``text_encoder="my-clip"``)."""
    if name not in _SPECS:
        raise UnknownModelError(f"no model named {name!r}; known: {', '.join(list_models())}")
    return replace(_SPECS[name], **{k: v for k, v in overrides.items() if v is not None})


M = TypeVar("M")


@overload
def load_model(name: str, weights: str | None = None, device: str = "cpu", *, kind: type[M],
               **overrides: str | None) -> M: ...


@overload
def load_model(name: str, weights: str | None = None, device: str = "cpu", *, kind: None = None,
               **overrides: str | None) -> Any: ...


def load_model(name: str, weights: str | None = None, device: str = "cpu", *, kind: type[M] | None = None,
               **overrides: str | None) -> Any:
    """Build a registered model; ``weights`` overrides the default (``"random"`` for tests). With
    ``kind`` (``ClipModel``, ``OpenSetDetector``) the result is typed as, and checked to be, that class.

    Raises ``WeightsNotFoundError`` at once when the weights are not here, and ``UnknownModelError``
    when the model is not a ``kind``.
    """
    spec = get_spec(name, weights=weights, **overrides)
    model = FAMILIES[spec.family](spec, device)
    if kind is not None and not isinstance(model, kind):
        raise UnknownModelError(f"model {name!r} is a {type(model).__name__}, not a {kind.__name__}")
    return model


def model_version(name: str, weights: str | None = None, **overrides: str | None) -> str:
    """The version ``load_model`` with these arguments gives its model (and its rows), from the spec
    and the checked weights alone: nothing is loaded (what a Ray driver, which loads no model, knows).

    >>> import curate.models
    >>> model_version("clip-vit-b-32", weights="random")
    'ViT-B-32@random'
    """
    spec = get_spec(name, weights=weights, **overrides)
    return VERSIONS[spec.family](spec)
