"""A workspace view as a FiftyOne dataset, for browsing in the FiftyOne App.

``export_fiftyone`` writes FiftyOne's on-disk ``FiftyOneDataset`` layout (``metadata.json`` and
``samples.json``, samples pointing at the images where they are) without needing FiftyOne;
``fo.Dataset.from_dir(out, dataset_type=fo.types.FiftyOneDataset)`` reads it, and
``load_fiftyone`` does that for you when FiftyOne is installed (``pip install 'curate[fiftyone]'``).

Each sample carries: ``item_id``; ``ground_truth`` (the class label, a ``Classification``);
``metadata`` (width, height, size, MIME type); per proposer, ``<proposer>_cues`` (attribute scores
as ``Classifications``) and, where it drew boxes, ``<proposer>_boxes`` (``Detections`` in relative
``[x, y, width, height]`` of the displayed image); ``verdicts`` (one ``Classification`` per
decided attribute, ``label`` = the attribute, ``verdict`` = the decision); and, when a release is
named, ``split`` and the split as a tag.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.folders import replaced
from curate.progress import progress_bar
from curate.records import Evidence, Item, Verdict
from curate.verdicts import resolved_verdicts
from curate.workspace import Workspace
from curate.workspace.evidence import evidence_records

JsonDict = dict[str, Any]
_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
         "BMP": "image/bmp", "TIFF": "image/tiff"}
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height on display
_FIELD = re.compile(r"[^0-9A-Za-z_]+")


class ExportError(ValueError):
    """An export cannot be made (FiftyOne missing where a dataset is asked for)."""


@dataclass(frozen=True, slots=True)
class FiftyOneExport:
    """What ``export_fiftyone`` wrote: the folder and how many samples."""

    path: Path
    samples: int

    def summary(self) -> str:
        """One line for the end of a command."""
        return f"exported {self.samples} samples to {self.path} (FiftyOne: fo.Dataset.from_dir(..., " \
               "dataset_type=fo.types.FiftyOneDataset))"


def field_name(proposer: str, suffix: str) -> str:
    """A FiftyOne field name for a proposer's labels (letters, digits and ``_`` only).

    >>> field_name("clip+detector", "boxes")
    'clip_detector_boxes'
    """
    return f"{_FIELD.sub('_', proposer).strip('_')}_{suffix}"


def export_fiftyone(workspace: Workspace, out: str | Path, *, label: str | None = None,
                    release: str | Path | None = None, rounds: str | None = None) -> FiftyOneExport:
    """Write the workspace's items (of class ``label``, or those of ``release`` with their splits) with
    their evidence and verdicts as a FiftyOne dataset folder. Samples are written one at a time.

    >>> import tempfile
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> export_fiftyone(ws, Path(tempfile.mkdtemp()) / "fo").samples
    0
    """
    out = Path(out)
    splits = _release_splits(Path(release)) if release is not None else None
    decided = _verdicts_by_item(workspace, rounds)
    count = 0
    with replaced(out) as folder:
        (folder / "metadata.json").write_text(json.dumps(
            {"name": out.name, "media_type": "image",
             "info": {"curate_workspace": str(workspace.root), "release": None if release is None else str(release)}},
            indent=1))
        total = workspace.status().per_class.get(label, 0) if label is not None else workspace.status().items
        with (folder / "samples.json").open("w") as handle, progress_bar("export to FiftyOne", total) as advance:
            handle.write('{"samples": [')
            for items in _batches(workspace.catalog.items(label=label), EVIDENCE_BATCH):
                wanted = [item for item in items if splits is None or item.item_id in splits]
                evidence = _evidence_by_item(workspace, [item.item_id for item in wanted])
                for item in wanted:
                    sample = _sample(workspace, item, evidence.get(item.item_id, []), decided.get(item.item_id, []),
                                     None if splits is None else splits[item.item_id])
                    handle.write(("\n" if count == 0 else ",\n") + json.dumps(sample))
                    count += 1
                advance(len(items))
            handle.write("\n]}\n")
    return FiftyOneExport(out, count)


def load_fiftyone(path: str | Path, name: str | None = None, persistent: bool = False) -> Any:
    """Load a folder written by ``export_fiftyone`` into a ``fo.Dataset`` (needs ``curate[fiftyone]``;
    typed ``Any`` so that curate type-checks without FiftyOne)."""
    try:
        fo = importlib.import_module("fiftyone")  # the optional extra: curate type-checks without it
    except ImportError as error:
        raise ExportError("FiftyOne is not installed: pip install 'curate[fiftyone]' (or open the exported "
                           "folder with fo.Dataset.from_dir where it is)") from error
    dataset = fo.Dataset.from_dir(dataset_dir=str(path), dataset_type=fo.types.FiftyOneDataset, name=name)
    dataset.persistent = persistent
    return dataset


EVIDENCE_BATCH = 1000
"""Items whose evidence one scan reads (one scan per item was a full read of the evidence each)."""


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _evidence_by_item(workspace: Workspace, item_ids: list[str]) -> dict[str, list[Evidence]]:
    """The evidence of ``item_ids``, per item, in one scan."""
    frame = (workspace.catalog.evidence_scan().filter(pl.col("item_id").is_in(pl.Series(item_ids, dtype=pl.String)
                                                                              .implode()))
             .sort(["item_id", "attribute", "source", "run_id"]).collect())
    found: dict[str, list[Evidence]] = {}
    for row in evidence_records(frame):
        found.setdefault(row.item_id, []).append(row)
    return found


def _release_splits(path: Path) -> dict[str, str]:
    from curate.publish.folder import load_release

    _, tables = load_release(path)
    splits: dict[str, str] = {}
    for name, table in tables.items():
        for item_id in table.select("item_id").collect().get_column("item_id").drop_nulls():
            splits.setdefault(item_id, name)
    return splits


def _verdicts_by_item(workspace: Workspace, rounds: str | None) -> dict[str, list[Verdict]]:
    by_item: dict[str, list[Verdict]] = defaultdict(list)
    for verdict in resolved_verdicts(workspace, rounds):
        by_item[verdict.item_id].append(verdict)
    return by_item


def _sample(workspace: Workspace, item: Item, evidence: list[Evidence], verdicts: list[Verdict],
            split: str | None) -> JsonDict:
    width, height = (item.height, item.width) if item.orientation in _TRANSPOSED else (item.width, item.height)
    sample: JsonDict = {
        "filepath": str(workspace.resolve_uri(item.uri).absolute()),
        "tags": [] if split is None else [split],
        "metadata": {"_cls": "ImageMetadata", "width": width, "height": height, "size_bytes": item.size_bytes,
                     "mime_type": _MIME.get(item.format or "", "image/" + (item.format or "unknown").lower()),
                     "num_channels": None},
        "item_id": item.item_id,
        "ground_truth": None if item.label is None else {"_cls": "Classification", "label": item.label},
    }
    if split is not None:
        sample["split"] = split
    for proposer, rows in _by_proposer(evidence):
        sample[field_name(proposer, "cues")] = {"_cls": "Classifications", "classifications": [
            {"_cls": "Classification", "label": row.attribute, "confidence": row.score, "role": str(row.role),
             "taxonomy_type": row.taxonomy_type, "run_id": row.run_id} for row in rows]}
        boxes = [_detection(row.attribute, box, width, height) for row in rows for box in row.boxes]
        if boxes:
            sample[field_name(proposer, "boxes")] = {"_cls": "Detections", "detections": boxes}
    if verdicts:
        sample["verdicts"] = {"_cls": "Classifications", "classifications": [
            {"_cls": "Classification", "label": v.attribute, "verdict": v.value, "round": v.round}
            for v in sorted(verdicts, key=lambda v: v.attribute)]}
    return sample


def _by_proposer(evidence: list[Evidence]) -> Iterator[tuple[str, list[Evidence]]]:
    grouped: dict[str, list[Evidence]] = defaultdict(list)
    for row in evidence:
        grouped[row.source].append(row)
    yield from sorted(grouped.items())


def _detection(attribute: str, box: list[float], width: int, height: int) -> JsonDict:
    """Pixel ``[x0, y0, x1, y1, confidence]`` -> FiftyOne's relative ``[x, y, width, height]``."""
    x0, y0, x1, y1 = box[:4]
    return {"_cls": "Detection", "label": attribute,
            "bounding_box": [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
            "confidence": box[4] if len(box) > 4 else None}
