"""Upload a published folder to the Hugging Face Hub (``huggingface_hub``).

The repo is created private by default; only files that differ from the Hub's copy are uploaded
(compared by sha256 for LFS files and git blob sha1 for the rest), in commits of at most
``FILES_PER_COMMIT`` files; the existing card's metadata is merged (keys we do not write, such as
``pretty_name``, are kept); a tag marks the release. Re-publishing an unchanged release uploads
nothing. The token is read from ``$HF_TOKEN`` (or the variable named) and never stored.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FILES_PER_COMMIT = 100


class HubError(ValueError):
    """The Hub refused the upload, or it cannot be attempted (no token)."""


@dataclass(frozen=True, slots=True)
class HubResult:
    """What changed on the Hub (or would, for a dry run), and the commits made."""

    repo_id: str
    changed: list[str]
    commits: list[str] = field(default_factory=list)
    tag: str | None = None


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file's content (what the Hub reports for non-LFS files).

    >>> git_blob_sha1(b"hello")
    'b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0'
    """
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """(YAML front matter, body) of a dataset card."""
    if text.startswith("---\n"):
        head, _, body = text[4:].partition("\n---\n")
        return yaml.safe_load(head) or {}, body
    return {}, text


def _remote_files(api: Any, repo_id: str) -> dict[str, str]:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        entries = api.list_repo_tree(repo_id, repo_type="dataset", recursive=True, expand=True)
        return {e.path: (e.lfs.sha256 if getattr(e, "lfs", None) else e.blob_id) for e in entries
                if getattr(e, "blob_id", None) or getattr(e, "lfs", None)}
    except RepositoryNotFoundError:
        return {}


def _remote_card(api: Any, repo_id: str) -> dict[str, Any]:
    from huggingface_hub.utils import build_hf_headers, get_session

    url = f"{api.endpoint}/datasets/{repo_id}/resolve/main/README.md"
    response = get_session().get(url, headers=build_hf_headers(token=api.token), follow_redirects=True)
    return split_card(response.text)[0] if response.status_code == 200 else {}


def upload(folder: Path, repo_id: str, private: bool = True, tag: str | None = None, dry_run: bool = False,
           token_env: str = "HF_TOKEN", endpoint: str | None = None) -> HubResult:
    """Upload ``folder`` (written by ``publish`` to a folder) to the dataset repo ``repo_id``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = os.environ.get(token_env)
    if not token:
        raise HubError(f"set {token_env} to a Hugging Face token with write access to publish to the Hub")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        remote = _remote_files(api, repo_id)
        with tempfile.TemporaryDirectory() as name:
            staging = Path(name) / "release"
            shutil.copytree(folder, staging)
            card = staging / "README.md"
            if card.is_file() and "README.md" in remote:  # keep the metadata others added on the Hub
                ours, body = split_card(card.read_text())
                merged = {**_remote_card(api, repo_id), **ours}
                card.write_text(f"---\n{yaml.safe_dump(merged, sort_keys=False)}---\n{body}")
            changed = []
            for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                relative, data = path.relative_to(staging).as_posix(), path.read_bytes()
                if remote.get(relative) not in (hashlib.sha256(data).hexdigest(), git_blob_sha1(data)):
                    changed.append(relative)
            if dry_run or not changed:
                return HubResult(repo_id, changed)
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            commits = []
            for start in range(0, len(changed), FILES_PER_COMMIT):
                batch = changed[start:start + FILES_PER_COMMIT]
                info = api.upload_folder(repo_id=repo_id, folder_path=str(staging), repo_type="dataset",
                                         allow_patterns=batch, commit_message=f"curate publish ({len(batch)} files)")
                commits.append(info.oid)
        if tag:
            api.create_tag(repo_id, tag=tag, repo_type="dataset", exist_ok=True)
    except HfHubHTTPError as error:
        raise HubError(f"the Hub refused the upload to {repo_id}: {error}") from error
    return HubResult(repo_id, changed, commits, tag)
