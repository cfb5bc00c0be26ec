"""What the LLM-backed proposers share: their client options and where failures are recorded."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, fields

import polars as pl

from curate.models.llm import LLMClient, LLMSettings
from curate.propose.base import ProposeContext

FAILURES_TABLE = "llm-failures"


@dataclass
class LLMOptions:
    """Options of an OpenAI-compatible server (``base_url`` for vLLM, Ollama ...); the key is read
    from the variable ``api_key_env`` names and never recorded."""

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 5
    max_malformed: int = 2
    structured: bool = True
    use_batch_api: bool = False

    def settings(self) -> LLMSettings:
        """The client settings these options describe."""
        return LLMSettings(**{f.name: getattr(self, f.name) for f in fields(LLMOptions)})


def record_failures(context: ProposeContext, key: str, failures: list[dict[str, str]]) -> None:
    """Keep failed LLM answers (step, reason) as one part of the ``llm-failures`` side table."""
    if failures:
        part = f"{context.run.run_id}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        context.workspace.tables.write(FAILURES_TABLE, pl.DataFrame(failures), part=part)


def spent(client: LLMClient, before: Counter[str]) -> dict[str, int]:
    """The client's counters since ``before``, prefixed ``llm_`` for the run's counts."""
    now = Counter(client.stats.counts)
    now.subtract(before)
    return {f"llm_{k}": v for k, v in now.items() if v}


def count_cost(context: ProposeContext, client: LLMClient) -> None:
    """Add the run's cost in micro-dollars, when the model has a known price."""
    cost = client.cost_usd()
    if cost is not None:
        context.count(llm_cost_microusd=round(cost * 1e6))
