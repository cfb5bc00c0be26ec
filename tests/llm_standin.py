"""An OpenAI-compatible stand-in server on 127.0.0.1 that speaks the real wire format.

It answers ``/v1/chat/completions`` with whatever ``brain(request_body)`` returns (JSON-encoded as
the message content), implements the Batch API (``/v1/files``, ``/v1/batches``), and plays faults
queued in ``faults``: ``("429", seconds)`` with Retry-After, ``("500",)``, ``("timeout", seconds)``,
``("malformed",)`` (content that is not JSON), ``("refusal",)``, ``("no-structured",)`` (a 400 about
response_format), ``("401",)``, and broken HTTP bodies: ``("html",)`` (a proxy's error page with status
200), ``("empty-choices",)``, ``("no-choices",)``, ``("invalid-json",)`` (a truncated JSON body), and
``("echo-auth", status)`` (an error that echoes the Authorization header). ``faults_when`` holds
(predicate on the request body, fault) pairs played on every matching request. Every request body is
kept in ``requests``.
"""

from __future__ import annotations

import collections
import email.parser
import itertools
import json
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from serving import serving

Brain = Callable[[dict[str, Any]], Any]


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, brain: Brain) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.brain = brain
        self.faults: collections.deque[tuple[Any, ...]] = collections.deque()
        self.faults_when: list[tuple[Callable[[dict[str, Any]], bool], tuple[Any, ...]]] = []
        self.requests: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def completion(self, body: dict[str, Any], headers: Any = None) -> tuple[int, dict[str, str], Any]:
        """(status, headers, payload) of one chat completion; a ``bytes`` payload is sent as it is."""
        with self.lock:
            self.requests.append(body)
            fault = next((f for matches, f in self.faults_when if matches(body)), None)
            if fault is None and self.faults:
                fault = self.faults.popleft()
        kind = fault[0] if fault else None
        if kind == "html":
            return 200, {"Content-Type": "text/html"}, b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        if kind == "invalid-json":
            return 200, {"Content-Type": "application/json"}, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess'
        if kind == "echo-auth":
            echoed = (headers or {}).get("Authorization", "")
            return fault[1], {}, {"error": {"message": f"rejected request with header {echoed}", "type": "echo"}}
        if kind == "429":
            return 429, {"Retry-After": str(fault[1])}, {"error": {"message": "rate limited", "type": "rate_limit"}}
        if kind == "500":
            return 500, {}, {"error": {"message": "server exploded", "type": "server_error"}}
        if kind == "401":
            return 401, {}, {"error": {"message": "bad key", "type": "invalid_request_error"}}
        if kind == "no-structured" and "response_format" in body:
            return 400, {}, {"error": {"message": "response_format is not supported by this server",
                                       "type": "invalid_request_error", "param": "response_format"}}
        if kind == "timeout":
            time.sleep(fault[1])
        content: str | None = json.dumps(self.brain(body))
        refusal = None
        if kind == "malformed":
            content = "Sure! Here is what you asked for: {items: [oops"
        if kind == "refusal":
            content, refusal = None, "I can't help with that."
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        if kind in ("empty-choices", "no-choices"):
            broken: dict[str, Any] = {"id": f"chatcmpl-{next(self.ids)}", "object": "chat.completion",
                                      "created": int(time.time()), "model": body.get("model", "stand-in")}
            return 200, {}, broken | ({"choices": []} if kind == "empty-choices" else {})
        return 200, {}, {
            "id": f"chatcmpl-{next(self.ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "stand-in"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7},
        }


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        raw = isinstance(payload, bytes)
        data = payload if raw else json.dumps(payload).encode()
        headers = {"Content-Type": "application/octet-stream" if raw else "application/json", **(headers or {})}
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/v1/chat/completions":
            status, headers, payload = self.server.completion(json.loads(self._body()), self.headers)
            self._send(status, payload, headers)
        elif self.path == "/v1/files":
            message = email.parser.BytesParser().parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + self._body())
            upload = next(p for p in message.walk() if p.get_param("name", header="content-disposition") == "file")
            file_id = f"file-{next(self.server.ids)}"
            self.server.files[file_id] = upload.get_payload(decode=True)
            self._send(200, {"id": file_id, "object": "file", "bytes": len(self.server.files[file_id]),
                             "created_at": 0, "filename": "requests.jsonl", "purpose": "batch", "status": "processed"})
        elif self.path == "/v1/batches":
            body = json.loads(self._body())
            lines = []
            for line in self.server.files[body["input_file_id"]].decode().splitlines():
                request = json.loads(line)
                status, _, payload = self.server.completion(request["body"], self.headers)
                if isinstance(payload, bytes):
                    payload = payload.decode(errors="replace")
                lines.append(json.dumps({"id": f"req-{next(self.server.ids)}", "custom_id": request["custom_id"],
                                         "response": {"status_code": status, "body": payload}}))
            output_id = f"file-{next(self.server.ids)}"
            self.server.files[output_id] = "\n".join(lines).encode()
            batch_id = f"batch_{next(self.server.ids)}"
            self.server.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"], "created_at": 0, "status": "completed",
                "output_file_id": output_id}
            self._send(200, {**self.server.batches[batch_id], "status": "in_progress", "output_file_id": None})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_GET(self) -> None:  # noqa: N802
        parts = self.path.strip("/").split("/")
        if parts[:2] == ["v1", "batches"] and len(parts) == 3:
            self._send(200, self.server.batches[parts[2]])
        elif parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
            self._send(200, self.server.files[parts[2]])
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})


def standin(brain: Brain) -> AbstractContextManager[StandIn]:
    """A running stand-in answering with ``brain``."""
    return serving(StandIn(brain))
