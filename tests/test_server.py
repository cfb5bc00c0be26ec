"""The workspace's own Label Studio: one server per workspace, a kept port, private random logins,
local files only from the workspace's annotation folder, annotators, and safe stopping."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import distinct_image
from typer.testing import CliRunner

from annotation import rounds, server, transport
from annotation.files import files_folder
from annotation.server import Connection, ServerError
from curate.cli import app
from curate.ingest import FolderSource, ingest
from curate.records import Evidence, EvidenceRole
from curate.workspace import Workspace


def _workspace(folder: Path, images: int = 2) -> Workspace:
    for seed in range(images):
        (folder / "img" / "dog").mkdir(parents=True, exist_ok=True)
        distinct_image(seed, (40, 30)).save(folder / "img" / "dog" / f"{seed}.png")
    workspace = Workspace.init(folder / "ws")
    ingest(workspace, FolderSource(folder / "img"), progress=False)
    workspace.catalog.add_evidence(Evidence(item.item_id, "leash", "detector", "propose-1", EvidenceRole.CANDIDATE,
                                            "Background", 0.5) for item in workspace.catalog.items())
    return workspace


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, server.Served]]:
    """A workspace with two images and its own running server (stopped after the module)."""
    workspace = _workspace(tmp_path_factory.mktemp("served"))
    try:
        yield workspace, server.serve(workspace.root)
    finally:
        server.stop(workspace.root)


def _get(connection: Connection, path: str, token: str | None = None) -> httpx.Response:
    return httpx.get(f"{connection.url}{path}", headers={"Authorization": f"Token {token or connection.token}"},
                     timeout=30)


def test_a_second_serve_reports_the_running_server(served: tuple[Workspace, server.Served]) -> None:
    workspace, first = served
    assert first.started and first.admin is not None and first.admin.email == server.ADMIN_EMAIL
    again = server.serve(workspace.root)
    assert not again.started and again.process == first.process and again.admin is None
    assert server.connection(workspace.root) == first.connection
    shown = CliRunner().invoke(app, ["annotate", "serve", "-w", str(workspace.root)])
    assert shown.exit_code == 0, shown.output
    assert f"already running at {first.connection.url} (pid {first.process.pid})" in shown.output
    assert first.admin.password not in shown.output and "password" not in shown.output  # shown only the first time


def test_logins_are_random_private_and_never_logged(served: tuple[Workspace, server.Served]) -> None:
    workspace, first = served
    folder = workspace.root / server.SERVER_FOLDER
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / server.LOGINS_FILE).stat().st_mode) == 0o600
    admin = server.admin_login(workspace.root)
    assert admin == first.admin and admin.token == first.connection.token
    assert admin.password not in ("curate-password", "") and len(admin.token) == 40
    assert _get(first.connection, "/api/current-user/whoami").json()["email"] == admin.email
    log = (folder / server.LOG_FILE).read_text()
    assert "Starting development server" in log
    assert admin.password not in log and admin.token not in log
    assert admin.password not in repr(first) and admin.token not in repr(first)


def test_an_added_annotator_is_a_real_user_with_a_private_login(served: tuple[Workspace, server.Served]) -> None:
    workspace, first = served
    added = CliRunner().invoke(app, ["annotate", "add-annotator", "ann@example.org", "-w", str(workspace.root)])
    assert added.exit_code == 0, added.output
    [login] = server.annotator_logins(workspace.root)
    assert login.email == "ann@example.org" and login.password in added.output and login.token in added.output
    assert _get(first.connection, "/api/current-user/whoami", login.token).json()["email"] == "ann@example.org"
    with httpx.Client(base_url=first.connection.url, timeout=30) as browser:  # the password, through the form
        browser.get("/user/login")
        answer = browser.post("/user/login", data={"email": login.email, "password": login.password,
                                                   "csrfmiddlewaretoken": browser.cookies["csrftoken"]})
        assert answer.status_code == 302 and "/user/login" not in answer.headers["location"]
    log = (workspace.root / server.SERVER_FOLDER / server.LOG_FILE).read_text()
    assert login.password not in log and login.token not in log
    again = CliRunner().invoke(app, ["annotate", "add-annotator", "ann@example.org", "-w", str(workspace.root)])
    assert again.exit_code == 2 and "already has a login" in again.output
    with pytest.raises(ServerError, match="not an e-mail address"):
        server.add_annotator(workspace.root, "ann")


def test_only_images_linked_into_the_annotation_folder_are_served(served: tuple[Workspace, server.Served]) -> None:
    workspace, first = served
    if not server.annotator_logins(workspace.root):
        server.add_annotator(workspace.root, "ann@example.org")
    annotator = server.annotator_logins(workspace.root)[0].token
    report = rounds.push(workspace, first.connection, rounds.RoundSpec("served-1", budget=1))
    assert first.connection.token not in json.dumps(workspace.runs.get(report.run_id).config)
    [task] = transport.client(first.connection).tasks.list(project=report.project_id, fields="all")
    image = _get(first.connection, task.data["image"], annotator)
    item = workspace.catalog.item(task.data["item_id"])
    assert image.status_code == 200 and image.content == workspace.resolve_uri(item.uri).read_bytes()
    assert task.data["image"].startswith("/data/local-files/?d=images/")
    assert (files_folder(workspace) / task.data["image"].rsplit("/", 1)[1]).is_symlink()
    outside = ["../curate.sqlite", str(workspace.database).lstrip("/"), "../label-studio/logins.json",
               "etc/passwd", "/etc/passwd", "../../../../../../../../etc/passwd"]
    for path in outside:  # 404, or 500 where Django's safe_join refuses a path leaving the root
        refused = _get(first.connection, f"/data/local-files/?d={path}", annotator)
        assert refused.status_code in (404, 500) and b"SQLite" not in refused.content, path
        assert b"root:" not in refused.content and b"password" not in refused.content, path
    for root in (workspace.root, Path("/etc")):  # nobody can attach storage outside the annotation folder
        attached = httpx.post(f"{first.connection.url}/api/storages/localfiles/", timeout=30,
                              headers={"Authorization": f"Token {annotator}"},
                              json={"project": report.project_id, "path": str(root), "use_blob_urls": True})
        assert attached.status_code == 400 and "LOCAL_FILES_DOCUMENT_ROOT" in attached.text
    assert _get(first.connection, "/data/local-files/?d=../curate.sqlite", annotator).status_code != 200


def test_the_port_is_kept_across_restarts_and_a_taken_one_is_a_clear_error(
        served: tuple[Workspace, server.Served]) -> None:
    workspace, first = served
    assert server.stop(workspace.root) and not first.process.alive()
    assert not server.stop(workspace.root)
    with pytest.raises(ServerError, match="no Label Studio server runs for"):
        server.connection(workspace.root)
    with socket.socket() as squatter:  # another program (closed connections of the server linger in TIME_WAIT)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", first.process.port))
        squatter.listen()
        with pytest.raises(ServerError, match=f"port {first.process.port} .kept for this workspace. is taken"):
            server.serve(workspace.root)
    restarted = server.serve(workspace.root)
    assert restarted.started and restarted.process.port == first.process.port and restarted.admin is None
    assert restarted.connection == first.connection
    assert server.is_ready(restarted.connection.url, restarted.connection.token)


def test_a_new_workspace_starts_from_the_template_with_secrets_of_its_own(
        served: tuple[Workspace, server.Served], tmp_path: Path) -> None:
    workspace, first = served
    template = server.template(server.find_venv())
    with sqlite3.connect(template / server.DATABASE) as db:
        assert db.execute("select count(*) from htx_user").fetchone() == (0,)
    assert not (template / ".env").exists()
    other = _workspace(tmp_path, images=1)
    shown = CliRunner().invoke(app, ["annotate", "serve", "-w", str(other.root)])
    try:
        assert shown.exit_code == 0, shown.output
        second, admin = server.connection(other.root), server.admin_login(other.root)
        assert f"admin login: {admin.email}\n  password: {admin.password}\n  token: {admin.token}\n" in shown.output
        assert f"started at {second.url}" in shown.output
        assert second.url != first.connection.url and admin.token != first.connection.token
        assert admin.password != server.admin_login(workspace.root).password
        assert not server.is_ready(second.url, first.connection.token)
        secret = [(ws.root / server.SERVER_FOLDER / ".env").read_text() for ws in (workspace, other)]
        assert secret[0] != secret[1]
    finally:
        stopped = CliRunner().invoke(app, ["annotate", "stop", "-w", str(other.root)])
    assert stopped.exit_code == 0 and stopped.output.strip().endswith("Label Studio stopped")


def test_stop_refuses_pids_curate_did_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: signalled.append((pid, sig)))
    monkeypatch.setattr(os, "kill", lambda pid, sig: signalled.append((pid, sig)))
    for pid in (0, 1, -1, os.getpid(), os.getpgrp()):
        with pytest.raises(ServerError, match="refusing to stop"):
            server.terminate(pid)
    with pytest.raises(ServerError, match="refusing to stop pid 0"):
        server.ServerProcess(Path("."), 8080, 0).stop()
    assert signalled == []


def test_the_venv_is_found_from_the_package_not_the_current_folder(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(server.VENV_VARIABLE, raising=False)
    assert server.find_venv() == server.REPOSITORY_VENV and server.executable(server.find_venv()).is_file()
    monkeypatch.setenv(server.VENV_VARIABLE, str(server.REPOSITORY_VENV))
    assert server.find_venv() == server.REPOSITORY_VENV.resolve()
    monkeypatch.setenv(server.VENV_VARIABLE, str(tmp_path / "elsewhere"))
    with pytest.raises(ServerError, match="CURATE_LABEL_STUDIO_VENV=.*has no bin/label-studio") as wrong:
        server.find_venv()
    assert "not installed" not in str(wrong.value)
    monkeypatch.delenv(server.VENV_VARIABLE)
    monkeypatch.setattr(server, "REPOSITORY_VENV", tmp_path / "missing")
    with pytest.raises(ServerError, match="tools/label_studio.py install.*or set CURATE_LABEL_STUDIO_VENV"):
        server.find_venv()


def test_label_studio_own_python_runs_the_install_tool() -> None:
    """`make` runs tools/label_studio.py with Label Studio's own Python (none of curate's packages are
    there), so the template's migrations run while curate's venv is still installing."""
    venv = server.find_venv()
    tool = Path(__file__).resolve().parent.parent / "tools" / "label_studio.py"
    result = subprocess.run([str(venv / "bin" / "python"), str(tool), "install", "--venv", str(venv)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"data template {server.template(venv)}" in result.stdout


def test_a_connection_for_a_server_curate_did_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(ServerError, match="set LABEL_STUDIO_API_KEY"):
        Connection.from_url("http://ls.example:8080/")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-token")
    found = Connection.from_url("http://ls.example:8080/")
    assert found == Connection("http://ls.example:8080", "secret-token") and "secret-token" not in repr(found)


def test_serving_needs_a_workspace_and_stopping_none_is_fine(tmp_path: Path) -> None:
    shown = CliRunner().invoke(app, ["annotate", "serve", "-w", str(tmp_path)])
    assert shown.exit_code == 2 and "no curate workspace" in shown.output
    assert not (tmp_path / server.SERVER_FOLDER).exists()
    Workspace.init(tmp_path)
    stopped = CliRunner().invoke(app, ["annotate", "stop", "-w", str(tmp_path)])
    assert stopped.exit_code == 0 and "no Label Studio was running" in stopped.output
    with pytest.raises(ServerError, match="no Label Studio server runs for .*curate annotate serve -w"):
        server.connection(tmp_path)
