"""Shared fixtures. The offline environment is set before anything else is imported."""

from __future__ import annotations

import os
import tempfile

_OFFLINE_HOME = tempfile.mkdtemp(prefix="curate-tests-home-")
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_XET": "1",
    "HF_HOME": os.path.join(_OFFLINE_HOME, "hf"),
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "false",
    "YOLO_CONFIG_DIR": os.path.join(_OFFLINE_HOME, "yolo"),
    "OPENAI_API_KEY": "sk-test-not-a-real-key",
    "NO_PROXY": "127.0.0.1,localhost",
})

import io  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from curate.ingest import FolderSource, ingest  # noqa: E402
from curate.records import Verdict  # noqa: E402
from curate.workspace import Workspace  # noqa: E402

TINY_CLIP_CONFIG = Path(__file__).parent / "data" / "curate-tiny-clip.json"


@pytest.fixture(scope="session")
def tiny_clip() -> Iterator[str]:
    """Registers ``tiny-clip`` for the session (and forgets it after): a 3-million-parameter open_clip
    architecture with random weights and 512-d embeddings (what YOLO-World and YOLOE heads expect
    from their text encoder)."""
    from curate.models import ModelSpec, add_model, remove_model

    add_model(ModelSpec("tiny-clip", "open_clip", str(TINY_CLIP_CONFIG), "random", description="test model"))
    yield "tiny-clip"
    remove_model("tiny-clip")


@pytest.fixture
def register_model() -> Iterator[Callable[..., None]]:
    """``register_model(spec)`` adds a model for one test; the registry is restored after it."""
    from curate.models import add_model, remove_model

    added: list[str] = []

    def register(spec: Any) -> None:
        added.append(spec.name)
        add_model(spec)

    yield register
    for name in added:
        remove_model(name)


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Blocks every socket connection for the test and records where each one tried to go: a test
    asserts the list is empty to prove nothing tried the network (not a time limit)."""
    import socket

    attempts: list[object] = []

    def blocked(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("the network is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    return attempts


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace.init(tmp_path / "ws")


POOLS = {("dog", 0): 40, ("dog", 1): 10, ("cat", 1): 30, ("cat", 0): 20}  # (class, water present): items


@pytest.fixture
def judged(workspace: Workspace, tmp_path: Path) -> Workspace:
    seed = 0
    for (label, water), count in POOLS.items():
        for _ in range(count):
            seed += 1
            folder = tmp_path / "img" / label
            folder.mkdir(parents=True, exist_ok=True)
            distinct_image(seed, (6, 6)).save(folder / f"{water}-{seed}.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    water_of = {ref.item_id: int(ref.locator.split("/")[1][0]) for ref in workspace.catalog.references()}
    workspace.catalog.add_verdicts(
        Verdict(item_id, "water", annotator, "round-1", "spurious" if water else "not present")
        for item_id, water in water_of.items() for annotator in ("ann", "bob"))
    return workspace


@pytest.fixture
def verified(workspace: Workspace, tmp_path: Path) -> Workspace:
    for index in range(9):
        (tmp_path / "img" / "bottle").mkdir(parents=True, exist_ok=True)
        distinct_image(700 + index, (8, 8)).save(tmp_path / "img" / "bottle" / f"{index}.png")
    ingest(workspace, FolderSource(tmp_path / "img"), progress=False)
    rows = []
    for n, item in enumerate(workspace.catalog.items()):
        attributes = {"cap": ("core", None), "label text": ("core", None), "glass": ("core", None),
                      "marble table": ("spurious", "Background"), "round shape": ("spurious", "Shape"),
                      "shiny surface": ("spurious", "Texture and Noise"), "hand": ("spurious", "Co-occurring Objects"),
                      "wooden floor": ("spurious", "Background")}
        if n == 8:  # one item with a single verified core attribute cannot make an item
            attributes = {"cap": ("core", None), **{k: v for k, v in attributes.items() if v[0] == "spurious"}}
        for annotator in ("ann", "bob"):
            rows += [Verdict(item.item_id, name, annotator, "r1", role, kind)
                     for name, (role, kind) in attributes.items()]
    rows.append(Verdict(next(workspace.catalog.items()).item_id, "sticker", "ann", "r1", "core"))
    rows.append(Verdict(next(workspace.catalog.items()).item_id, "sticker", "bob", "r1", "not present"))  # a tie
    workspace.catalog.add_verdicts(rows)
    return workspace


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode a PIL image to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def distinct_image(seed: int, size: tuple[int, int] = (16, 12)) -> Image.Image:
    """A small RGB image whose pixels differ for every seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """Write a distinct image: ``write_image(path, seed, fmt="PNG")``."""

    def write(path: Path, seed: int, fmt: str = "PNG", size: tuple[int, int] = (16, 12)) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(distinct_image(seed, size), fmt))
        return path

    return write


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """Real photographs that installed packages ship: scikit-image (public domain) and
    scikit-learn's sample images (CC-BY 2.0), as files."""
    import sklearn.datasets
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    found = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        found[name] = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(found[name])
    sklearn_images = Path(sklearn.datasets.__file__).parent / "images"
    for name in ("china", "flower"):
        found[name] = folder / f"{name}.jpg"
        shutil.copy(sklearn_images / f"{name}.jpg", found[name])
    return found


