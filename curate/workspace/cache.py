"""A content-addressed cache for expensive results (model outputs, LLM responses).

A key is made of the model, its version, the parameters and a hash of the input, so a result is
reused only when all of them match. Small values live in SQLite, large ones as files under
``cache/`` written atomically; either way a reader sees a whole value or none.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.caching import CacheKey
from curate.workspace._sql import atomic_write_bytes, now

INLINE_LIMIT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Entries and bytes held per namespace."""

    entries: dict[str, int]
    size_bytes: dict[str, int]


class Cache:
    """Get and put values by ``CacheKey``; shared by every stage of a workspace.

    >>> from curate.workspace import Workspace
    >>> import tempfile
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> key = CacheKey.make("clip", "ViT-B-32", "v1", {}, b"image bytes")
    >>> ws.cache.put_json(key, {"score": 0.5})
    >>> ws.cache.get_json(key)
    {'score': 0.5}
    """

    def __init__(self, root: Path, connect: Callable[[], sqlite3.Connection],
                 transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]) -> None:
        self._root = root
        self._connect = connect
        self._transaction = transaction

    def get(self, key: CacheKey) -> bytes | None:
        """The stored bytes, or None when nothing (or only a lost file) is stored."""
        row = self._connect().execute("SELECT value, path FROM cache WHERE key = ?", (key.digest,)).fetchone()
        if row is None:
            return None
        if row["path"] is None:
            return bytes(row["value"])
        try:
            return (self._root / row["path"]).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: CacheKey, value: bytes) -> None:
        """Store ``value``; putting the same key again replaces it."""
        digest_ = key.digest
        relative = None
        if len(value) > INLINE_LIMIT_BYTES:
            relative = f"{digest_[:2]}/{digest_}"
            atomic_write_bytes(self._root / relative, value)
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO cache (key, namespace, model, version, params_hash, input_hash, "
                "value, path, size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (digest_, key.namespace, key.model, key.version, key.params_hash, key.input_hash,
                 None if relative else value, relative, len(value), now()),
            )

    def get_json(self, key: CacheKey) -> Any | None:
        """``get`` decoded from JSON."""
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def put_json(self, key: CacheKey, value: Any) -> None:
        """``put`` a JSON-serialisable value."""
        self.put(key, json.dumps(value).encode())

    def __contains__(self, key: CacheKey) -> bool:
        return self.get(key) is not None

    def stats(self) -> CacheStats:
        """How many entries and bytes each namespace holds."""
        rows = self._connect().execute(
            "SELECT namespace, COUNT(*) AS n, SUM(size_bytes) AS size FROM cache GROUP BY namespace"
        ).fetchall()
        return CacheStats({r["namespace"]: r["n"] for r in rows}, {r["namespace"]: r["size"] for r in rows})

    def clear(self, namespace: str | None = None) -> int:
        """Delete entries (of one namespace, or all); return how many."""
        where, args = ("WHERE namespace = ?", (namespace,)) if namespace else ("", ())
        with self._transaction() as conn:
            paths = [r["path"] for r in conn.execute(f"SELECT path FROM cache {where}", args) if r["path"]]
            count = conn.execute(f"DELETE FROM cache {where}", args).rowcount
        for relative in paths:
            (self._root / relative).unlink(missing_ok=True)
        return count
