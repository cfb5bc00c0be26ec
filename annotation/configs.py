"""Labeling configs for verification tasks, checked with Label Studio's ``LabelInterface``.

``CONFIGS`` holds one per kind of review: attribute verification, box review of detector evidence
(pre-filled rectangles), MCQ items, FOCUS-style settings and logos. Push and pull exist for
attribute verification; the others are checked here and wait for the builders that feed them.

Attribute verification holds a variable number of attributes per task: two per-task taxonomies
(``verdicts``: attribute -> core / spurious / not present / unsure; ``types``: attribute -> one of
the nine types) and free text for attributes the proposers missed. Control names differ from the
task data keys, so exports never overwrite data values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree

from label_studio_sdk.label_interface import LabelInterface

from curate.taxonomy import SPURIOUS_TYPES

VERDICT_VALUES = ("core", "spurious", "not present", "unsure")

ATTRIBUTE_VERIFICATION = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Header value="Class: $class_label"/>
  <Header value="For each attribute: is it a core feature of the class, a spurious one, or not in the image?"/>
  <Taxonomy name="verdicts" toName="image" value="$verdict_tree" leafsOnly="true" placeholder="Verdicts"/>
  <Header value="Correct the type of spurious attributes when it is wrong:"/>
  <Taxonomy name="types" toName="image" value="$type_tree" leafsOnly="true" placeholder="Types"/>
  <TextArea name="missed" toName="image" placeholder="Attributes the proposers missed, one per line"
            editable="true" maxSubmissions="1"/>
</View>"""


BOX_REVIEW = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Header value="Fix the boxes of: $attribute (class $class_label). Delete wrong boxes, draw missed ones."/>
  <RectangleLabels name="boxes" toName="image">
    <Label value="cue"/>
  </RectangleLabels>
  <Choices name="box_verdict" toName="image" choice="single-radio" showInline="true">
    <Choice value="boxes correct"/>
    <Choice value="boxes fixed"/>
    <Choice value="cue not in image"/>
  </Choices>
</View>"""

MCQ_REVIEW = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Header value="$question"/>
  <Text name="choice_list" value="$choices_text"/>
  <Header value="Proposed answer: $answer"/>
  <Choices name="answer_right" toName="image" choice="single-radio" showInline="true">
    <Choice value="answer right"/>
    <Choice value="answer wrong"/>
  </Choices>
  <Choices name="ambiguous" toName="image" choice="single-radio" showInline="true">
    <Choice value="clear"/>
    <Choice value="ambiguous"/>
  </Choices>
  <TextArea name="comment" toName="image" placeholder="What is wrong?" maxSubmissions="1"/>
</View>"""

SETTING_REVIEW = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Header value="Class: $class_label. Check the setting of the image."/>
  <Choices name="time" toName="image" choice="single-radio" showInline="true">
    <Choice value="day"/><Choice value="night"/><Choice value="none"/>
  </Choices>
  <Choices name="weather" toName="image" choice="single-radio" showInline="true">
    <Choice value="cloudy"/><Choice value="foggy"/><Choice value="partly cloudy"/><Choice value="raining"/>
    <Choice value="snowing"/><Choice value="sunny"/><Choice value="none"/>
  </Choices>
  <Choices name="locations" toName="image" choice="multiple" showInline="true">
    <Choice value="forest"/><Choice value="grass"/><Choice value="indoors"/><Choice value="rocks"/>
    <Choice value="sand"/><Choice value="street"/><Choice value="snow"/><Choice value="water"/><Choice value="none"/>
  </Choices>
</View>"""

LOGO_REVIEW = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Choices name="is_logo" toName="image" choice="single-radio" showInline="true">
    <Choice value="logo"/>
    <Choice value="not a logo"/>
  </Choices>
  <TextArea name="brand" toName="image" placeholder="Which brand?" maxSubmissions="1"/>
</View>"""