BOB = ("bob@localhost", "bob-password-1", "bob" + "0" * 37)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real Label Studio server for the whole test session (installed by `make test`), as a
    ``Connection`` for its admin, with a second real annotator (``BOB``). Fixed credentials are for
    tests only. Its document root is the session's temp folder, so any test workspace can attach its
    images folder, but image URLs are relative to each workspace's own root: a test that looks at
    images uses the workspace's own server (``annotation.server.serve``)."""
    from annotation import server

    data = tmp_path_factory.mktemp("label-studio")
    admin = server.Login("curate@localhost", "curate-password", "curate" + "0" * 34)
    process = server.launch(data, server.free_port(), admin, files_root=tmp_path_factory.getbasetemp())
    try:
        server.create_user(data, server.Login(*BOB))
        yield server.Connection(process.url, admin.token)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (`make test` installs both; no browser download)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(f"no {CHROMIUM}: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield launched
        finally:
            launched.close()


def login(page: Any, url: str, email: str, password: str) -> None:
    """Log ``page`` into the Label Studio at ``url`` through its login form."""
    page.goto(f"{url}/user/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    if "/user/login" in page.url:
        raise AssertionError(f"Label Studio did not let {email} in")


@dataclass
class TaskPage:
    """What the labeling view showed: the task image's URL (as fetched from local-files storage) and
    natural width (0: not loaded), and image or data responses that failed (status >= 400)."""

    image_url: str
    image_width: int
    failed_images: list[str] = field(default_factory=list)


# The labeling view fetches the task image (XHR) and shows it from a blob: URL.
_TASK_IMAGE = ("() => Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0 && "
               "(i.src.startsWith('blob:') || i.src.includes('/data/local-files/'))).map(i => i.naturalWidth)[0] || 0")


def open_annotator_stream(page: Any, url: str, project_id: int, timeout_ms: int = 90_000) -> TaskPage:
    """Open the annotators' stream ("Label All Tasks") of a project and wait for the task image."""
    fetched: list[str] = []
    failed: list[str] = []

    def seen(response: Any) -> None:
        if "/data/local-files/" in response.url and response.status == 200:
            fetched.append(response.url)
        if response.status >= 400 and (response.request.resource_type == "image" or "/data/" in response.url):
            failed.append(f"{response.status} {response.url}")

    page.on("response", seen)
    page.goto(f"{url}/projects/{project_id}/data?labeling=1")
    page.wait_for_function(_TASK_IMAGE, timeout=timeout_ms)
    page.wait_for_load_state("networkidle", timeout=timeout_ms)
    return TaskPage(fetched[0] if fetched else "", page.evaluate(_TASK_IMAGE), failed)
