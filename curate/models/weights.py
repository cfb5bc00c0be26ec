"""Where model weights come from, checked before any loading starts.

Weights may be ``random`` (random initialisation, for tests), a local file, an open_clip
``local-dir:`` folder, an ``hf-hub:`` id, or an open_clip pretrained tag. A missing weight fails at
once with a message saying where to put the file or how to fetch it: offline, nothing waits on the
network and nothing is installed at run time.

>>> resolve_open_clip_weights("ViT-B-32", "random").version
'ViT-B-32@random'
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

RANDOM = "random"
RANDOM_SEED = 0  # random initialisation is seeded, so "random" weights are the same on every load
WEIGHTS_DIR_ENV = "CURATE_WEIGHTS_DIR"
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsNotFoundError(FileNotFoundError):
    """The weights a model needs are not here, and cannot (or may not) be fetched."""


@dataclass(frozen=True, slots=True)
class ResolvedWeights:
    """What a loader needs: ``kind`` (random, file, local-dir, hf-hub, tag), ``location`` and the
    ``version`` string recorded with every Evidence row the model produces."""

    kind: str
    location: str
    version: str


@contextmanager
def seeded(seed: int = RANDOM_SEED) -> Iterator[None]:
    """Seed torch inside the block only, so randomly initialised models are reproducible."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def offline() -> bool:
    """True when the Hugging Face Hub may not be reached (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def weights_dirs() -> list[Path]:
    """Folders searched for weight files named without a path: ``$CURATE_WEIGHTS_DIR``, then
    ``~/.cache/curate/weights``."""
    dirs = [Path(os.environ[WEIGHTS_DIR_ENV])] if os.environ.get(WEIGHTS_DIR_ENV) else []
    return [*dirs, Path.home() / ".cache" / "curate" / "weights"]


@lru_cache(maxsize=64)
def _sha256_prefix(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def file_version(path: Path) -> str:
    """``name:sha256-prefix`` of a weight file, so a changed file changes the recorded version."""
    stat = path.stat()
    return f"{path.name}:{_sha256_prefix(str(path), stat.st_size, stat.st_mtime_ns)}"


def find_weight_file(weights: str, architecture: str, fetch_hint: str) -> ResolvedWeights:
    """A weight file given as a path, or as a bare name looked up in ``weights_dirs()``."""
    candidate = Path(weights).expanduser()
    search = [candidate] if candidate.is_absolute() or candidate.parent != Path(".") else [
        candidate, *(folder / weights for folder in weights_dirs())]
    for path in search:
        if path.is_file():
            return ResolvedWeights("file", str(path.resolve()), f"{architecture}@{file_version(path)}")
    where = ", ".join(str(p) for p in search)
    raise WeightsNotFoundError(
        f"weights {weights!r} for {architecture} not found (looked in: {where}). Put the file in one of "
        f"those places or set {WEIGHTS_DIR_ENV}; {fetch_hint}. For tests, pass weights='random'."
    )


def _cached_hub_file(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def _offline_hub_error(what: str, repo_id: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. On a machine with "
        f"network run `hf download {repo_id}` and copy its HF cache here (HF_HOME), or download the "
        "weights file and pass its path (or a `local-dir:` folder with open_clip_config.json)."
    )


def resolve_open_clip_weights(architecture: str, weights: str | None) -> ResolvedWeights:
    """Check open_clip weights: random, file, ``local-dir:``, ``hf-hub:`` or a pretrained tag (only a
    tag imports open_clip, seconds with torchvision: a Ray driver knows the version without it)."""
    if weights in (None, "", RANDOM):
        return ResolvedWeights(RANDOM, "", f"{architecture}@{RANDOM}")
    if weights.startswith("local-dir:"):
        folder = Path(weights.removeprefix("local-dir:")).expanduser()
        files = [folder / name for name in _HUB_WEIGHT_FILES if (folder / name).is_file()]
        if not (folder / "open_clip_config.json").is_file() or not files:
            raise WeightsNotFoundError(f"{folder} needs open_clip_config.json and one of {_HUB_WEIGHT_FILES}")
        return ResolvedWeights("local-dir", str(folder.resolve()), f"local-dir:{file_version(files[0])}")
    if weights.startswith("hf-hub:"):
        repo_id = weights.removeprefix("hf-hub:")
        if offline() and _cached_hub_file(repo_id, _HUB_WEIGHT_FILES) is None:
            raise _offline_hub_error(weights, repo_id)
        return ResolvedWeights("hf-hub", repo_id, weights)
    if Path(weights).expanduser().is_file() or weights.endswith((".pt", ".bin", ".safetensors", ".pth")):
        return find_weight_file(weights, architecture, "open_clip weight files are listed by "
                                "`open_clip.list_pretrained()`")
    import open_clip

    config = open_clip.get_pretrained_cfg(architecture, weights)
    if not config:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(architecture)) or "none"
        raise WeightsNotFoundError(f"open_clip has no pretrained tag {weights!r} for {architecture}; known: {known}")
    hub = config.get("hf_hub", "")
    if offline():
        repo_id, filename = os.path.split(hub) if hub else ("", "")
        names = (filename,) if filename else _HUB_WEIGHT_FILES
        if not hub or _cached_hub_file(repo_id, (*names, *_HUB_WEIGHT_FILES)) is None:
            raise _offline_hub_error(f"open_clip weights {architecture}/{weights}", repo_id or architecture)
    return ResolvedWeights("tag", weights, f"{architecture}@{weights}")
