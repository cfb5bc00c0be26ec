"""Publish: a release folder becomes a dataset in Hub layout with a dataset card.

``publish(workspace, release, "folder:PATH")`` writes parquet shards per config and split (images
embedded), README.md (YAML front matter + a card rendered from ``dataset_cards/``) and records a
``publish`` run. Cards are checked: no local path, token or key may appear in them. The tables are
those ``release.json`` counts; the new version is written beside the old and switched in whole
(``curate.folders.replaced``), so a killed publish leaves the previous version loadable.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import polars as pl
import yaml
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from curate.agreement import krippendorff_alpha, round_ratings
from curate.folders import replaced
from curate.publish import hub
from curate.publish.croissant import croissant
from curate.publish.croissant import validate as validate_croissant
from curate.publish.folder import (
    configs_of,
    features_for,
    file_digest,
    load_release,
    row_count,
    size_category,
    write_table,
)
from curate.records import Run
from curate.spill import item_chunks
from curate.verdicts import SIMULATED_KEY
from curate.workspace import Workspace, code_version

# builder -> (``curate evaluate`` kind, the prediction column it reads and what lies beside it)
EVALUATION = {
    "groups": ("groups", "`pred` (the predicted class index) beside `y`, `a` and `split` (the `test` rows are "
                         "scored; `--set eval_split=val` scores the validation rows)"),
    "mmspubench": ("mcq", "`prediction` (the letter chosen) beside `answer` and `spurious_correlation_type` "
                          "(as type names: `features['spurious_correlation_type'].feature.int2str`)"),
    "focus": ("focus", "`correct` (true when the model named the `category`) beside `n_uncommon`"),
    "context-shift": ("few-shot", "`pred` (the predicted `way`) on the query rows of the `episodes` table (support "
                                  "rows need none)"),
    "spurious-only": ("spurious-imagenet", "`score` (the predicted probability of `class_label`) beside `kind`, "
                                           "plus your own class test images as rows with `kind` \"real\""),
}
EVALUATED_SPLIT = {"groups": "test"}  # builder -> the split ``curate evaluate`` scores unless told another
_SECRET = re.compile(r"(sk-[A-Za-z0-9]{8,}|hf_[A-Za-z0-9]{8,}|Token [A-Za-z0-9]{20,})")


class PublishError(ValueError):
    """A release cannot be published as asked."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What was written (path -> sha256) and the stored run."""

    target: str
    files: dict[str, str]
    run: Run
    seconds: float
    changed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the end of a command."""
        return (f"publish to {self.target}: {len(self.files)} files, {len(self.changed)} changed "
                f"in {self.seconds:.1f}s [run {self.run.run_id}]")


def _scrub(value: Any) -> Any:
    """Options for the card without local paths (a path keeps only its file name)."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:\\", value)):
        return Path(value).name
    return value


def _random_weights(models: dict[str, Any]) -> bool:
    """Whether a run's models had random weights (versions ``random`` or ``<arch>@random``)."""
    return any(str(version).rpartition("@")[2] == "random" for version in models.values())


def _version(version: Any) -> str:
    """A model version as the card shows it: ``ViT-B-32@random`` reads ``ViT-B-32 (weights: random)``.

    >>> _version("ViT-B-32@random"), _version("v8s")
    ('ViT-B-32 (weights: random)', 'v8s')
    """
    name, _, weights = str(version).rpartition("@")
    return f"{name} (weights: {weights})" if name else weights


