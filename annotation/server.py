"""One Label Studio server per workspace, in a virtual environment of its own, on 127.0.0.1.

Label Studio pins many packages tightly, so it never shares curate's environment: ``install``
makes its venv (found by ``find_venv``). ``serve(ws)`` runs the workspace's server: its data
folder is ``<ws>/label-studio/`` (mode 0700), which also keeps ``server.json`` (port and pid; the
port chosen at the first start is reused on every restart) and ``logins.json`` (mode 0600: the
admin and annotator logins, random, generated here and shown once). Local files are served only
from ``<ws>/annotation-files`` (``annotation.files``). A second ``serve`` finds the running server
instead of starting another; ``connection(ws)`` is what rounds talk to; ``stop(ws)`` ends it.

A new workspace's data folder is a copy of a template migrated once per venv, so a first start
takes seconds instead of the migrations' minutes; the template holds no user and no secret key.

>>> Connection("http://127.0.0.1:8080", "0123456789")
Connection(url='http://127.0.0.1:8080')
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

LABEL_STUDIO_VERSION = "1.23.2"
VENV_VARIABLE = "CURATE_LABEL_STUDIO_VENV"
REPOSITORY_VENV = Path(__file__).resolve().parent.parent / ".label-studio" / "venv"
SERVER_FOLDER = "label-studio"
STATE_FILE = "server.json"
LOGINS_FILE = "logins.json"
LOG_FILE = "server.log"
DATABASE = "label_studio.sqlite3"
TEMPLATE = "curate-template"
ADMIN_EMAIL = "curate@localhost"
INSTALL_HINT = "install it with `python tools/label_studio.py install` (or `make test`)"


class ServerError(RuntimeError):
    """Label Studio could not be installed, started, found or reached."""


@dataclass(frozen=True, slots=True)
class Connection:
    """Where a Label Studio answers and the API token to use there (never shown in reprs)."""

    url: str
    token: str = field(repr=False)

    @classmethod
    def from_url(cls, url: str, token: str | None = None) -> Connection:
        """A server curate did not start: the token is ``token`` or ``$LABEL_STUDIO_API_KEY``.

        >>> Connection.from_url("http://ls.example/", token="abc").url
        'http://ls.example'
        """
        token = token or os.environ.get("LABEL_STUDIO_API_KEY")
        if not token:
            raise ServerError(f"set LABEL_STUDIO_API_KEY to the token of the Label Studio at {url}")
        return cls(url.rstrip("/"), token)


@dataclass(frozen=True, slots=True)
class Login:
    """A person's login: e-mail, password and API token (the secrets never shown in reprs)."""

    email: str
    password: str = field(repr=False)
    token: str = field(repr=False)

    @classmethod
    def random(cls, email: str) -> Login:
        """A login with a fresh random password and 40-character token."""
        return cls(email, secrets.token_urlsafe(18), secrets.token_hex(20))


@dataclass(frozen=True, slots=True)
class ServerProcess:
    """A Label Studio process curate started: its data folder, port and process id."""

    data_dir: Path
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """True while the process runs and is a Label Studio of this data folder (not a reused pid)."""
        if not _is_label_studio(self.pid):
            return False
        try:
            return Path(os.readlink(f"/proc/{self.pid}/cwd")) == Path(self.data_dir).resolve()
        except OSError:
            return False

    def stop(self, timeout_s: float = 30) -> None:
        """End the process group it leads (see ``terminate``)."""
        terminate(self.pid, timeout_s)


@dataclass(frozen=True, slots=True)
class Served:
    """What ``serve`` found or started; ``admin`` is set only when its login was just made (show it once)."""

    connection: Connection
    process: ServerProcess
    started: bool
    admin: Login | None = None


# --- the venv -------------------------------------------------------------------------------


