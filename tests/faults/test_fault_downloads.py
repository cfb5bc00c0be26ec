"""Hostile URLs in a manifest: a server that trickles bytes, one that sends more than the cap (declared
or not). Each row is quarantined with its reason within the deadline; the good row is ingested."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from conftest import distinct_image, encode
from faultkit import curate

from curate.workspace import Workspace

PNG = encode(distinct_image(7), "PNG")


class _Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        try:
            if self.path == "/ok.png":
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)
            elif self.path == "/trickle.png":  # a byte every 50 ms for up to 30 s: each read is quick
                self.send_header("Content-Length", "600")
                self.end_headers()
                for _ in range(600):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif self.path == "/declared-huge.png":
                self.send_header("Content-Length", str(2 * 2**30))
                self.end_headers()
                self.wfile.write(b"\0" * 65536)
            elif self.path == "/endless.png":  # no length: a body that goes on until the client hangs up
                self.end_headers()
                for _ in range(100_000):
                    self.wfile.write(b"\0" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)
def test_trickling_and_oversized_downloads_are_quarantined_with_their_reasons(
        workspace: Workspace, tmp_path: Path, hostile_server: str) -> None:
    manifest = tmp_path / "urls.csv"
    names = ["ok", "trickle", "declared-huge", "endless"]
    pl.DataFrame({"url": [f"{hostile_server}/{name}.png" for name in names], "label": names}).write_csv(manifest)
    code, output = curate("ingest", "manifest", manifest, "--path-column", "url", "-w", workspace.root, "-q",
                          "--download-deadline", "1.5", "--download-max-bytes", "1000000")
    assert code == 0, output
    assert "1 new items" in output and "3 quarantined (timed-out 1, too-large 2)" in output
    held = {q.label: q for q in Workspace.open(workspace.root).catalog.quarantined()}
    assert held["trickle"].reason == "timed-out" and "1.5 s" in held["trickle"].detail
    assert held["declared-huge"].reason == held["endless"].reason == "too-large"
    assert "1,000,000 bytes" in held["endless"].detail


def test_bad_download_limits_are_refused_before_any_row(workspace: Workspace, tmp_path: Path) -> None:
    manifest = tmp_path / "urls.csv"
    pl.DataFrame({"url": ["http://127.0.0.1:9/x.png"], "label": ["x"]}).write_csv(manifest)
    code, output = curate("ingest", "manifest", manifest, "--path-column", "url", "-w", workspace.root,
                          "--download-max-bytes", "0")
    assert code == 2 and "download limits must be positive" in output
