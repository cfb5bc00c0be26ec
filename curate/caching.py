"""What a cached value depends on (``CacheKey``) and what a model needs of a cache (``ModelCache``).

Models take any ``ModelCache``; the workspace's ``Cache`` is the one the stages pass them, so the
models depend on this interface and never on the workspace.

>>> key = CacheKey.make("llm", "gpt-4o-mini", "2024-07-18", {"temperature": 0}, "prompt text")
>>> len(key.digest), digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1})
(64, True)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


def dumps(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, so equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    """sha256 hex of the canonical JSON of ``value``."""
    return hashlib.sha256(dumps(value).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What a cached value depends on: namespace, model, version, parameters and input."""

    namespace: str
    model: str
    version: str
    params_hash: str
    input_hash: str

    @classmethod
    def make(cls, namespace: str, model: str, version: str, params: Mapping[str, Any],
             content: bytes | str) -> CacheKey:
        """Build a key from parameters (hashed as canonical JSON) and the input (hashed)."""
        raw = content.encode() if isinstance(content, str) else content
        return cls(namespace, model, version, digest(dict(params)), hashlib.sha256(raw).hexdigest())

    @property
    def digest(self) -> str:
        """The sha256 that addresses the value."""
        return digest([self.namespace, self.model, self.version, self.params_hash, self.input_hash])


class ModelCache(Protocol):
    """Get and put values by ``CacheKey`` (``curate.workspace.Cache`` is one)."""

    def get(self, key: CacheKey) -> bytes | None: ...

    def put(self, key: CacheKey, value: bytes) -> None: ...

    def get_json(self, key: CacheKey) -> Any | None: ...

    def put_json(self, key: CacheKey, value: Any) -> None: ...
