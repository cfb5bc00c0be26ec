"""The one scrubber every stored or printed error passes through.

It removes bearer tokens, OpenAI-style ``sk-`` keys, Hugging Face ``hf_`` tokens, and the values of
keys the running process was configured with (``remember_secret``), whatever their shape.

>>> scrub("401 for Authorization: Bearer sk-abc123def456ghi789")
'401 for Authorization: Bearer [secret]'
>>> remember_secret("my-local-key-42")
>>> scrub("echoed my-local-key-42 back")
'echoed [secret] back'
"""

from __future__ import annotations

import re
import threading

REDACTED = "[secret]"
MIN_SECRET_LENGTH = 4  # shorter values would scrub ordinary words
_PATTERNS = (
    re.compile(r"(?i)(\bbearer\s+)[^\s'\",;}]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{6,}"),
)
_known: set[str] = set()
_lock = threading.Lock()


def remember_secret(value: str | None) -> None:
    """Scrub ``value`` (a configured key or token) from every error from now on in this process."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _known.add(value)


def scrub(text: str) -> str:
    """``text`` without secrets: known key values, bearer tokens, ``sk-`` and ``hf_`` keys."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)  # a key that contains another goes first
    for value in known:
        text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: (match.group(1) if match.groups() else "") + REDACTED, text)
    return text
