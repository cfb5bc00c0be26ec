"""A real Label Studio server in a virtual environment of its own, on 127.0.0.1.

Label Studio pins many packages tightly, so it never shares curate's environment: ``install``
makes ``<venv>`` with it, ``start`` runs it with SQLite, a known user and token and no telemetry,
waits until it answers, and ``stop`` ends it by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_VENV = Path(".label-studio") / "venv"
STATE_FILE = "server.json"


class ServerError(RuntimeError):
    """Label Studio could not be installed, started or reached."""


@dataclass(frozen=True, slots=True)
class Connection:
    """Where a Label Studio answers and the API token to use there."""

    url: str
    token: str


@dataclass(frozen=True, slots=True)
class LabelStudioServer:
    """A running server: where it answers, who may log in, and how to stop it."""

    url: str
    token: str
    username: str
    password: str
    data_dir: str
    pid: int

    def save(self) -> Path:
        """Write the server's state next to its data, for ``stop`` and other processes."""
        path = Path(self.data_dir) / STATE_FILE
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, data_dir: str | Path) -> LabelStudioServer:
        """The server started with this data folder."""
        path = Path(data_dir) / STATE_FILE
        if not path.is_file():
            raise ServerError(f"no Label Studio server was started with {data_dir}")
        return cls(**json.loads(path.read_text()))


def executable(venv: Path = DEFAULT_VENV) -> Path:
    """The ``label-studio`` command of an installed venv."""
    return venv / "bin" / "label-studio"


def install(venv: Path = DEFAULT_VENV, version: str = LABEL_STUDIO_VERSION) -> Path:
    """Create ``venv`` with Label Studio (once; about a minute and 1 GB). Returns the command."""
    command = executable(venv)
    if command.exists():
        return command
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"label-studio=={version}"],
                            capture_output=True, text=True)
    if result.returncode != 0 or not command.exists():
        raise ServerError(f"installing label-studio=={version} into {venv} failed:\n{result.stderr[-2000:]}")
    return command


def free_port() -> int:
    """A TCP port nobody listens on now (Label Studio silently moves on if its port is busy)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def is_ready(url: str, token: str) -> bool:
    """True when the server answers an authenticated request."""
    try:
        response = httpx.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=5)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _environment(data_dir: Path, username: str, password: str, token: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "USERNAME", "PASSWORD")}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_USERNAME": username, "LABEL_STUDIO_PASSWORD": password, "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LATEST_VERSION_CHECK": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/",
        **extra,
    })
    return env


def start(data_dir: str | Path, venv: Path = DEFAULT_VENV, port: int | None = None,
          username: str = "curate@localhost", password: str = "curate-password",
          token: str = "curate0000000000000000000000000000000000", timeout_s: float = 240,
          extra_env: dict[str, str] | None = None) -> LabelStudioServer:
    """Start Label Studio on 127.0.0.1 and wait until it answers (first start runs migrations)."""
    command = executable(venv).absolute()
    if not command.exists():
        raise ServerError(f"Label Studio is not installed in {venv}: run `python tools/label_studio.py install`")
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = (data / "server.log").open("ab")
    process = subprocess.Popen(
        [str(command), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
        env=_environment(data, username, password, token, extra_env or {}), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True, cwd=data,
    )
    server = LabelStudioServer(url, token, username, password, str(data), process.pid)
    server.save()
    deadline = time.monotonic() + timeout_s
    while not is_ready(url, token):
        if process.poll() is not None:
            raise ServerError(f"Label Studio exited with {process.returncode}; see {data / 'server.log'}")
        if time.monotonic() > deadline:
            stop(server)
            raise ServerError(f"Label Studio did not answer on {url} within {timeout_s:.0f}s; "
                              f"see {data / 'server.log'}")
        time.sleep(1)
    return server


def add_user(server: LabelStudioServer, email: str, password: str, token: str,
             venv: Path = DEFAULT_VENV) -> None:
    """A second real annotator in the server's organisation, with a known token
    (``label-studio init``; the SDK's ``users.create`` leaves users outside the organisation)."""
    data = Path(server.data_dir)
    result = subprocess.run(
        [str(executable(venv).absolute()), "init", "--username", email, "--password", password,
         "--user-token", token, "--no-browser"],
        env=_environment(data, email, password, token, {}), capture_output=True, text=True, cwd=data, timeout=180,
    )
    if result.returncode != 0:
        raise ServerError(f"label-studio init for {email} failed: {result.stderr[-1000:]}")


def stop(server: LabelStudioServer, timeout_s: float = 30) -> None:
    """Stop the server (its whole process group) by PID; a server already gone is fine."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(server.pid, 0)
            waited = os.waitpid(server.pid, os.WNOHANG) if _is_child(server.pid) else (0, 0)
            if waited[0] == server.pid:
                return
        except (ProcessLookupError, ChildProcessError):
            return
        time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)


def _is_child(pid: int) -> bool:
    try:
        return os.getppid() != pid and Path(f"/proc/{pid}/stat").read_text().split()[3] == str(os.getpid())
    except (OSError, IndexError):
        return False
