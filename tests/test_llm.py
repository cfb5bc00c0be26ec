"""The LLM client against a stand-in OpenAI-compatible server on 127.0.0.1 (real wire format)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from llm_standin import StandIn, standin
from pydantic import BaseModel

from curate.models.llm import LLMClient, LLMConfigError, LLMSettings, extract_json
from curate.workspace import Workspace


class Answer(BaseModel):
    answer: str


def _echo(body: dict[str, Any]) -> dict[str, str]:
    return {"answer": body["messages"][-1]["content"] if "response_format" in body else
            body["messages"][-2]["content"]}


@pytest.fixture
def server() -> Iterator[StandIn]:
    with standin(_echo) as running:
        yield running


def _client(server: StandIn, workspace: Workspace | None = None, sleeps: list[float] | None = None,
            **settings: Any) -> LLMClient:
    recorded = sleeps if sleeps is not None else []
    return LLMClient(LLMSettings(base_url=server.base_url, **settings), workspace.cache if workspace else None,
                     sleep=recorded.append)


def _ask(client: LLMClient, text: str = "hello") -> Any:
    return client.ask([{"role": "user", "content": text}], Answer)


def test_answers_are_validated_and_cached(server: StandIn, workspace: Workspace) -> None:
    client = _client(server, workspace)
    first = _ask(client)
    assert first.ok and first.value == Answer(answer="hello") and not first.cached
    body = server.requests[0]
    assert body["response_format"]["type"] == "json_schema" and body["temperature"] == 0.0
    again = _ask(_client(server, workspace))  # a new client, same workspace cache
    assert again.ok and again.cached and len(server.requests) == 1


def test_429_honours_retry_after_and_5xx_backs_off(server: StandIn) -> None:
    sleeps: list[float] = []
    client = _client(server, sleeps=sleeps, backoff_s=0.5)
    server.faults.extend([("429", 7), ("500",), ("500",)])
    assert _ask(client).ok
    assert sleeps[0] == 7.0  # Retry-After
    assert 1.0 <= sleeps[1] <= 1.25 and 2.0 <= sleeps[2] <= 2.5  # 0.5 * 2^attempt with jitter
    assert client.stats.counts["rate_limited"] == 1 and client.stats.counts["retries"] == 3


def test_a_timeout_is_retried(server: StandIn) -> None:
    client = _client(server, timeout_s=0.3)
    server.faults.append(("timeout", 1.5))
    result = _ask(client)
    assert result.ok and client.stats.counts["retries"] == 1


def test_transport_failures_past_the_limit_become_a_recorded_failure(server: StandIn) -> None:
    client = _client(server, max_retries=2)
    server.faults.extend([("500",)] * 3)
    result = _ask(client)
    assert not result.ok and "InternalServerError" in (result.error or "")
    assert client.stats.counts["failures"] == 1


def test_malformed_and_refused_answers_are_asked_again_then_recorded(server: StandIn) -> None:
    client = _client(server)
    server.faults.extend([("malformed",), ("refusal",)])
    assert _ask(client).ok
    assert client.stats.counts["malformed"] == 1 and client.stats.counts["refusals"] == 1
    server.faults.extend([("malformed",)] * 3)
    failed = _ask(client, "again")
    assert not failed.ok and failed.error.startswith("malformed") and failed.attempts == 3


def test_servers_without_structured_outputs_get_plain_prompts(server: StandIn) -> None:
    client = _client(server)
    server.faults.append(("no-structured",))
    assert _ask(client).value == Answer(answer="hello")
    assert "response_format" not in server.requests[-1]
    assert "JSON schema" in server.requests[-1]["messages"][-1]["content"]
    assert client.stats.counts["structured_fallbacks"] == 1


def test_a_refused_key_stops_the_run(server: StandIn) -> None:
    server.faults.append(("401",))
    with pytest.raises(LLMConfigError, match="OPENAI_API_KEY"):
        _ask(_client(server))


def test_the_openai_api_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMConfigError, match="set OPENAI_API_KEY"):
        LLMClient(LLMSettings())


def test_many_requests_run_concurrently_in_order(server: StandIn) -> None:
    client = _client(server, concurrency=4)
    results = client.ask_many([([{"role": "user", "content": f"q{i}"}], Answer) for i in range(12)])
    assert [r.value.answer for r in results] == [f"q{i}" for i in range(12)]


def test_the_batch_api_path(server: StandIn, workspace: Workspace) -> None:
    client = _client(server, workspace, use_batch_api=True, batch_poll_s=0.01)
    requests = [([{"role": "user", "content": f"b{i}"}], Answer) for i in range(5)]
    results = client.ask_many(requests)
    assert [r.value.answer for r in results] == [f"b{i}" for i in range(5)]
    assert client.stats.counts["batch_jobs"] == 1 and client.stats.counts["prompt_tokens"] > 0
    assert all(r.cached for r in client.ask_many(requests))  # answers were cached


def test_tokens_and_cost_are_counted(server: StandIn) -> None:
    client = _client(server, model="gpt-4o-mini")
    _ask(client, "one two three")
    counts = client.stats.counts
    assert counts["completion_tokens"] == 7 and counts["prompt_tokens"] == 3
    assert client.cost_usd() == pytest.approx((3 * 0.15 + 7 * 0.60) / 1e6)
    assert _client(server, model="my-local-llama").cost_usd() is None


def test_extract_json_is_tolerant_but_not_credulous() -> None:
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json("Here you go:\n[1, 2]\nThanks") == [1, 2]
    with pytest.raises(ValueError, match="no JSON"):
        extract_json("I think the answer is yes")


@pytest.mark.parametrize("fault", ["html", "empty-choices", "no-choices", "invalid-json"])
def test_a_broken_http_body_is_retried_like_a_5xx(server: StandIn, fault: str) -> None:
    sleeps: list[float] = []
    client = _client(server, sleeps=sleeps, backoff_s=0.5)
    server.faults.append((fault,))
    result = _ask(client)
    assert result.ok and result.value == Answer(answer="hello")
    assert client.stats.counts["retries"] == 1 and len(sleeps) == 1


@pytest.mark.parametrize("fault", ["html", "empty-choices", "no-choices", "invalid-json"])
def test_a_broken_http_body_past_the_limit_is_a_retryable_failure(server: StandIn, workspace: Workspace,
                                                                   fault: str) -> None:
    client = _client(server, workspace, max_retries=1)
    server.faults.extend([(fault,)] * 2)
    result = _ask(client)
    assert not result.ok and result.retryable and "MalformedResponseError" in (result.error or "")
    assert client.stats.counts["failures"] == 1
    again = _ask(_client(server, workspace))  # never cached: the next run asks again, and gets an answer
    assert again.ok and not again.cached


def test_broken_bodies_in_a_batch_are_asked_again_one_by_one(server: StandIn) -> None:
    client = _client(server, use_batch_api=True, batch_poll_s=0.01)
    server.faults.extend([("html",), ("no-choices",)])
    results = client.ask_many([([{"role": "user", "content": f"b{i}"}], Answer) for i in range(3)])
    assert [r.value.answer for r in results] == ["b0", "b1", "b2"]
    assert len(server.requests) == 3 + 2  # the batch, then the two broken answers once more
