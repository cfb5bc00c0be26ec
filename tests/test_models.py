from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP_CONFIG
from PIL import Image

from curate.models import (
    ClipModel,
    Detections,
    ModelSpec,
    UnknownModelError,
    WeightsNotFoundError,
    get_spec,
    list_models,
    load_model,
    model_version,
)
from curate.workspace import Workspace


def test_the_registry_holds_clip_and_both_detector_families() -> None:
    assert {"clip-vit-b-32", "mobileclip-b", "yolo-world-v2-s", "yoloe-11s"} <= set(list_models())
    assert get_spec("yolo-world-v2-s").text_encoder == "clip-vit-b-32"
    assert get_spec("yoloe-11s").text_encoder == "mobileclip-b-lt"
    assert get_spec("mobileclip-b-lt").weights == "datacompdr_lt"
    assert get_spec("clip-vit-b-32", weights="random").weights == "random"
    with pytest.raises(UnknownModelError, match="no model named 'nope'"):
        get_spec("nope")


@pytest.mark.parametrize(
    ("name", "weights", "message"),
    [
        ("clip-vit-b-32", None, "hf download timm/vit_base_patch32_clip_224.openai"),
        ("mobileclip-b", None, "apple/MobileCLIP-B-OpenCLIP"),
        ("clip-vit-b-32", "hf-hub:someone/some-clip", "not in the local Hugging Face cache"),
        ("clip-vit-b-32", "no-such-tag", "no pretrained tag 'no-such-tag'.*openai"),
        ("clip-vit-b-32", "/missing/model.safetensors", "not found"),
        ("yolo-world-v2-s", None, "CURATE_WEIGHTS_DIR"),
        ("yoloe-11s", None, "yoloe-11s-seg.pt"),
    ],
)
def test_missing_weights_fail_at_once_offline_and_say_where_to_put_them(name: str, weights: str | None,
                                                                       message: str,
                                                                       network_attempts: list[object]) -> None:
    with pytest.raises(WeightsNotFoundError, match=message):
        load_model(name, weights=weights)
    assert network_attempts == []  # no download attempt, not even one that failed


def test_tiny_clip_embeds_unit_vectors_and_caches_texts(tiny_clip: str, workspace: Workspace,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    clip: ClipModel = load_model(tiny_clip)
    assert clip.version == "curate-tiny-clip@random"
    texts = clip.encode_texts(["a dog", "a leash"], workspace.cache)
    assert texts.shape == (2, 512)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    image = clip.preprocess_image(Image.new("RGB", (80, 60), "green"))
    images = clip.encode_images(torch.stack([image, image]))
    assert images.shape == (2, 512) and np.allclose(images[0], images[1])

    def no_model_calls(_: object) -> None:
        raise AssertionError("the text encoder ran although every text was cached")

    monkeypatch.setattr(clip, "_encode_texts", no_model_calls)
    assert np.allclose(clip.encode_texts(["a leash", "a dog"], workspace.cache), texts[::-1])


def test_a_model_loaded_as_a_kind_is_checked_to_be_one(tiny_clip: str) -> None:
    from curate.models import OpenSetDetector

    assert isinstance(load_model(tiny_clip, kind=ClipModel), ClipModel)
    with pytest.raises(UnknownModelError, match=r"is a ClipModel, not a OpenSetDetector$"):
        load_model(tiny_clip, kind=OpenSetDetector)


def test_local_file_and_local_dir_weights_load_the_saved_parameters(tiny_clip: str, tmp_path: Path,
                                                                    register_model: Callable[..., None]) -> None:
    from safetensors.torch import save_file

    original: ClipModel = load_model(tiny_clip)
    state = {k: v.contiguous() for k, v in original.model.state_dict().items()}
    save_file(state, tmp_path / "tiny.safetensors")
    from_file: ClipModel = load_model(tiny_clip, weights=str(tmp_path / "tiny.safetensors"))
    assert from_file.version.startswith("curate-tiny-clip@tiny.safetensors:")
    # the version a model records is known without loading it (what a Ray driver compares rows with)
    assert model_version(tiny_clip, weights=str(tmp_path / "tiny.safetensors")) == from_file.version
    assert model_version(tiny_clip) == original.version
    assert np.allclose(from_file.encode_texts(["a cat"]), original.encode_texts(["a cat"]), atol=1e-6)

    folder = tmp_path / "tiny-dir"
    folder.mkdir()
    save_file(state, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.loads(TINY_CLIP_CONFIG.read_text())}))
    register_model(ModelSpec("tiny-clip-dir", "open_clip", "curate-tiny-clip", f"local-dir:{folder}"))
    from_dir: ClipModel = load_model("tiny-clip-dir")
    assert from_dir.version.startswith("local-dir:open_clip_model.safetensors:")
    assert model_version("tiny-clip-dir") == from_dir.version
    assert np.allclose(from_dir.encode_texts(["a cat"]), original.encode_texts(["a cat"]), atol=1e-6)


@pytest.mark.parametrize("name", ["yolo-world-v2-s", "yoloe-11s"])
def test_detectors_take_their_vocabulary_from_our_text_encoder(name: str, tiny_clip: str, workspace: Workspace,
                                                               photos: dict[str, Path]) -> None:
    detector = load_model(name, weights="random", text_encoder=tiny_clip)
    assert detector.version.endswith("@random+curate-tiny-clip@random")
    assert model_version(name, weights="random", text_encoder=tiny_clip) == detector.version
    detector.set_vocabulary(["cat", "sofa", "cat"], workspace.cache)
    assert detector.vocabulary == ("cat", "sofa")
    assert detector.yolo.model.names == {0: "cat", 1: "sofa"}
    assert workspace.cache.stats().entries == {"text-embedding": 2}
    found = detector.detect([Image.open(photos["chelsea"]).convert("RGB")], conf=1e-9, imgsz=320)
    assert len(found) == 1 and set(found[0].labels) <= {"cat", "sofa"}
    assert found[0].xyxy.shape == (len(found[0].labels), 4)
    detector.set_vocabulary(["dog"], workspace.cache)
    again = detector.detect([Image.new("RGB", (64, 64))], conf=1e-9, imgsz=320)
    assert set(again[0].labels) <= {"dog"}


def test_a_detector_weight_file_is_found_by_name_in_the_weights_dir(tiny_clip: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    register_model: Callable[..., None]) -> None:
    built = load_model("yolo-world-v2-s", weights="random", text_encoder=tiny_clip)
    built.yolo.save(tmp_path / "yolov8s-worldv2.pt")
    monkeypatch.setenv("CURATE_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    register_model(ModelSpec("world-random-encoder", "yolo-world", "yolov8s-worldv2", "yolov8s-worldv2.pt",
                             tiny_clip))
    loaded = load_model("world-random-encoder")
    assert loaded.version.startswith("yolov8s-worldv2@yolov8s-worldv2.pt:")
    assert model_version("world-random-encoder") == loaded.version


def test_detections_best_box_per_label() -> None:
    found = Detections(np.array([[0, 0, 5, 5], [1, 1, 9, 9], [2, 2, 4, 4]], dtype=np.float32),
                       np.array([0.2, 0.7, 0.4], dtype=np.float32), ("dog", "dog", "ball"))
    score, boxes = found.best("dog")
    assert score == pytest.approx(0.7) and boxes[:, 4].tolist() == pytest.approx([0.7, 0.2])
    assert found.best("cat") == (0.0, pytest.approx(np.zeros((0, 5))))
