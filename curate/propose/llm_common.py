"""What the LLM-backed proposers share: where failures are recorded and what they cost (their
client options are ``curate.models.llm.LLMSettings``, which they inherit).

The ``llm-failures`` side table holds, per run and class, the requests that are failing now: each
time a class is worked on its part is replaced, so a repaired request leaves the table. A
``retryable`` failure (the server never answered properly) is what a re-run asks again.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import polars as pl

from curate.models.llm import LLMClient, LLMResult
from curate.propose.base import ProposeContext
from curate.secrets import scrub

FAILURES_TABLE = "llm-failures"
FAILURE_COLUMNS = {"run_id": pl.String, "class_label": pl.String, "step": pl.String, "cue": pl.String,
                   "error": pl.String, "retryable": pl.Boolean}


def failure(context: ProposeContext, label: str, step: str, result: LLMResult, cue: str = "") -> dict[str, object]:
    """One row of the ``llm-failures`` table: which request (step, cue) failed, why, and whether a re-run retries it."""
    return {"run_id": context.run.run_id, "class_label": label, "step": step, "cue": cue,
            "error": scrub(result.error or ""), "retryable": result.retryable}


def _part(context: ProposeContext, label: str) -> str:
    return f"{context.run.run_id}-{hashlib.sha256(label.encode()).hexdigest()[:12]}"


def recorded_failures(context: ProposeContext, label: str) -> pl.DataFrame | None:
    """What this run recorded as failing for a class, or None when it has not finished the class yet."""
    return context.workspace.tables.part(FAILURES_TABLE, _part(context, label))


def retryable(recorded: pl.DataFrame | None) -> set[tuple[str, str]]:
    """The requests (step, cue) among recorded failures that a re-run asks again."""
    if recorded is None or "retryable" not in recorded.columns:
        return set()
    return set(recorded.filter(pl.col("retryable")).select("step", "cue").rows())


def failure_counts(before: set[tuple[str, str]], failures: list[dict[str, object]],
                   asked: set[tuple[str, str]] | None = None) -> dict[str, int]:
    """Run counts for new ``failures``: ``llm_failures_recorded``, and ``llm_failures_repaired``
    (requests retryable ``before`` and ``asked`` again, all of them when None, that have an answer now)."""
    failed = {(str(row["step"]), str(row["cue"])) for row in failures}
    asked_again = before if asked is None else before & asked
    return {"llm_failures_recorded": len(failures), "llm_failures_repaired": len(asked_again - failed)}


def record_failures(context: ProposeContext, label: str, failures: list[dict[str, object]]) -> None:
    """Replace what this run recorded as failing for a class with ``failures`` (an empty part marks the
    class as done) and add the retryable ones to ``context.failed_requests``."""
    frame = pl.DataFrame(failures, schema=FAILURE_COLUMNS)
    context.workspace.tables.write(FAILURES_TABLE, frame, part=_part(context, label))
    context.failed_requests += int(frame["retryable"].sum())


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