def _provenance(workspace: Workspace, manifest: dict[str, Any], item_ids: set[str]) -> dict[str, Any]:
    """What fed this release (recorded by the build in ``fed_by``): its proposal runs, with models
    and whether their weights were random, and its rounds with agreement figures; annotators only
    by pseudonym (``Workspace.pseudonym``)."""
    fed = manifest.get("fed_by") or {}
    proposals = []
    for run in (workspace.runs.get(run_id) for run_id in fed.get("proposal_runs", [])):
        proposals.append({"run_id": run.run_id, "proposer": run.config.get("proposer"),
                          "models": ", ".join(f"{k}: {_version(v)}" for k, v in run.models.items()) or "-",
                          "random_weights": _random_weights(run.models)})
    figures_table = workspace.tables.read("round-figures") if "round-figures" in workspace.tables.names() else None
    attributes = fed.get("attributes", [])
    rounds = []
    for name in fed.get("rounds", []):
        verdicts = [v for v in workspace.catalog.verdicts(name) if v.item_id in item_ids]
        figures: dict[str, float] = {}
        if figures_table is not None:
            mine = figures_table.filter(figures_table["round"] == name)
            figures = json.loads(mine["figures"][-1]) if mine.height else {}
        gold = {workspace.pseudonym(k.split(":", 1)[1]): round(v, 3) for k, v in figures.items()
                if k.startswith("gold_accuracy:")}  # the round's: gold tasks are not the release's images
        ratings, _ = round_ratings(verdicts)  # agreement on the release's images alone, not the round's
        rounds.append({"name": name, "annotators": len({v.annotator for v in verdicts}), "verdicts": len(verdicts),
                       "simulated": sum(bool(v.extra.get(SIMULATED_KEY)) for v in verdicts),
                       "images": len({v.item_id for v in verdicts}),
                       "alpha": _figure(krippendorff_alpha(ratings)),
                       "attribute_alpha": ", ".join(
                           f"{a}: {_figure(krippendorff_alpha({u: r for u, r in ratings.items() if u[1] == a}))}"
                           for a in attributes) or "-",
                       "gold": ", ".join(f"{k}: {v}" for k, v in sorted(gold.items())) or "-"})
    return {"proposals": proposals, "rounds": rounds, "attributes": attributes, "recorded": "fed_by" in manifest,
            "random_weights": sorted({p["models"] for p in proposals if p["random_weights"]})}


def _column(tables: dict[str, pl.LazyFrame], column: str) -> pl.LazyFrame:
    """One column of every table that has it, stacked (a lazy frame: nothing is read yet)."""
    named = [table.select(pl.col(column).cast(pl.String)) for table in tables.values()
             if column in table.collect_schema()]
    return pl.concat(named) if named else pl.LazyFrame(schema={column: pl.String})


def _item_licences(workspace: Workspace, tables: dict[str, pl.LazyFrame], default: str | None) -> Counter[str]:
    """The workspace's items whose uri the release names, counted by licence (their own, else
    ``default``), in item order; a batch of items at a time, each taking the release's uris among its own."""
    counts: Counter[str] = Counter()
    if not any("uri" in table.collect_schema() for table in tables.values()):
        return counts
    uris = _column(tables, "uri")
    for items in item_chunks(workspace, ["uri", "license"]):
        named = uris.filter(pl.col("uri").is_in(items["uri"].implode())).unique().collect()["uri"]
        for licence in items.filter(pl.col("uri").is_in(named.implode()))["license"]:
            counts[licence or default or "unknown (set --license)"] += 1
    return counts


