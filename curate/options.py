"""Options of plugins (sources, proposers, builders, evaluators, models under test), checked in one place.

Every plugin declares its options as typed dataclass fields or keyword parameters. ``check_options``
converts and validates values against those declarations, whether they come from the command line
(``--set key=value`` text, see ``parse_pairs``) or from Python keyword arguments: ``bool``, ``int``,
``float``, ``str``, ``Path``, ``None`` in unions, ``tuple[X, ...]`` / ``tuple[X, Y]`` (text is
comma-separated), ``frozenset[X]``, ``list[X]`` and ``Literal[...]`` choices. A bad value is one
line naming the option and what it accepts.

>>> from dataclasses import dataclass
>>> from typing import Literal
>>> @dataclass
... class Split:
...     balance: Literal["within_class", "all"] = "within_class"
...     majority: tuple[int, ...] | None = None
...     strict: bool = False
>>> check_options(Split, {"majority": "1,0", "strict": "yes"})
{'majority': (1, 0), 'strict': True}
>>> check_options(Split, {"balance": "globally"})
Traceback (most recent call last):
...
curate.options.OptionError: option balance: 'globally' is not one of within_class, all
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")
NONE = ("none", "null")


class OptionError(ValueError):
    """An option's value does not fit its declared type, or the option does not exist."""


def parse_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings (``--set``) as a dict of text; dashes in keys become underscores.

    >>> parse_pairs(["train-correlation=0.9", "classes=dog,cat"])
    {'train_correlation': '0.9', 'classes': 'dog,cat'}
    """
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--set wants key=value, got {pair!r}")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def declared_options(target: Callable[..., Any], skip: Sequence[str] = ()) -> dict[str, Any]:
    """The keyword options ``target`` (a class or function) declares, name -> resolved type
    (``Any`` where a type cannot be resolved)."""
    annotations = _annotations(target)
    declared: dict[str, Any] = {}
    for name, parameter in inspect.signature(target).parameters.items():
        if name in skip or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        declared[name] = annotations.get(name, Any)
    return declared


def _annotations(target: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations, each in the namespace of the module that wrote it (dataclass fields
    may come from base classes in other modules)."""
    if not inspect.isclass(target):
        namespace = vars(sys.modules[target.__module__])
        return {k: _resolve(v, namespace) for k, v in inspect.get_annotations(target).items()}
    resolved: dict[str, Any] = {}
    for klass in reversed(target.__mro__):
        namespace = vars(sys.modules[klass.__module__])
        for name, annotation in inspect.get_annotations(klass).items():
            resolved[name] = _resolve(annotation, namespace)
        init = klass.__dict__.get("__init__")
        if init is not None:  # plain classes declare their options on __init__
            for name, annotation in inspect.get_annotations(init).items():
                resolved.setdefault(name, _resolve(annotation, namespace))
    return resolved


def _resolve(annotation: Any, namespace: Mapping[str, Any]) -> Any:
    if annotation is inspect.Parameter.empty:
        return Any
    if isinstance(annotation, str):
        try:
            return eval(annotation, {**vars(typing), **namespace})  # noqa: S307  (our own annotations)
        except Exception:  # noqa: BLE001  (a name only imported for type checking)
            return Any
    return annotation


def check_options(target: Callable[..., Any], options: Mapping[str, Any], what: str = "",
                  skip: Sequence[str] = (), error: type[Exception] = OptionError) -> dict[str, Any]:
    """``options`` converted to the types ``target`` declares; an unknown option or a bad value
    raises ``error`` with one line (``what`` names the plugin in it)."""
    declared = declared_options(target, skip)
    prefix = f"{what} " if what else ""
    unknown = sorted(set(options) - set(declared))
    if unknown:
        raise error(f"{prefix}has no option {', '.join(unknown)}; its options: {', '.join(sorted(declared))}")
    checked = {}
    for name, value in options.items():
        try:
            checked[name] = convert(value, declared[name])
        except OptionError as problem:
            raise error(f"{prefix}option {name}: {problem}") from None
    return checked


def convert(value: Any, kind: Any) -> Any:
    """``value`` (text or a Python value) as type ``kind``; ``OptionError`` if it does not fit.

    >>> convert("0.5", float), convert("a, b", tuple[str, ...]), convert(None, int | None)
    (0.5, ('a', 'b'), None)
    >>> convert("ture", bool)
    Traceback (most recent call last):
    ...
    curate.options.OptionError: 'ture' is not a bool (true or false)
    """
    if kind is Any:
        return value
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        return _convert_union(value, arguments)
    if origin is Literal:
        return _convert_choice(value, arguments)
    if origin in (tuple, list, frozenset, set):
        return _convert_sequence(value, origin, arguments)
    if kind is type(None):
        if value is None or (isinstance(value, str) and value.lower() in NONE):
            return None
        raise OptionError(f"{value!r} is not none")
    convert_one = SCALARS.get(kind)
    if convert_one is None:
        return value  # a type we do not check (a workspace, a data frame ...)
    return convert_one(value)


def _convert_union(value: Any, members: tuple[Any, ...]) -> Any:
    if type(None) in members and (value is None or (isinstance(value, str) and value.lower() in NONE)):
        return None
    others = [m for m in members if m is not type(None)]
    for member in others:  # a value that already has one of the types is kept as it is
        if isinstance(member, type) and isinstance(value, member) and not (member is int and isinstance(value, bool)):
            return value
    problems = []
    for member in others:
        try:
            return convert(value, member)
        except OptionError as problem:
            problems.append(str(problem))
    allowed = " or ".join(_name(m) for m in members)
    raise OptionError(f"{value!r} is not {allowed}" if len(problems) != 1 else problems[0])


def _convert_choice(value: Any, choices: tuple[Any, ...]) -> Any:
    for choice in choices:
        if value == choice or (isinstance(value, str) and not isinstance(choice, str) and value == str(choice)):
            return choice
    raise OptionError(f"{value!r} is not one of {', '.join(str(c) for c in choices)}")


def _convert_sequence(value: Any, origin: type, arguments: tuple[Any, ...]) -> Any:
    if isinstance(value, str):
        parts: list[Any] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        parts = list(value)
    else:
        raise OptionError(f"{value!r} is not a list of values (give them comma-separated)")
    if origin is tuple and arguments and arguments[-1] is not Ellipsis:
        if len(parts) != len(arguments):
            raise OptionError(f"{value!r} has {len(parts)} values, not {len(arguments)}")
        kinds = list(arguments)
    else:
        kinds = [arguments[0] if arguments else Any] * len(parts)
    converted = []
    for position, (part, kind) in enumerate(zip(parts, kinds, strict=True)):
        try:
            converted.append(convert(part, kind))
        except OptionError as problem:
            raise OptionError(f"value {position + 1}: {problem}") from None
    return origin(converted)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise OptionError(f"{value!r} is not a bool (true or false)")


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise OptionError(f"{value!r} is not an integer")


def _float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise OptionError(f"{value!r} is not a number")


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise OptionError(f"{value!r} is not text")


def _path(value: Any) -> Path:
    if isinstance(value, (str, Path)):
        return Path(value)
    raise OptionError(f"{value!r} is not a path")


SCALARS: dict[Any, Callable[[Any], Any]] = {bool: _bool, int: _int, float: _float, str: _str, Path: _path}


def _name(kind: Any) -> str:
    if kind is type(None):
        return "none"
    return getattr(kind, "__name__", None) or str(kind)


__all__ = ["OptionError", "check_options", "convert", "declared_options", "parse_pairs"]
