"""The record types that travel between the stops of the road.

Each stage reads the records of the stage before it and writes its own:
``Item`` (ingest) -> ``Evidence`` (propose; class-level ``Cue`` rows inside it) -> ``Verdict``
(verify) -> release rows (build).
``Run`` records every stage run; ``SourceRef`` and ``Quarantined`` are what ingest leaves
beside the items.

>>> item = Item(item_id="ab" * 32, uri="/data/cat/1.png", label="cat", width=4, height=3,
...             mode="RGB", format="PNG", size_bytes=120)
>>> item.display_size
(4, 3)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JsonDict = dict[str, Any]

# EXIF orientations 5-8 rotate the image by 90 or 270 degrees: width and height swap on display.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True, slots=True)
class Item:
    """One image, identified by the sha256 of its bytes.

    ``uri`` is where the bytes live: an absolute path, or ``blob:<relative path>`` inside the
    workspace for bytes that had no stable file (Hugging Face datasets, URLs, ``copy=True``).
    ``width`` and ``height`` are as stored in the file; ``display_size`` honours EXIF orientation.
    """

    item_id: str
    uri: str
    label: str | None
    width: int
    height: int
    mode: str
    format: str
    size_bytes: int
    orientation: int = 1
    n_frames: int = 1
    license: str | None = None
    metadata: JsonDict = field(default_factory=dict)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after the EXIF orientation is applied."""
        if self.orientation in _TRANSPOSING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where one item was found: a source and a locator inside it (path, row, URL).

    The same bytes found in two places are one ``Item`` with two ``SourceRef`` rows.
    ``fingerprint`` changes when the entry may have changed (file size and mtime, row hash).
    """

    source_id: str
    locator: str
    item_id: str
    fingerprint: str = ""
    label: str | None = None
    split: str | None = None
    metadata: JsonDict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An entry of a source that did not become an item, and why.

    ``reason`` is a short code (see ``curate.images.REJECTION_REASONS``); ``detail`` the full message.
    """

    source_id: str
    locator: str
    reason: str
    detail: str
    fingerprint: str = ""
    label: str | None = None
    split: str | None = None
    metadata: JsonDict = field(default_factory=dict)


class EvidenceRole(StrEnum):
    """What a proposer claims an attribute is for the item's class."""

    CORE = "core"
    SPURIOUS = "spurious"
    CANDIDATE = "candidate"


NEGATIVE_OF = "negative_of"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One machine claim about an item: an attribute, its role, type, score and boxes.

    Keyed by (``item_id``, ``attribute``, ``source``, ``run_id``); ``source`` names the proposer.
    Boxes are ``[x0, y0, x1, y1, confidence]`` in pixels of the displayed image. A row scored only
    as a negative, for a cue of another class than the item's, names that class in
    ``extra[NEGATIVE_OF]``.
    """

    item_id: str
    attribute: str
    source: str
    run_id: str
    role: EvidenceRole = EvidenceRole.CANDIDATE
    taxonomy_type: str | None = None
    score: float | None = None
    boxes: list[list[float]] = field(default_factory=list)
    model: str | None = None
    model_version: str | None = None
    extra: JsonDict = field(default_factory=dict)


class SettingKind(StrEnum):
    """Which part of an image's setting (FOCUS) a value describes."""

    TIME = "time"
    WEATHER = "weather"
    LOCATION = "location"


SETTING = "setting"


@dataclass(frozen=True, slots=True)
class Setting:
    """One value of an image's setting (FOCUS): time, weather or a location. Evidence about it
    carries the pair in ``extra[SETTING]``; its ``attribute`` (``time:night``) only names the row.

    >>> row = Setting(SettingKind.TIME, "night").evidence("ab" * 32, "focus-settings", "propose-1", 0.8)
    >>> row.attribute, Setting.of(row)
    ('time:night', Setting(kind=<SettingKind.TIME: 'time'>, value='night'))
    """

    kind: SettingKind
    value: str

    def evidence(self, item_id: str, source: str, run_id: str, score: float, model: str | None = None,
                 model_version: str | None = None) -> Evidence:
        """A machine claim that ``item_id`` has this setting, with confidence ``score``."""
        return Evidence(item_id, f"{self.kind}:{self.value}", source, run_id, EvidenceRole.CANDIDATE,
                        "Background" if self.kind is SettingKind.LOCATION else None, score, [], model, model_version,
                        {SETTING: {"kind": str(self.kind), "value": self.value}})

    @classmethod
    def of(cls, evidence: Evidence) -> Setting | None:
        """The setting ``evidence`` is about, or None when it is about something else (see ``parse``)."""
        return cls.parse(evidence.attribute, evidence.extra)

    @classmethod
    def parse(cls, attribute: str, extra: JsonDict) -> Setting | None:
        """``of`` for a row's ``attribute`` and ``extra`` alone (readers that scan evidence in polars).
        Rows stored before settings were typed carry only the ``kind:value`` attribute, read here and
        nowhere else."""
        stored = extra.get(SETTING)
        if stored is not None:
            return cls(SettingKind(stored["kind"]), stored["value"])
        kind, colon, value = attribute.partition(":")
        return cls(SettingKind(kind), value) if colon and kind in SettingKind.__members__.values() else None


@dataclass(frozen=True, slots=True)
class Cue:
    """A candidate attribute for a whole class (from an LLM or the built-in priors), before any
    image is scored. Image-level proposers (detector, CLIP) turn cues into ``Evidence``.

    Keyed by (``class_label``, ``attribute``, ``source``, ``run_id``).
    """

    class_label: str
    attribute: str
    source: str
    run_id: str
    taxonomy_type: str | None = None
    role: EvidenceRole = EvidenceRole.CANDIDATE
    extra: JsonDict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A human (or adjudicated) decision on an attribute of an item.

    Keyed by (``item_id``, ``attribute``, ``annotator``, ``round``). Only verdicts make
    anything "verified"; machine evidence never does.
    """

    item_id: str
    attribute: str
    annotator: str
    round: str
    value: str
    taxonomy_type: str | None = None
    extra: JsonDict = field(default_factory=dict)


class Stage(StrEnum):
    """The stages a run can belong to, in road order; the one place their names are defined.

    >>> Stage.GAP == "gap"
    True
    """

    INGEST = "ingest"
    PROPOSE = "propose"
    ANALYZE = "analyze"
    GAP = "gap"
    VERIFY = "verify"
    BUILD = "build"
    PUBLISH = "publish"
    EVALUATE = "evaluate"


class RunStatus(StrEnum):
    """Life cycle of a stage run. ``interrupted`` runs are resumed by the next identical run;
    ``completed_with_failures`` ones (some requests failed; ``error`` says how many) too, and the
    resumed run retries what failed."""

    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Run:
    """A stored stage run: what was asked (config), with which code and models, and what it did."""

    run_id: str
    stage: str
    name: str
    config: JsonDict
    fingerprint: str
    code_version: str
    status: RunStatus
    started_at: str
    updated_at: str
    finished_at: str | None = None
    models: JsonDict = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    pid: int | None = None
    host: str | None = None
    attempts: int = 1
    error: str | None = None
