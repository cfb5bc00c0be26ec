"""``LLMSettings``: the one declaration of how to reach an OpenAI-compatible server and how
patiently to talk to it. It imports nothing heavy, so a model under test or a proposer can inherit
its fields as options without loading the client (``curate.models.llm.LLMClient``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class LLMSettings:
    """Which server and model, and how patiently to talk to it: the one declaration of an LLM's
    settings. The LLM proposers and the gap's VLM inherit these fields as their options.

    >>> LLMSettings(temperature=0.7).settings() == LLMSettings(temperature=0.7)
    True
    """

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int | None = None
    structured: bool = True
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 5
    max_malformed: int = 2
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    use_batch_api: bool = False
    batch_poll_s: float = 30.0

    def settings(self) -> LLMSettings:
        """These settings alone (of a proposer or model under test that inherits them)."""
        return LLMSettings(**{f.name: getattr(self, f.name) for f in fields(LLMSettings)})

    def recorded(self) -> dict[str, Any]:
        """The settings as recorded in a run config (the key's variable name, never the key)."""
        return asdict(self.settings())

    def server(self) -> str:
        """The server identity used in cache keys."""
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
