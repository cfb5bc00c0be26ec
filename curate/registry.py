"""One registry type for every kind of plugin: source kinds, proposers, model families.

>>> shapes = Registry("shape", attribute="name")
>>> @shapes.register("square")
... class Square:
...     pass
>>> Square.name, sorted(shapes), shapes["square"] is Square
('square', ['square'], True)
>>> shapes["circle"]
Traceback (most recent call last):
...
KeyError: "unknown shape 'circle'; known: square"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from curate.options import check_options

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> plugins, filled by ``@registry.register(name)``.

    ``attribute``, when given, is set on each registered plugin to its name; ``error`` is the
    exception type raised for an unknown name.
    """

    def __init__(self, what: str, error: type[Exception] = KeyError, attribute: str | None = None) -> None:
        self.what = what
        self.error = error
        self.attribute = attribute
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding a plugin under ``name``; a name is registered once."""

        def decorate(plugin: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is already registered")
            if self.attribute is not None:
                setattr(plugin, self.attribute, name)
            self._entries[name] = plugin
            return plugin

        return decorate

    def create(self, name: str, **options: Any) -> Any:
        """Instantiate a registered plugin with its options converted to their declared types
        (``curate.options``); an option it does not declare, or a value that does not fit, is a
        one-line error."""
        plugin: Callable[..., Any] = self[name]  # type: ignore[assignment]  # T is a class or factory, unbounded
        return plugin(**check_options(plugin, options, f"{self.what} {name!r}", error=self.error))

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise self.error(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