# kind -> (config, the controls pull reads back)
CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "attributes": (ATTRIBUTE_VERIFICATION, ("verdicts", "types", "missed")),
    "boxes": (BOX_REVIEW, ("boxes", "box_verdict")),
    "mcq": (MCQ_REVIEW, ("answer_right", "ambiguous", "comment")),
    "setting": (SETTING_REVIEW, ("time", "weather", "locations")),
    "logo": (LOGO_REVIEW, ("is_logo", "brand")),
}


class ConfigError(ValueError):
    """A labeling config or a result does not fit what the config allows."""


def checked(config: str, controls: Sequence[str]) -> LabelInterface:
    """Parse ``config`` with ``LabelInterface`` and make sure it has the ``controls`` we read back."""
    try:
        interface = LabelInterface(config)
    except Exception as error:  # the SDK raises several parser errors
        raise ConfigError(f"Label Studio cannot parse the labeling config: {error}") from error
    names = {control.name for control in interface.controls}
    missing = sorted(set(controls) - names)
    if missing:
        raise ConfigError(f"the labeling config lacks the controls {missing}")
    return interface


def attribute_task_data(item_id: str, image_url: str, class_label: str | None,
                        attributes: Sequence[tuple[str, str | None]]) -> dict[str, Any]:
    """Task data for one image: the attributes to judge, each with its current type."""
    return {
        "item_id": item_id, "unit": item_id, "image": image_url, "class_label": class_label or "(no class)",
        "verdict_tree": [{"value": name, "children": [{"value": v} for v in VERDICT_VALUES]} for name, _ in attributes],
        "type_tree": [{"value": name, "children": [{"value": t} for t in SPURIOUS_TYPES]} for name, _ in attributes],
        "attribute_types": {name: kind for name, kind in attributes},
    }


def prefill(attributes: Sequence[tuple[str, str | None, float]], threshold: float) -> list[dict[str, Any]]:
    """A prediction result from machine scores: at or above ``threshold`` "spurious", else "not
    present", with the proposed types."""
    verdicts = [[name, "spurious" if score >= threshold else "not present"] for name, _, score in attributes]
    types = [[name, kind] for name, kind, _ in attributes if kind]
    result = [{"from_name": "verdicts", "to_name": "image", "type": "taxonomy", "value": {"taxonomy": verdicts}}]
    if types:
        result.append({"from_name": "types", "to_name": "image", "type": "taxonomy", "value": {"taxonomy": types}})
    return result


BOX_VERDICTS = ("boxes correct", "boxes fixed", "cue not in image")


def box_task_data(item_id: str, image_url: str, class_label: str | None, attribute: str, size: tuple[int, int]
                  ) -> dict[str, Any]:
    """Task data for reviewing the boxes of one cue on one image."""
    return {"item_id": item_id, "unit": f"{item_id}|{attribute}", "image": image_url,
            "class_label": class_label or "(no class)", "attribute": attribute, "width": size[0], "height": size[1]}


def box_prefill(boxes: Sequence[Sequence[float]], size: tuple[int, int]) -> list[dict[str, Any]]:
    """Pre-filled rectangles (Label Studio's percent coordinates) from pixel boxes ``[x0, y0, x1, y1, ...]``."""
    width, height = size
    return [{"from_name": "boxes", "to_name": "image", "type": "rectanglelabels", "original_width": width,
             "original_height": height, "image_rotation": 0,
             "value": {"x": 100 * x0 / width, "y": 100 * y0 / height, "width": 100 * (x1 - x0) / width,
                       "height": 100 * (y1 - y0) / height, "rotation": 0, "rectanglelabels": ["cue"]}}
            for x0, y0, x1, y1, *_ in boxes]