def find_venv() -> Path:
    """Label Studio's venv: ``$CURATE_LABEL_STUDIO_VENV``, else the repository's ``.label-studio/venv``."""
    configured = os.environ.get(VENV_VARIABLE)
    if configured:
        venv = Path(configured).expanduser().resolve()
        if not executable(venv).exists():
            raise ServerError(f"{VENV_VARIABLE}={configured} has no bin/label-studio: point it at a venv with "
                              f"label-studio {LABEL_STUDIO_VERSION}, or unset it and {INSTALL_HINT}")
        return venv
    if not executable(REPOSITORY_VENV).exists():
        raise ServerError(f"no Label Studio in {REPOSITORY_VENV} and {VENV_VARIABLE} is unset: {INSTALL_HINT}, "
                          f"or set {VENV_VARIABLE} to a venv that has it")
    return REPOSITORY_VENV


def executable(venv: Path) -> Path:
    """The ``label-studio`` command of a venv."""
    return venv / "bin" / "label-studio"


def install(venv: Path = REPOSITORY_VENV, version: str = LABEL_STUDIO_VERSION) -> Path:
    """Create ``venv`` with Label Studio and its data template (once; minutes and 1 GB). Returns the command.

    This module imports nothing of curate's at load, so Label Studio's own Python can run this
    (``make`` makes the template that way while curate's venv is still installing)."""
    command = executable(venv)
    if not command.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        result = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"label-studio=={version}"],
                                capture_output=True, text=True)
        if result.returncode != 0 or not command.exists():
            raise ServerError(f"installing label-studio=={version} into {venv} failed:\n{result.stderr[-2000:]}")
    template(venv)
    return command


def template(venv: Path, timeout_s: float = 900) -> Path:
    """A migrated data folder without users or secret key, made once per venv (the migrations take
    30 s to minutes); new workspaces start from a copy of it."""
    folder = venv / TEMPLATE
    if (folder / DATABASE).is_file():
        return folder
    if not os.access(venv, os.W_OK):
        raise ServerError(f"cannot write Label Studio's data template into {venv}: run "
                          f"`python tools/label_studio.py install --venv {venv}` as its owner")
    with _locked(venv / f"{TEMPLATE}.lock"):
        if (folder / DATABASE).is_file():
            return folder
        scratch = venv / f"{TEMPLATE}.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        result = subprocess.run([str(executable(venv)), "init", "--quiet", "--no-browser"],
                                env=_environment(scratch, {}), cwd=scratch, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=timeout_s)
        if result.returncode != 0 or not (scratch / DATABASE).is_file():
            raise ServerError(f"preparing Label Studio's data template failed: {result.stderr[-1000:]}")
        (scratch / ".env").unlink(missing_ok=True)  # the secret key: every workspace makes its own
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)
    return folder


