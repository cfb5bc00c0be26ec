"""Croissant JSON-LD metadata for a published folder, built and validated with ``mlcroissant``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets


class CroissantError(ValueError):
    """The generated metadata does not validate."""


def _data_type(feature: Any) -> tuple[Any, bool] | None:
    """(Croissant data type, repeated) of a ``datasets`` feature; None for what is left out."""
    import mlcroissant as mlc

    if isinstance(feature, datasets.Image):
        return mlc.DataType.IMAGE_OBJECT, False
    if isinstance(feature, datasets.ClassLabel):
        return mlc.DataType.INT64, False
    if isinstance(feature, datasets.List):
        inner = _data_type(feature.feature)
        return (inner[0], True) if inner and not inner[1] else None
    if isinstance(feature, datasets.Value):
        kinds = {"string": mlc.DataType.TEXT, "int64": mlc.DataType.INT64, "float64": mlc.DataType.FLOAT64,
                 "bool": mlc.DataType.BOOL}
        return kinds.get(feature.dtype, mlc.DataType.TEXT), False
    return None


def croissant(name: str, description: str, license: str, url: str | None, version: str,
              configs: dict[str, tuple[datasets.Features, list[str]]]) -> dict[str, Any]:
    """Croissant metadata: one FileSet and one RecordSet per config (``configs`` maps a config to its
    features and splits). With a Hub ``url`` the files are in that repository (as the Hub writes it);
    without, beside the metadata file (a folder: ``mlcroissant`` reads its records from there).
    Raises ``CroissantError`` when ``mlcroissant`` reports errors."""
    import mlcroissant as mlc

    distribution: list[Any] = [mlc.FileObject(id="repo", name="repo", content_url=url, encoding_formats=["git+https"],
                                              sha256="https://github.com/mlcommons/croissant/issues/80")] if url else []
    record_sets = []
    for config, (features, splits) in configs.items():
        set_id = f"parquet-{config}"
        distribution.append(mlc.FileSet(id=set_id, name=set_id, contained_in=["repo"] if url else None,
                                        encoding_formats=["application/x-parquet"],
                                        includes=[f"data/{config}/{split}-*.parquet" for split in splits]))
        fields = []
        for column, feature in features.items():
            found = _data_type(feature)
            if found is None:
                continue
            kind, repeated = found
            extract = mlc.Extract(column=column)
            transforms = [mlc.Transform(json_path="bytes")] if isinstance(feature, datasets.Image) else []
            fields.append(mlc.Field(id=f"{config}/{column}", name=column, data_types=[kind], repeated=repeated or None,
                                    source=mlc.Source(file_set=set_id, extract=extract, transforms=transforms)))
        record_sets.append(mlc.RecordSet(id=config, name=config, fields=fields))
    metadata = mlc.Metadata(name=name, description=description, license=[license], url=url, version=version,
                            cite_as=f"{name}, built with curate (see the dataset card)",
                            distribution=distribution, record_sets=record_sets)
    report = metadata.issues.report() if metadata.issues.errors else ""
    if metadata.issues.errors:
        raise CroissantError(f"Croissant metadata does not validate: {report}")
    return json.loads(json.dumps(metadata.to_json(), default=str))


def validate(path: Path) -> None:
    """Load a Croissant file with ``mlcroissant`` (offline); raises ``CroissantError`` on errors."""
    import mlcroissant as mlc

    try:
        dataset = mlc.Dataset(jsonld=str(path))
    except Exception as error:  # mlcroissant raises its own ValidationError and others
        raise CroissantError(f"{path} does not validate: {error}") from error
    if dataset.metadata.issues.errors:
        raise CroissantError(f"{path} does not validate: {dataset.metadata.issues.report()}")
