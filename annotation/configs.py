"""Labeling configs for verification tasks, checked with Label Studio's ``LabelInterface``.

``CONFIGS`` holds one per kind of review: attribute verification, box review of detector evidence
(pre-filled rectangles), MCQ items, FOCUS-style settings and logos.

Attribute verification shows up to ``ATTRIBUTE_SLOTS`` attributes per image, each on a row of its
own: the attribute's name and proposed type, then one-click choices whose options come from the task
data (dynamic ``Choices``), so unused rows show nothing; the type picker's nine values are fixed in
the config (it opens only once a row is answered "spurious"), so tasks do not carry them. Control names
(``verdict_<i>``, ``type_<i>``) differ from the task data keys (``attr_<i>_...``), so exports never
overwrite data values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

from label_studio_sdk.label_interface import LabelInterface

from curate.taxonomy import SPURIOUS_TYPES
from curate.verdicts import ATTRIBUTE_CHOICES, VerdictValue


def beside_image(controls: str) -> str:
    """A labeling config with the image on the left and ``controls`` beside it, so every question
    is in view with the picture (a full-width image pushes them below the fold)."""
    return f"""<View>
  <View style="display: flex; gap: 24px; align-items: flex-start">
    <View style="flex: 0 0 55%">
      <Image name="image" value="$image" zoom="true"/>
    </View>
    <View style="flex: 1 1 auto">
{controls}
    </View>
  </View>