# --- one process ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now (Label Studio silently moves on if its port is busy)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True if nothing listens on ``port`` of 127.0.0.1 (connections closing there do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def is_ready(url: str, token: str) -> bool:
    """True when the server answers an authenticated request."""
    try:
        response = httpx.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=5)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def launch(data_dir: Path, port: int, admin: Login, files_root: Path, venv: Path | None = None,
           timeout_s: float = 600, extra_env: dict[str, str] | None = None) -> ServerProcess:
    """Start Label Studio with ``data_dir`` on 127.0.0.1:``port``, serving local files only under
    ``files_root``, and wait until ``admin`` (created on the first start) is let in. A data folder
    without a database starts from the venv's template."""
    venv = venv or find_venv()
    data = Path(data_dir).resolve()
    if not (data / DATABASE).is_file():
        shutil.copytree(template(venv), data, dirs_exist_ok=True)
    data.chmod(0o700)
    files_root.mkdir(parents=True, exist_ok=True)
    env = _environment(data, {
        "LABEL_STUDIO_USERNAME": admin.email, "LABEL_STUDIO_PASSWORD": admin.password,
        "LABEL_STUDIO_USER_TOKEN": admin.token, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root.resolve()), **(extra_env or {}),
    })
    with (data / LOG_FILE).open("ab") as log:
        started = subprocess.Popen(
            [str(executable(venv)), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=data,
        )
    _CHILDREN[started.pid] = started
    process = ServerProcess(data, port, started.pid)
    _write_private(data / STATE_FILE, {"port": port, "pid": started.pid})
    deadline = time.monotonic() + timeout_s
    while not is_ready(process.url, admin.token):
        if started.poll() is not None:
            raise ServerError(f"Label Studio exited with {started.returncode}; see {data / LOG_FILE}")
        if time.monotonic() > deadline:
            process.stop()
            raise ServerError(f"Label Studio did not answer on {process.url} within {timeout_s:.0f}s; "
                              f"see {data / LOG_FILE}")
        time.sleep(0.5)
    return process


def create_user(data_dir: Path, login: Login, venv: Path | None = None, timeout_s: float = 300) -> None:
    """A real user in the organisation of the server with ``data_dir`` (running or not), with the
    login's password and token (``label-studio init``; the API's ``users.create`` ignores the
    password and leaves users outside the organisation). Secrets travel in the environment, not argv."""
    data = Path(data_dir).resolve()
    result = subprocess.run(
        [str(executable(venv or find_venv())), "init", "--quiet", "--no-browser"],
        env=_environment(data, {"LABEL_STUDIO_USERNAME": login.email, "LABEL_STUDIO_PASSWORD": login.password,
                                "LABEL_STUDIO_USER_TOKEN": login.token}),
        capture_output=True, text=True, cwd=data, stdin=subprocess.DEVNULL, timeout=timeout_s,
    )
    if result.returncode != 0:
        raise ServerError(f"adding {login.email} to Label Studio failed: {result.stderr[-1000:]}")
    if f"User {login.email} already exists" in result.stdout:
        raise ServerError(f"{login.email} already has a Label Studio account on this server")


def terminate(pid: int, timeout_s: float = 30) -> None:
    """End the process group that ``pid`` leads (SIGTERM, then SIGKILL); a process already gone is fine.

    Refuses pids that are not a group leader of their own: 0 and 1, this process and its group.
    """
    if pid <= 1 or pid in (os.getpid(), os.getpgrp()):
        raise ServerError(f"refusing to stop pid {pid}: not a Label Studio server curate started")
    try:
        leads_its_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    if not leads_its_group:
        raise ServerError(f"refusing to stop pid {pid}: it does not lead a process group of its own")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _running(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
        time.sleep(0.2)


# --- the workspace's server -----------------------------------------------------------------


def server_folder(workspace_root: str | Path) -> Path:
    """``<ws>/label-studio``: the server's data, state and logins."""
    from curate.workspace import Workspace  # here: the module needs only httpx (see ``install``)

    return Workspace.open(workspace_root).root / SERVER_FOLDER


def serve(workspace_root: str | Path, port: int | None = None, venv: Path | None = None,
          timeout_s: float = 600) -> Served:
    """The workspace's running server, started if none runs: on ``port``, else the port it had
    before, else a free one (kept for later starts). The admin login is made at the first start.

    A kept port now taken by another program is an error that says so.
    """
    from annotation.files import document_root  # here: the module needs only httpx (see ``install``)

    folder = server_folder(workspace_root)
    folder.mkdir(mode=0o700, exist_ok=True)
    with _locked(folder / ".lock"):
        running = _running_process(folder)
        admin, made = _admin(folder)
        if running is not None:
            return Served(Connection(running.url, admin.token), running, started=False, admin=admin if made else None)
        kept = _read(folder / STATE_FILE).get("port")
        chosen = port or kept or free_port()
        if not port_is_free(chosen):
            how = "kept for this workspace" if chosen == kept and not port else "asked for"
            raise ServerError(f"port {chosen} ({how}) is taken by another program: free it, or start on another "
                              f"with `curate annotate serve --port N` (the workspace keeps the new one)")
        try:
            process = launch(folder, chosen, admin, document_root(folder.parent), venv, timeout_s)
        except ServerError as error:
            raise ServerError(f"{error} (the admin login is in {folder / LOGINS_FILE})") from None
    return Served(Connection(process.url, admin.token), process, started=True, admin=admin if made else None)


def connection(workspace_root: str | Path) -> Connection:
    """The running server of the workspace, as the admin."""
    folder = server_folder(workspace_root)
    running = _running_process(folder)
    if running is None:
        raise ServerError(f"no Label Studio server runs for {folder.parent}: start it with "
                          f"`curate annotate serve -w {folder.parent}`")
    return Connection(running.url, admin_login(workspace_root).token)


def stop(workspace_root: str | Path) -> bool:
    """Stop the workspace's server; False if none ran. Its port stays kept for the next start."""
    folder = server_folder(workspace_root)
    if not folder.is_dir():
        return False
    with _locked(folder / ".lock"):
        running = _running_process(folder)
        if running is None:
            return False
        running.stop()
        _write_private(folder / STATE_FILE, {"port": running.port})
    return True


def add_annotator(workspace_root: str | Path, email: str) -> Login:
    """A new annotator in the workspace server's organisation, with a random password and token
    (stored with the workspace's logins; show them once)."""
    if "@" not in email or email.strip() != email or email.startswith("@") or email.endswith("@"):
        raise ServerError(f"{email!r} is not an e-mail address")
    folder = server_folder(workspace_root)
    if not (folder / DATABASE).is_file():
        raise ServerError(f"{folder.parent} has no Label Studio yet: start it once with "
                          f"`curate annotate serve -w {folder.parent}`")
    with _locked(folder / ".lock"):
        if email in {login.email for login in (admin_login(workspace_root), *annotator_logins(workspace_root))}:
            raise ServerError(f"{email} already has a login in {folder / LOGINS_FILE}")
        login = Login.random(email)
        create_user(folder, login)
        stored = _read(folder / LOGINS_FILE)
        stored["annotators"] = [*stored.get("annotators", []), asdict(login)]
        _write_private(folder / LOGINS_FILE, stored)
    return login


def admin_login(workspace_root: str | Path) -> Login:
    """The admin login of the workspace's server."""
    folder = server_folder(workspace_root)
    stored = _read(folder / LOGINS_FILE).get("admin")
    if stored is None:
        raise ServerError(f"{folder.parent} has no Label Studio yet: start it with "
                          f"`curate annotate serve -w {folder.parent}`")
    return Login(**stored)


def annotator_logins(workspace_root: str | Path) -> list[Login]:
    """The logins ``add_annotator`` made, oldest first."""
    return [Login(**row) for row in _read(server_folder(workspace_root) / LOGINS_FILE).get("annotators", [])]


# --- helpers --------------------------------------------------------------------------------

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _environment(data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN")
           and not k.startswith(("LABEL_STUDIO_", "HEARTEX_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LATEST_VERSION_CHECK": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false",
        **extra,
    })
    return env


def _admin(folder: Path) -> tuple[Login, bool]:
    """The stored admin login, or a new random one stored now (True: just made)."""
    stored = _read(folder / LOGINS_FILE)
    if "admin" in stored:
        return Login(**stored["admin"]), False
    admin = Login.random(ADMIN_EMAIL)
    _write_private(folder / LOGINS_FILE, {**stored, "admin": asdict(admin)})
    return admin, True


def _running_process(folder: Path) -> ServerProcess | None:
    state = _read(folder / STATE_FILE)
    if "pid" not in state:
        return None
    process = ServerProcess(folder, int(state["port"]), int(state["pid"]))
    return process if process.alive() else None


def _is_label_studio(pid: int) -> bool:
    if pid <= 1 or not _running(pid):
        return False
    try:
        return b"label-studio" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a child of ours is reaped here)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ServerError(f"{path} is not valid JSON ({error}); fix or remove it") from None


def _write_private(path: Path, content: dict) -> None:
    """Write JSON readable by the owner only (0600), atomically."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        scratch.unlink()
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(content, handle, indent=1)
    os.replace(scratch, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time (an advisory lock on ``path``)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