def _figure(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def _context(workspace: Workspace, manifest: dict[str, Any], tables: list[dict[str, Any]],
             configs: list[str], repo: str, licences: dict[str, int], pictures: list[str],
             item_ids: set[str], hub_repo: bool, licence: str) -> dict[str, Any]:
    metadata = _scrub(manifest)
    return {"title": f"{manifest['builder']} benchmark", "builder": manifest["builder"], "metadata": metadata,
            "tables": tables, "configs": configs, "repo": repo, "hub_repo": hub_repo,
            "run_id": manifest.get("run_id", "-"),
            "options_json": json.dumps(_scrub(manifest.get("options", {})), indent=2, sort_keys=True),
            "labels_from": json.dumps(metadata.get("labels_from")) if metadata.get("labels_from") else None,
            **_provenance(workspace, manifest, item_ids), "licences": licences, "licence": licence,
            "code_version": code_version(), "pictures": [{"stem": Path(p).stem, "path": p} for p in pictures],
            "classes": (manifest.get("fed_by") or {}).get("classes", []),
            "evaluation": EVALUATION.get(manifest["builder"]), "eval_split": _eval_split(manifest["builder"], tables)}


def _eval_split(builder: str, tables: list[dict[str, Any]]) -> str | None:
    """The split the card's evaluation command must name: None when the one ``curate evaluate``
    scores by default has rows, else the first of validation and training rows that has some.

    >>> _eval_split("groups", [{"split": "train", "rows": 4}]), _eval_split("groups", [{"split": "test", "rows": 2}])
    ('train', None)
    """
    present = [t["split"] for t in tables if t["rows"]]
    default = EVALUATED_SPLIT.get(builder)
    if default is None or default in present:
        return None
    return next((split for split in ("val", "validation", "train") if split in present), None)


def render_card(workspace: Workspace, manifest: dict[str, Any], tables: list[dict[str, Any]], configs: list[str],
                repo: str, licences: dict[str, int], pictures: list[str], item_ids: AbstractSet[str] = frozenset(),
                hub_repo: bool = False, licence: str = "other") -> str:
    """The card body from the builder's template (``generic`` when it has none)."""
    folder = Path(str(resources.files("dataset_cards")))
    environment = Environment(loader=FileSystemLoader(folder), undefined=StrictUndefined, keep_trailing_newline=True)
    name = f"{manifest['builder']}.md.j2"
    template = environment.get_template(name if (folder / name).is_file() else "generic.md.j2")
    return template.render(**_context(workspace, manifest, tables, configs, repo, licences, pictures, set(item_ids),
                                      hub_repo, licence))


def _copy_pictures(workspace: Workspace, manifest: dict[str, Any], target: Path | None) -> list[str]:
    """The analysis pictures that fed the release (``fed_by.pictures``), copied beside the card
    (``images/``) unless ``target`` is None; their relative paths."""
    copied = []
    for relative in (manifest.get("fed_by") or {}).get("pictures", []):
        picture = workspace.root / relative
        if not picture.is_file():
            continue
        copied.append(f"images/{picture.name}")
        if target is not None:
            (target / "images").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(picture, target / "images" / picture.name)
    return copied


def _check_card(text: str, workspace: Workspace) -> None:
    leaks = [str(workspace.root), str(Path.home())]
    for leak in leaks:
        if leak and leak != "/" and leak in text:
            raise PublishError(f"the card would reveal a local path ({leak}); nothing was written")
    if _SECRET.search(text):
        raise PublishError("the card would contain something that looks like a token or key; nothing was written")


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_digest(p) for p in folder.rglob("*") if p.is_file()} \
        if folder.exists() else {}


def _dataset_info(configs: dict[str, dict[str, str]], features: dict[str, datasets.Features], tables: dict[str, Any],
                  target: Path) -> Any:
    """The card's ``dataset_info``, as ``datasets`` writes it: per config its features and, per split,
    rows and bytes on disk."""
    infos = DatasetInfosDict()
    for name, splits in configs.items():
        split_infos = datasets.SplitDict()
        for split, table in splits.items():
            split_infos.add(datasets.SplitInfo(split, num_examples=row_count(tables[table]), num_bytes=sum(
                p.stat().st_size for p in (target / "data" / name).glob(f"{split}-*.parquet"))))
        infos[name] = datasets.DatasetInfo(features=features[name], splits=split_infos)
    card = DatasetCardData()
    infos.to_dataset_card_data(card)
    return card.to_dict()["dataset_info"]


def _write_published(workspace: Workspace, folder: Path, tables: dict[str, Any], configs: dict[str, dict[str, str]],
                     features: dict[str, datasets.Features], manifest: dict[str, Any], licence: str,
                     written: list[dict[str, Any]], body: str, metadata: dict[str, Any]) -> None:
    """Everything a published dataset holds, into an empty ``folder``: shards, pictures, card, Croissant."""
    for name, splits in configs.items():
        for split, table_name in splits.items():
            write_table(workspace, tables[table_name], features[name], folder / "data" / name, split)
    _copy_pictures(workspace, manifest, folder)
    front = {"license": licence, "task_categories": ["image-classification"],
             "tags": ["spurious-correlations", "curate", manifest["builder"]],
             "size_categories": [size_category(sum(t["rows"] for t in written))],
             "configs": [{"config_name": name, "data_files": [{"split": s, "path": f"data/{name}/{s}-*"}
                                                              for s in splits]}
                         for name, splits in configs.items()],
             "dataset_info": _dataset_info(configs, features, tables, folder)}
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n{body}")
    (folder / "croissant.json").write_text(json.dumps(metadata, indent=1, sort_keys=True))
    validate_croissant(folder / "croissant.json")


