"""A disciplined client for any OpenAI-compatible chat server (OpenAI, vLLM, Ollama, llama.cpp).

- Every answer is cached by content hash (model, server, parameters, schema, messages): asking the
  same thing again makes no call.
- Bounded concurrency; 429, 5xx, timeouts, dropped connections and HTTP bodies that are no chat
  completion (an HTML error page, invalid JSON, no ``choices``) are retried with exponential backoff
  that honours ``Retry-After``, then returned as ``retryable`` failures (never cached, so the next run
  asks again); malformed or refused answers are asked again, then returned as failures. Nothing is
  raised for one request, so a run goes on.
- Structured outputs (``json_schema``) where the server accepts them; where it refuses them the
  client switches to plain prompting and tolerant JSON parsing.
- Tokens and cost are counted. The API key is read from the environment variable the settings
  name and is never stored, logged or returned: every error passes through ``curate.secrets.scrub``.
- ``ask_batch`` sends many requests through the OpenAI Batch API.

>>> settings = LLMSettings(model="gpt-4o-mini")
>>> settings.recorded()["api_key_env"]
'OPENAI_API_KEY'
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from pydantic import BaseModel, ValidationError

from curate.caching import CacheKey, ModelCache
from curate.llm_settings import LLMSettings
from curate.secrets import remember_secret, scrub

Messages = list[dict[str, Any]]

# USD per million tokens (input, output). Unknown models are counted in tokens only.
PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-nano": (0.10, 0.40),
}
_RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)


class LLMConfigError(RuntimeError):
    """The server refuses us as a whole (bad key, unknown model): no point going on."""


class MalformedResponseError(openai.OpenAIError):
    """An HTTP 200 whose body is not a chat completion (an HTML page, invalid JSON, no ``choices``)."""


@dataclass(slots=True)
class LLMResult:
    """One answer: ``value`` (the validated schema instance) when ``ok``, else ``error``.

    A ``retryable`` failure is one of transport (the server never answered properly); it is not
    cached, so asking again later makes a call. Other failures are answers, replayed from the cache.
    """

    ok: bool
    value: BaseModel | None = None
    text: str | None = None
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    retryable: bool = False


@dataclass
class LLMStats:
    """Thread-safe counters for a client's life: calls, cache hits, retries, failures, tokens."""

    counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **values: int) -> None:
        with self._lock:
            self.counts.update({k: v for k, v in values.items() if v})


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: plain, in a code fence, or the first ``{...}``/``[...]``.

    >>> extract_json('Sure! ```json\\n{"answer": "yes"}\\n```')
    {'answer': 'yes'}
    """
    stripped = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", stripped, re.DOTALL)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(stripped)
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = stripped.find(opener), stripped.rfind(closer)
        if 0 <= start < end:
            candidates.append(stripped[start:end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise ValueError(f"no JSON in the answer: {text[:200]!r}")


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class LLMClient:
    """Ask an OpenAI-compatible server for answers that fit a pydantic schema."""

    def __init__(self, settings: LLMSettings, cache: ModelCache | None = None, http_client: Any = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.cache = cache
        self.stats = LLMStats()
        self._sleep = sleep
        self._structured = settings.structured
        api_key = os.environ.get(settings.api_key_env)
        remember_secret(api_key)
        if not api_key:
            if settings.base_url is None and not os.environ.get("OPENAI_BASE_URL"):
                raise LLMConfigError(f"set {settings.api_key_env} to use the OpenAI API (or give base_url for a "
                                     "local OpenAI-compatible server)")
            api_key = "not-needed"  # local servers (vLLM, Ollama) accept any key
        self._client = openai.OpenAI(api_key=api_key, base_url=settings.base_url, timeout=settings.timeout_s,
                                     max_retries=0, http_client=http_client)

    # cache ----------------------------------------------------------------------------------
    def _key(self, messages: Messages, schema: type[BaseModel], attempt: int = 0) -> CacheKey:
        params = {"temperature": self.settings.temperature, "max_tokens": self.settings.max_tokens,
                  "schema": schema.model_json_schema(), "attempt": attempt}
        return CacheKey.make("llm", self.settings.model, self.settings.server(), params,
                             json.dumps(messages, sort_keys=True))

    # asking ---------------------------------------------------------------------------------
    def ask(self, messages: Messages, schema: type[BaseModel]) -> LLMResult:
        """One validated answer, or a failure with its reason.

        Every raw answer is cached under its attempt number, valid or not, so asking again replays
        the same answers (and the same failures) without a single call.
        """
        last_error, cached = "", True
        for attempt in range(1 + self.settings.max_malformed):
            key = self._key(messages, schema, attempt)
            stored = self.cache.get_json(key) if self.cache is not None else None
            if stored is not None:
                self.stats.add(cache_hits=1)
                text, refusal = stored["text"], stored["refusal"]
            else:
                cached = False
                try:
                    text, refusal = self._call(messages, schema)
                except LLMConfigError:
                    raise
                except openai.OpenAIError as error:  # transport failures are not cached: retried next run
                    self.stats.add(failures=1)
                    return LLMResult(False, error=scrub(f"{type(error).__name__}: {error}"), attempts=attempt + 1,
                                     retryable=True)
                if self.cache is not None:
                    self.cache.put_json(key, {"text": text, "refusal": refusal})
            value, last_error = self._validate(text, refusal, schema)
            if value is not None:
                return LLMResult(True, value, text, cached=cached, attempts=attempt + 1)
        self.stats.add(failures=1)
        attempts = 1 + self.settings.max_malformed
        return LLMResult(False, error=scrub(f"{last_error} (after {attempts} attempts)"), cached=cached,
                         attempts=attempts)

    def _validate(self, text: str | None, refusal: str | None,
                  schema: type[BaseModel]) -> tuple[BaseModel | None, str]:
        """(the validated answer, "") or (None, why not), counting refusals and malformed answers."""
        if refusal is not None or text is None:
            self.stats.add(refusals=1)
            return None, f"refused: {refusal or 'empty answer'}"
        try:
            return schema.model_validate(extract_json(text)), ""
        except (ValueError, ValidationError) as error:
            self.stats.add(malformed=1)
            return None, f"malformed: {str(error)[:300]}"

    def ask_many(self, requests: Sequence[tuple[Messages, type[BaseModel]]]) -> list[LLMResult]:
        """Answers in request order, at most ``concurrency`` in flight (or through the Batch API)."""
        if self.settings.use_batch_api and requests:
            return self.ask_batch(requests)
        with ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency)) as pool:
            return list(pool.map(lambda request: self.ask(*request), requests))

    def _response_format(self, schema: type[BaseModel]) -> dict[str, Any]:
        return {"type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": False}}

    def _body(self, messages: Messages, schema: type[BaseModel]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.settings.model, "messages": messages,
                                "temperature": self.settings.temperature}
        if self.settings.max_tokens is not None:
            body["max_tokens"] = self.settings.max_tokens
        if self._structured:
            body["response_format"] = self._response_format(schema)
        else:
            hint = f"Answer with JSON only, matching this JSON schema: {json.dumps(schema.model_json_schema())}"
            body["messages"] = [*messages, {"role": "system", "content": hint}]
        return body

    def _call(self, messages: Messages, schema: type[BaseModel]) -> tuple[str | None, str | None]:
        """(content, refusal) of one completion, retrying transport failures."""
        attempt = 0
        while True:
            try:
                self.stats.add(calls=1)
                return self._completion(messages, schema)
            except openai.AuthenticationError as error:
                raise LLMConfigError(f"the server refused the key in ${self.settings.api_key_env} "
                                     f"({error.status_code})") from None
            except openai.NotFoundError as error:
                raise LLMConfigError(f"model {self.settings.model!r} or endpoint not found on "
                                     f"{self.settings.server()} ({error.status_code})") from None
            except openai.BadRequestError as error:
                if self._structured and "response_format" in f"{error} {error.body}".lower():
                    self._structured = False  # this server has no structured outputs: prompt for JSON
                    self.stats.add(structured_fallbacks=1)
                    continue
                raise LLMConfigError(scrub(f"the server rejected the request as malformed: {error}")) from None
            except (*_RETRYABLE, MalformedResponseError) as error:
                if attempt >= self.settings.max_retries:
                    raise
                delay = _retry_after(error)
                if delay is None:
                    delay = self.settings.backoff_s * 2 ** attempt * (1 + random.random() / 4)
                attempt += 1
                self.stats.add(retries=1, rate_limited=int(isinstance(error, openai.RateLimitError)))
                self._sleep(min(delay, self.settings.max_backoff_s))

    def _completion(self, messages: Messages, schema: type[BaseModel]) -> tuple[str | None, str | None]:
        """(content, refusal) of one request; a body that is no chat completion raises MalformedResponseError."""
        try:
            response = self._client.chat.completions.create(**self._body(messages, schema))
        except json.JSONDecodeError as error:
            raise MalformedResponseError(f"the server's answer is invalid JSON ({error})") from None
        if isinstance(response, str):  # the client hands back a non-JSON body as text
            raise MalformedResponseError(f"the server's answer is not JSON: {response[:200]!r}")
        self._count_usage(getattr(response, "usage", None))
        return _message(getattr(response, "choices", None))

    def _count_usage(self, usage: Any) -> None:
        with contextlib.suppress(TypeError, ValueError):  # an odd usage block costs the count, not the answer
            self.stats.add(prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                           completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))

    def cost_usd(self) -> float | None:
        """What the counted tokens cost at list prices, or None for a model without a known price."""
        price = PRICES_PER_MILLION.get(self.settings.model)
        if price is None:
            return None
        counts = self.stats.counts
        return (counts["prompt_tokens"] * price[0] + counts["completion_tokens"] * price[1]) / 1e6

    # Batch API ------------------------------------------------------------------------------
    def ask_batch(self, requests: Sequence[tuple[Messages, type[BaseModel]]]) -> list[LLMResult]:
        """Send the uncached requests as one OpenAI Batch job, wait for it, and parse the answers.

        Answers that come back malformed or missing are asked again one by one.
        """
        results: list[LLMResult | None] = [None] * len(requests)
        answers: dict[str, tuple[str | None, str | None]] = {}
        lines, waiting = [], {}
        for index, (messages, schema) in enumerate(requests):
            key = self._key(messages, schema)
            if self.cache is not None and self.cache.get(key) is not None:
                continue  # answered before: ``ask`` replays it below
            custom_id = f"r{index}-{key.digest[:16]}"
            waiting[custom_id] = index
            lines.append(json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                                     "body": self._body(messages, schema)}))
        if lines:
            try:
                answers = self._run_batch("\n".join(lines).encode())
            except openai.OpenAIError:  # LLMConfigError (a bad key) surfaces below, from ``ask``
                self.stats.add(batch_failures=1)
            for custom_id, (text, refusal) in answers.items():
                asked = waiting.get(custom_id)
                if asked is None:
                    continue
                messages, schema = requests[asked]
                if self.cache is not None:
                    self.cache.put_json(self._key(messages, schema), {"text": text, "refusal": refusal})
                value, _ = self._validate(text, refusal, schema)
                if value is not None:
                    results[asked] = LLMResult(True, value, text, attempts=1)
        # cached, missing or malformed answers: ``ask`` replays the cache and re-asks what is needed
        return [result or self.ask(*requests[index]) for index, result in enumerate(results)]

    def _run_batch(self, jsonl: bytes) -> dict[str, tuple[str | None, str | None]]:
        upload = self._client.files.create(file=("requests.jsonl", jsonl), purpose="batch")
        batch = self._client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        self.stats.add(batch_jobs=1)
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            self._sleep(self.settings.batch_poll_s)
            batch = self._client.batches.retrieve(batch.id)
        if batch.status != "completed" or not batch.output_file_id:
            return {}
        answers: dict[str, tuple[str | None, str | None]] = {}
        for line in self._client.files.content(batch.output_file_id).text.splitlines():
            try:
                record = json.loads(line)
                completion = openai.types.chat.ChatCompletion.construct(**record["response"]["body"])
                self._count_usage(getattr(completion, "usage", None))
                answers[record["custom_id"]] = _message(getattr(completion, "choices", None))
            except (ValueError, TypeError, KeyError, AttributeError, MalformedResponseError):
                continue  # a broken line: its request is asked again on its own
        return answers


def _message(choices: Any) -> tuple[str | None, str | None]:
    """(content, refusal) of the first choice of a chat completion, or MalformedResponseError."""
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    content, refusal = getattr(message, "content", None), getattr(message, "refusal", None)
    if message is None or not isinstance(content, str | None) or not isinstance(refusal, str | None):
        raise MalformedResponseError("the server's answer has no message in 'choices'")
    return content, refusal
