"""Talking to Label Studio: projects, task import, per-task overlap, export snapshots, users.

Every call goes through :func:`call`, so a refusal or a server that went away is one clear
``BridgeError`` (nothing stored on our side is lost; the command can be run again).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from annotation.server import Connection

Task = dict[str, Any]
T = TypeVar("T")

PREFILL_VERSION = "curate-prefill"
"""The one ``model_version`` of every prediction in a curate project (and the project's own), so the
annotator stream shows ordinary pre-fills and gold traps alike; where a pre-fill came from is kept in
the task's ``meta``."""


class BridgeError(RuntimeError):
    """Label Studio refused or could not be reached; nothing was lost, run the command again."""


def client(connection: Connection, timeout_s: float = 60) -> LabelStudio:
    """An SDK client for a server (legacy token)."""
    return LabelStudio(base_url=connection.url, api_key=connection.token, timeout=timeout_s)


def call(what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)``, with Label Studio's errors turned into one-line ``BridgeError``s."""
    try:
        return function(*args, **kwargs)
    except ApiError as error:
        if error.status_code == 401:
            raise BridgeError(f"{what}: Label Studio refused the token (401)") from None
        raise BridgeError(f"{what}: Label Studio answered {error.status_code}: {str(error.body)[:300]}") from None
    except httpx.HTTPError as error:
        raise BridgeError(f"{what}: cannot reach Label Studio ({type(error).__name__}: {error}); nothing was lost, "
                          "run the command again when the server is back") from None


def find_project(ls: LabelStudio, title: str, description: str) -> int | None:
    """The project with this exact title and description (curate writes the workspace id into both)."""
    existing: Any
    for existing in call("list projects", ls.projects.list, title=title):
        if existing.title == title and (existing.description or "") == description:
            return int(existing.id)
    return None


def create_project(ls: LabelStudio, title: str, description: str, config: str, storage_path: str) -> int:
    """A project that shows every prediction pre-filled (one shared model version), one annotator per
    task unless a task's own overlap says more, with local-files storage at ``storage_path``."""
    created = call("create project", ls.projects.create, title=title, description=description, label_config=config,
                   show_collab_predictions=True, model_version=PREFILL_VERSION, maximum_annotations=1,
                   show_overlap_first=True)
    call("attach local files", ls.import_storage.local.create, project=created.id, path=storage_path,
         title="curate images", use_blob_urls=False)
    return int(created.id)  # type: ignore[arg-type]  # the SDK types ids of unsaved projects None; a created one has one


def project_tasks(ls: LabelStudio, project_id: int) -> list[Any]:
    """Every task of a project (data, meta, overlap and annotation counts)."""
    return list(call("list tasks", ls.tasks.list, project=project_id, fields="all", page_size=1000))


def import_tasks(ls: LabelStudio, project_id: int, tasks: Sequence[Task]) -> list[int]:
    """Create ``tasks`` in one request; returns their new ids, in order."""
    response = call("import tasks", ls.projects.import_tasks, id=project_id, request=list(tasks),
                    return_task_ids=True)
    task_ids = [int(task_id) for task_id in getattr(response, "task_ids", None) or []]
    if len(task_ids) != len(tasks):
        raise BridgeError(f"Label Studio created {len(task_ids)} task ids for {len(tasks)} tasks sent")
    return task_ids


def set_overlap(ls: LabelStudio, task_id: int, annotators: int) -> None:
    """How many different people the task waits for before it leaves the annotator stream."""
    call("set task overlap", ls.tasks.update, id=str(task_id), overlap=annotators)


EXPORT_TIMEOUT_S = 1800
"""The open edition builds an export snapshot inside one request: a large project needs minutes."""


def export(ls: LabelStudio, project_id: int, title: str) -> list[Task]:
    """A full JSON export snapshot of the project (tasks, annotations, predictions)."""
    slow = {"timeout_in_seconds": EXPORT_TIMEOUT_S}
    snapshot = call("create export", ls.projects.exports.create, id=project_id, title=title, request_options=slow)
    raw = b"".join(call("download export", ls.projects.exports.download, id=project_id, export_pk=snapshot.id,
                        export_type="JSON", request_options=slow))
    return list(json.loads(raw))


def users(ls: LabelStudio) -> dict[int, str]:
    """User id -> e-mail (or user name) of everybody on the server."""
    return {int(user.id): str(user.email or user.username) for user in call("list users", ls.users.list)}


def annotate(connection: Connection, task_id: int, result: list[dict[str, Any]]) -> None:
    """Submit one annotation as the user whose token ``connection`` holds (what a person's Submit does)."""
    ls = client(connection)
    me = call("who am I", ls.users.whoami)
    call("create annotation", ls.annotations.create, id=task_id, result=result, completed_by=me.id)


def next_task(connection: Connection, project_id: int) -> Task | None:
    """The task the annotator stream gives this user next (None when nothing is left for them)."""
    try:
        response = httpx.get(f"{connection.url}/api/projects/{project_id}/next",
                             headers={"Authorization": f"Token {connection.token}"}, timeout=60)
    except httpx.HTTPError as error:
        raise BridgeError(f"next task: cannot reach Label Studio ({type(error).__name__}: {error})") from None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise BridgeError(f"next task: Label Studio answered {response.status_code}: {response.text[:300]}")
    return dict(response.json())