def publish(workspace: Workspace, release: str | Path, to: str, license: str | None = None,
            dry_run: bool = False, private: bool = True, tag: str | None = None,
            endpoint: str | None = None) -> PublishResult:
    """Publish a release folder (from ``curate build``) to ``folder:PATH`` or ``hub:ORG/NAME``.

    For the Hub the folder is written to ``published/ORG--NAME`` in the workspace, then uploaded
    (see ``curate.publish.hub``): private by default, only changed files, the card's metadata
    merged, ``tag`` marking the release. ``dry_run`` writes nothing and, for the Hub, lists what
    would change."""
    started = time.perf_counter()
    kind, _, location = to.partition(":")
    if kind not in ("folder", "hub") or not location:
        raise PublishError(f"publish to folder:PATH or hub:ORG/NAME, not {to!r}")
    if kind == "hub" and not re.fullmatch(r"[\w.-]+/[\w.-]+", location):
        raise PublishError(f"a Hub dataset is ORG/NAME, not {location!r}")
    manifest, tables = load_release(Path(release))
    target = Path(location) if kind == "folder" else workspace.root / "published" / location.replace("/", "--")
    target = target.absolute()
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / "README.md").is_file())):
        raise PublishError(f"{target} exists and is not a published dataset (no README.md); "
                           "publish to a new or empty folder")
    folder_dry_run = dry_run and kind == "folder"
    repo = location if kind == "hub" else target.name
    configs = configs_of(tables)
    judged = pl.Series([v.item_id for v in workspace.catalog.verdicts()], dtype=pl.String).unique().implode()
    item_ids = set(_column(tables, "item_id").filter(pl.col("item_id").is_in(judged)).unique().collect()["item_id"])
    item_licences = _item_licences(workspace, tables, license)
    written: list[dict[str, Any]] = [{"config": name, "split": split, "rows": row_count(tables[table])}
               for name, splits in configs.items() for split, table in splits.items()]
    known = [name for name in item_licences if not name.startswith("unknown")]
    licence = (license or (known[0] if len(item_licences) == 1 and known else "other")).lower()
    pictures = _copy_pictures(workspace, manifest, None)  # names only: copied after the checks
    body = render_card(workspace, manifest, written, list(configs), repo, dict(item_licences), pictures, item_ids,
                       kind == "hub", licence)
    _check_card(body, workspace)  # before anything is written
    features = {name: features_for(tables[next(iter(splits.values()))], manifest) for name, splits in configs.items()}
    metadata = croissant(f"{manifest['builder']}-benchmark", f"A {manifest['builder']} benchmark of spurious "
                         "correlations built with curate; see README.md.", licence,
                         f"https://huggingface.co/datasets/{repo}" if kind == "hub" else None, "1.0.0",
                         {name: (features[name], list(splits)) for name, splits in configs.items()})
    config = {"release": manifest.get("run_id"), "to": to, "license": license, "tag": tag, "private": private}
    with workspace.runs.track("publish", f"{manifest['builder']} -> {to}", config, extend_completed=True) as run:
        before = after = _digests(target)
        if not folder_dry_run:
            with replaced(target) as folder:  # the new version beside the old, switched in whole
                _write_published(workspace, folder, tables, configs, features, manifest, licence, written, body,
                                 metadata)
                after = _digests(folder)
        changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
        if kind == "hub":
            try:
                changed = hub.upload(target, location, private, tag, dry_run, endpoint=endpoint).changed
            except hub.HubError as error:
                raise PublishError(str(error)) from error
        workspace.runs.set_counts(run.run_id, {"rows": sum(t["rows"] for t in written), "files_changed": len(changed)})
    return PublishResult(to, after, workspace.runs.get(run.run_id), time.perf_counter() - started, changed)
