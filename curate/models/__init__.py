"""Models by name: open_clip CLIP models and open-set detectors (YOLO-World v2, YOLOE).

>>> from curate.models import list_models
>>> list_models("yoloe")
['yoloe-11l', 'yoloe-11s']
"""

from curate.models.clip import ClipModel
from curate.models.detector import Detections, OpenSetDetector
from curate.models.registry import (
    FAMILIES,
    ModelSpec,
    UnknownModelError,
    add_model,
    get_spec,
    list_models,
    load_model,
    model_version,
    register_family,
    register_version,
    remove_model,
)
from curate.models.weights import RANDOM, WeightsNotFoundError, weights_dirs

__all__ = [
    "FAMILIES", "RANDOM", "ClipModel", "Detections", "ModelSpec", "OpenSetDetector", "UnknownModelError",
    "WeightsNotFoundError", "add_model", "get_spec", "list_models", "load_model", "model_version", "register_family",
    "register_version", "remove_model", "weights_dirs",
]