def read_box_result(result: Sequence[dict[str, Any]], data: dict[str, Any]) -> tuple[str, list[list[float]]]:
    """(verdict, boxes in pixels) from one box review, checked against the config; raises ``ConfigError``."""
    width, height = float(data["width"]), float(data["height"])
    verdict, boxes = None, []
    for region in result:
        name, value = region.get("from_name"), region.get("value", {})
        if name == "box_verdict":
            chosen = value.get("choices", [])
            if len(chosen) != 1 or chosen[0] not in BOX_VERDICTS:
                raise ConfigError(f"box verdict {chosen!r} is not one of {BOX_VERDICTS}")
            verdict = chosen[0]
        elif name == "boxes":
            if value.get("rectanglelabels") != ["cue"]:
                raise ConfigError(f"rectangle labels {value.get('rectanglelabels')!r} are not ['cue']")
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
            if not (0 <= x <= 100 and 0 <= y <= 100 and 0 <= x + w <= 100.5 and 0 <= y + h <= 100.5):
                raise ConfigError(f"a rectangle lies outside the image: {value}")
            boxes.append([round(x * width / 100, 2), round(y * height / 100, 2), round((x + w) * width / 100, 2),
                          round((y + h) * height / 100, 2)])
        else:
            raise ConfigError(f"unknown control {name!r} in the annotation")
    if verdict is None:
        raise ConfigError("no box verdict was chosen")
    return verdict, boxes


def allowed_choices(config: str) -> dict[str, tuple[str, ...]]:
    """Every ``<Choices>`` control of a config with the values it allows, read from the XML itself.

    >>> allowed_choices(LOGO_REVIEW)
    {'is_logo': ('logo', 'not a logo')}
    """
    root = ElementTree.fromstring(config)
    return {node.get("name", ""): tuple(choice.get("value", "") for choice in node.iter("Choice"))
            for node in root.iter("Choices")}


def read_choices_result(result: Sequence[dict[str, Any]], config: str) -> dict[str, list[str]]:
    """control -> chosen values (or texts) of one annotation, each checked against ``config``;
    raises ``ConfigError`` for a value or control the config does not have."""
    allowed = allowed_choices(config)
    texts = {node.get("name", "") for node in ElementTree.fromstring(config).iter("TextArea")}
    read: dict[str, list[str]] = {}
    for region in result:
        name, value = region.get("from_name"), region.get("value", {})
        if name in allowed:
            chosen = [str(v) for v in value.get("choices", [])]
            wrong = [v for v in chosen if v not in allowed[name]]
            if wrong:
                raise ConfigError(f"{name}: {wrong} not among {allowed[name]}")
            read[name] = chosen
        elif name in texts:
            read[name] = [str(t).strip() for t in value.get("text", []) if str(t).strip()]
        else:
            raise ConfigError(f"unknown control {name!r} in the annotation")
    return read


def read_attribute_result(result: Sequence[dict[str, Any]], data: dict[str, Any]
                          ) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(attribute -> verdict, attribute -> type, missed attributes) from one annotation, checked
    against the task's own attributes and the allowed values; raises ``ConfigError``."""
    allowed = {node["value"] for node in data.get("verdict_tree", [])}
    verdicts: dict[str, str] = {}
    types: dict[str, str] = {}
    missed: list[str] = []
    for region in result:
        name, value = region.get("from_name"), region.get("value", {})
        if name in ("verdicts", "types"):
            for path in value.get("taxonomy", []):
                if len(path) != 2 or path[0] not in allowed:
                    raise ConfigError(f"{name}: {path!r} is not an attribute of this task")
                if name == "verdicts" and path[1] not in VERDICT_VALUES:
                    raise ConfigError(f"verdict {path[1]!r} for {path[0]!r} is not one of {VERDICT_VALUES}")
                if name == "types" and path[1] not in SPURIOUS_TYPES:
                    raise ConfigError(f"type {path[1]!r} for {path[0]!r} is not one of the nine types")
                (verdicts if name == "verdicts" else types)[path[0]] = path[1]
        elif name == "missed":
            missed += [line.strip().lower() for text in value.get("text", []) for line in str(text).splitlines()
                       if line.strip()]
        else:
            raise ConfigError(f"unknown control {name!r} in the annotation")
    return verdicts, types, missed
