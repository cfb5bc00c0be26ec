"""An in-process stand-in for the Hub endpoints a dataset upload touches (Xet off), on 127.0.0.1.

Repos live in memory: ``repos[repo_id] = {"private": bool, "files": {path: bytes}, "lfs": set(paths),
"commits": [...], "tags": [...]}``. Every request is logged in ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from serving import serving

LFS_SUFFIXES = (".parquet", ".png", ".jpg")


class HubStandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos: dict[str, dict[str, Any]] = {}
        self.uploads: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: HubStandIn

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, payload: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
              ) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def _repo(self, repo_id: str) -> dict[str, Any] | None:
        return self.server.repos.get(repo_id)

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        self.server.requests.append(("POST", self.path))
        base = self.server.endpoint
        if self.path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}"
            self.server.repos.setdefault(repo_id, {"private": request.get("visibility") == "private", "files": {},
                                                   "lfs": set(), "commits": [], "tags": []})
            return self._send(200, {"url": f"{base}/datasets/{repo_id}", "name": repo_id})
        if self.path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})
        if match := re.match(r"^/api/datasets/([^/]+/[^/]+)/preupload/", self.path):
            files = json.loads(body)["files"]
            return self._send(200, {"files": [{"path": f["path"], "shouldIgnore": False,
                                               "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular"}
                                              for f in files]})
        if re.match(r"^/datasets/[^/]+/[^/]+\.git/info/lfs/objects/batch$", self.path):
            objects = json.loads(body)["objects"]
            return self._send(200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{base}/lfs-upload/{o['oid']}"}}}
                for o in objects]})
        if match := re.match(r"^/api/datasets/([^/]+/[^/]+)/commit/", self.path):
            repo = self._repo(match.group(1))
            if repo is None:
                return self._send(404, {"error": "repo not found"}, headers={"X-Error-Code": "RepoNotFound"})
            for line in body.decode().splitlines():
                entry = json.loads(line)
                value = entry["value"]
                if entry["key"] == "file":
                    repo["files"][value["path"]] = base64.b64decode(value["content"])
                    repo["lfs"].discard(value["path"])
                elif entry["key"] == "lfsFile":
                    repo["files"][value["path"]] = self.server.uploads[value["oid"]]
                    repo["lfs"].add(value["path"])
                elif entry["key"] == "deletedFile":
                    repo["files"].pop(value["path"], None)
            oid = hashlib.sha1(f"{match.group(1)}-{len(repo['commits'])}".encode()).hexdigest()
            repo["commits"].append(oid)
            return self._send(200, {"commitUrl": f"{base}/datasets/{match.group(1)}/commit/{oid}", "commitOid": oid,
                                    "success": True})
        if match := re.match(r"^/api/datasets/([^/]+/[^/]+)/tag/", self.path):
            self._repo(match.group(1))["tags"].append(json.loads(body)["tag"])  # type: ignore[index]
            return self._send(200, {})
        return self._send(404, {"error": f"no route {self.path}"})

    def do_PUT(self) -> None:  # noqa: N802
        body = self._body()
        self.server.requests.append(("PUT", self.path))
        self.server.uploads[self.path.rsplit("/", 1)[1]] = body
        return self._send(200, {})

    def do_GET(self) -> None:  # noqa: N802
        self.server.requests.append((self.command, self.path))
        if match := re.match(r"^/api/datasets/([^/]+/[^/]+)/tree/", self.path):
            repo = self._repo(match.group(1))
            if repo is None:
                return self._send(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
            entries = []
            for path, data in sorted(repo["files"].items()):
                entry = {"type": "file", "path": path, "size": len(data),
                         "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
                if path in repo["lfs"]:
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
                entries.append(entry)
            return self._send(200, entries)
        if match := re.match(r"^/datasets/([^/]+/[^/]+)/resolve/[^/]+/(.+)$", self.path):
            repo = self._repo(match.group(1))
            if repo is None or match.group(2) not in repo["files"]:
                return self._send(404, {"error": "not found"}, headers={"X-Error-Code": "EntryNotFound"})
            return self._send(200, raw=repo["files"][match.group(2)])
        return self._send(404, {"error": f"no route {self.path}"})

    do_HEAD = do_GET


def hub_standin() -> AbstractContextManager[HubStandIn]:
    """A running stand-in Hub."""
    return serving(HubStandIn())