</View>"""


ATTRIBUTE_SLOTS = 12
"""Attributes one task can show (a round's ``max_attributes`` is at most this)."""


_TYPE_CHOICES = "\n".join(f'        <Choice value="{kind}"/>' for kind in SPURIOUS_TYPES)


def _attribute_slot(index: int) -> str:
    return f"""      <Header value="$attr_{index}_title" size="5"/>
      <Choices name="verdict_{index}" toName="image" value="$attr_{index}_options" choice="single-radio"
               showInline="true"/>
      <Choices name="type_{index}" toName="image" choice="single" layout="select"
               visibleWhen="choice-selected" whenTagName="verdict_{index}" whenChoiceValue="spurious">
{_TYPE_CHOICES}
      </Choices>"""


ATTRIBUTE_VERIFICATION = beside_image(f"""      <Header value="Class: $class_label"/>
      <Text name="instructions" value="$instructions"/>
{chr(10).join(_attribute_slot(i) for i in range(ATTRIBUTE_SLOTS))}
      <Header value="Attributes the proposers missed (one per line)" size="6"/>
      <TextArea name="missed" toName="image" editable="true" maxSubmissions="1" rows="2"/>
      <Header value="Anything wrong with the image or the task? (your reason, if you reject something)" size="6"/>
      <TextArea name="comment" toName="image" editable="true" maxSubmissions="1" rows="2"/>""")
"""One task per image: every attribute on a row of its own, its name and proposed type above one-click
choices (core / spurious / not present / unsure); a spurious attribute shows a type picker, pre-set to
the proposed type. Unused rows have no choices and show nothing."""

ATTRIBUTE_INSTRUCTIONS = ("For each attribute: is it a core feature of the class, a spurious one (in the image, "
                          "but not what makes it this class), or not in the image? Pre-filled answers are a "
                          "machine's guesses: check each one.")


BOX_REVIEW = beside_image("""      <Header value="Fix the boxes of: $attribute (class $class_label)."/>
      <Header value="Delete wrong boxes, draw missed ones." size="6"/>
      <RectangleLabels name="boxes" toName="image">
        <Label value="cue"/>
      </RectangleLabels>
      <Choices name="box_verdict" toName="image" choice="single-radio" showInline="true">
        <Choice value="boxes correct"/>
        <Choice value="boxes fixed"/>
        <Choice value="cue not in image"/>
      </Choices>""")

MCQ_REVIEW = beside_image("""      <Header value="$question"/>
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
      <TextArea name="comment" toName="image" placeholder="What is wrong?" maxSubmissions="1"/>""")

SETTING_REVIEW = beside_image("""      <Header value="Class: $class_label. Check the setting of the image."/>
      <Header value="Time of day" size="6"/>
      <Choices name="time" toName="image" choice="single-radio" showInline="true">
        <Choice value="day"/><Choice value="night"/><Choice value="none"/>
      </Choices>
      <Header value="Weather" size="6"/>
      <Choices name="weather" toName="image" choice="single-radio" showInline="true">
        <Choice value="cloudy"/><Choice value="foggy"/><Choice value="partly cloudy"/><Choice value="raining"/>
        <Choice value="snowing"/><Choice value="sunny"/><Choice value="none"/>
      </Choices>
      <Header value="Locations (all that apply)" size="6"/>
      <Choices name="locations" toName="image" choice="multiple" showInline="true">
        <Choice value="forest"/><Choice value="grass"/><Choice value="indoors"/><Choice value="rocks"/>
        <Choice value="sand"/><Choice value="street"/><Choice value="snow"/><Choice value="water"/>
        <Choice value="none"/>
      </Choices>""")

LOGO_REVIEW = beside_image("""      <Header value="Is this picture a logo? If so, which brand?" size="6"/>
      <Choices name="is_logo" toName="image" choice="single-radio" showInline="true">
        <Choice value="logo"/>
        <Choice value="not a logo"/>
      </Choices>
      <TextArea name="brand" toName="image" placeholder="Which brand?" maxSubmissions="1"/>""")

SPURIOUS_ONLY_REVIEW = beside_image("""      <Header value="Is there $cue in the image?"/>
      <Choices name="cue_present" toName="image" choice="single-radio" showInline="true">
        <Choice value="yes"/><Choice value="no"/><Choice value="unsure"/>
      </Choices>
      <Header value="Is there a $class_label (the object itself, any part of it)?"/>
      <Choices name="object_present" toName="image" choice="single-radio" showInline="true">
        <Choice value="yes"/><Choice value="no"/><Choice value="unsure"/>
      </Choices>
      <TextArea name="comment" toName="image" placeholder="Anything wrong with the image?" maxSubmissions="1"/>""")
"""Spurious ImageNet's two questions per candidate image of a (class, cue) pair; the image is kept when
the cue is there and the class object is not."""

COMPONENT_VERDICTS = ("spurious", "not spurious", "inconsistent")
COMPONENT_REVIEW = f"""<View>
  <Header value="Class: $class_label. These images raise one component of the classifier's logit for the class most."/>
  <Header value="Is what they share spurious for the class (there, but not what makes it a $class_label)?" size="5"/>
  <Choices name="component_verdict" toName="image" choice="single-radio" showInline="true">
{chr(10).join(f'    <Choice value="{v}"/>' for v in COMPONENT_VERDICTS)}
  </Choices>
  <Choices name="type" toName="image" choice="single" layout="select" visibleWhen="choice-selected"
           whenTagName="component_verdict" whenChoiceValue="spurious">
{chr(10).join(f'    <Choice value="{t}"/>' for t in SPURIOUS_TYPES)}
  </Choices>
  <TextArea name="name" toName="image" placeholder="Name what they share (water, leash ...)" maxSubmissions="1"/>
  <TextArea name="comment" toName="image" placeholder="Anything wrong?" maxSubmissions="1"/>
  <Image name="image" valueList="$images"/>
</View>"""
"""A component of a class's neural PCA (Spurious ImageNet): its top images, judged spurious, not
spurious or inconsistent (the images share nothing one can name), with the type and a name."""

# kind -> (config, the controls pull reads back)
CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "attributes": (ATTRIBUTE_VERIFICATION, ("verdict_0", "type_0", "missed", "comment")),
    "boxes": (BOX_REVIEW, ("boxes", "box_verdict")),
    "mcq": (MCQ_REVIEW, ("answer_right", "ambiguous", "comment")),
    "setting": (SETTING_REVIEW, ("time", "weather", "locations")),
    "logo": (LOGO_REVIEW, ("is_logo", "brand")),
    "spurious-only": (SPURIOUS_ONLY_REVIEW, ("cue_present", "object_present")),
    "component": (COMPONENT_REVIEW, ("component_verdict", "type", "name")),
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


@dataclass(frozen=True, slots=True)
class AttributeRow:
    """One attribute of an attribute task: its name, proposed type, and a note shown beside it
    (the votes so far in an adjudication)."""

    name: str
    taxonomy_type: str | None = None
    note: str = ""

    @property
    def title(self) -> str:
        shown = self.name + (f"  ({self.taxonomy_type})" if self.taxonomy_type else "")
        return shown + (f"  -  {self.note}" if self.note else "")


def attribute_task_data(item_id: str, image_url: str, class_label: str | None, rows: Sequence[AttributeRow],
                        instructions: str = ATTRIBUTE_INSTRUCTIONS) -> dict[str, Any]:
    """Task data for one image: one slot per attribute, unused slots empty.

    >>> data = attribute_task_data("i1", "/x.png", "dog", [AttributeRow("leash", "Co-occurring Objects")])
    >>> data["attr_0_title"], [o["value"] for o in data["attr_0_options"]], data["attr_1_options"]
    ('leash  (Co-occurring Objects)', ['core', 'spurious', 'not present', 'unsure'], [])
    >>> sorted(key for key in data if key.startswith("attr_0_"))  # the nine types live in the config
    ['attr_0_name', 'attr_0_options', 'attr_0_title']
    """
    if len(rows) > ATTRIBUTE_SLOTS:
        raise ConfigError(f"a task shows at most {ATTRIBUTE_SLOTS} attributes, got {len(rows)}")
    if len({row.name for row in rows}) != len(rows):
        raise ConfigError(f"an attribute appears twice in one task: {[row.name for row in rows]}")
    data: dict[str, Any] = {"item_id": item_id, "unit": item_id, "image": image_url,
                            "class_label": class_label or "(no class)", "instructions": instructions,
                            "attribute_types": {row.name: row.taxonomy_type for row in rows}}
    for index in range(ATTRIBUTE_SLOTS):
        row = rows[index] if index < len(rows) else None
        data[f"attr_{index}_name"] = row.name if row else ""
        data[f"attr_{index}_title"] = row.title if row else ""
        data[f"attr_{index}_options"] = [{"value": v} for v in ATTRIBUTE_CHOICES] if row else []
    return data


def _choice(control: str, value: str) -> dict[str, Any]:
    return {"from_name": control, "to_name": "image", "type": "choices", "value": {"choices": [str(value)]}}


def attribute_answers(rows: Sequence[AttributeRow], verdicts: Sequence[str]) -> list[dict[str, Any]]:
    """A result that answers each row with ``verdicts[i]`` (and its proposed type when spurious):
    what a pre-fill, a gold trap or a simulated annotator sends."""
    result = []
    for index, (row, verdict) in enumerate(zip(rows, verdicts, strict=True)):
        result.append(_choice(f"verdict_{index}", verdict))
        if verdict == VerdictValue.SPURIOUS and row.taxonomy_type in SPURIOUS_TYPES:
            result.append(_choice(f"type_{index}", row.taxonomy_type))
    return result


def prefill(rows: Sequence[AttributeRow], scores: Sequence[float], core: Sequence[bool], threshold: float
            ) -> list[dict[str, Any]]:
    """A prediction result from machine scores: at or above ``threshold`` "core" for a proposed core
    attribute and "spurious" for the others, below it "not present"; with the proposed types."""
    present = [VerdictValue.CORE if is_core else VerdictValue.SPURIOUS for is_core in core]
    return attribute_answers(rows, [value if score >= threshold else VerdictValue.NOT_PRESENT
                                    for value, score in zip(present, scores, strict=True)])


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
                          ) -> tuple[dict[str, str], dict[str, str], list[str], str]:
    """(attribute -> verdict, attribute -> corrected type, missed attributes, comment) from one
    annotation, checked against the task's own slots and the allowed values; two answers for one
    attribute, an answer in an empty slot or an unknown control raise ``ConfigError``."""
    verdicts: dict[str, str] = {}
    types: dict[str, str] = {}
    missed: list[str] = []
    comment = ""
    for region in result:
        control, value = str(region.get("from_name")), region.get("value", {})
        kind, _, slot = control.partition("_")
        if kind in ("verdict", "type") and slot.isdigit() and int(slot) < ATTRIBUTE_SLOTS:
            attribute = data.get(f"attr_{slot}_name", "")
            chosen = [str(v) for v in value.get("choices", [])]
            allowed = ATTRIBUTE_CHOICES if kind == "verdict" else SPURIOUS_TYPES
            target = verdicts if kind == "verdict" else types
            if not attribute:
                raise ConfigError(f"{control}: an answer for an empty row")
            if len(chosen) != 1 or attribute in target:
                answers = chosen + ([target[attribute]] if attribute in target else [])
                raise ConfigError(f"{attribute!r} has {len(answers)} answers ({', '.join(answers) or 'none'}); "
                                  "one is expected")
            if chosen[0] not in allowed:
                raise ConfigError(f"{kind} {chosen[0]!r} for {attribute!r} is not one of: {', '.join(allowed)}")
            target[attribute] = chosen[0]
        elif control == "missed":
            missed += [line.strip().lower() for text in value.get("text", []) for line in str(text).splitlines()
                       if line.strip()]
        elif control == "comment":
            comment = " ".join(str(t).strip() for t in value.get("text", []) if str(t).strip())
        else:
            raise ConfigError(f"unknown control {control!r} in the annotation")
    types = {name: kind for name, kind in types.items() if verdicts.get(name) == VerdictValue.SPURIOUS}
    return verdicts, types, missed, comment
