"""Publish: a release folder becomes a dataset in Hub layout with a dataset card.

``publish(workspace, release, "folder:PATH")`` writes parquet shards per config and split (images
embedded), README.md (YAML front matter + a card rendered from ``dataset_cards/``) and records a
``publish`` run. Cards are checked: no local path, token or key may appear in them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

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
from curate.workspace import Workspace, code_version

EVALUATION_KIND = {"groups": "groups", "mmspubench": "mcq", "focus": "focus"}
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


def _context(workspace: Workspace, manifest: dict[str, Any], tables: list[dict[str, Any]],
             configs: list[str], repo: str, licences: dict[str, int], pictures: list[str]) -> dict[str, Any]:
    proposals = [{"run_id": r.run_id, "proposer": r.config.get("proposer"),
                  "models": ", ".join(f"{k}: {v}" for k, v in r.models.items()) or "-"}
                 for r in workspace.runs.list("propose")]
    rounds = []
    for run in workspace.runs.list("verify"):
        verdicts = workspace.catalog.verdicts(run.name)
        figures = {}
        if "round-figures" in workspace.tables.names():
            frame = workspace.tables.read("round-figures")
            mine = frame.filter(frame["round"] == run.name)
            figures = json.loads(mine["figures"][-1]) if mine.height else {}
        gold = {k.split(":", 1)[1]: round(v, 3) for k, v in figures.items() if k.startswith("gold_accuracy:")}
        alpha = figures.get("krippendorff_alpha")
        rounds.append({"name": run.name, "annotators": len({v.annotator for v in verdicts}), "verdicts": len(verdicts),
                       "alpha": "-" if alpha is None or alpha != alpha else f"{alpha:.3f}",
                       "gold": ", ".join(f"{k}: {v}" for k, v in gold.items()) or "-"})
    metadata = _scrub(manifest)
    return {"title": f"{manifest['builder']} benchmark", "builder": manifest["builder"], "metadata": metadata,
            "tables": tables, "configs": configs, "repo": repo, "run_id": manifest.get("run_id", "-"),
            "options_json": json.dumps(_scrub(manifest.get("options", {})), indent=2, sort_keys=True),
            "labels_from": json.dumps(metadata.get("labels_from")) if metadata.get("labels_from") else None,
            "proposals": proposals, "rounds": rounds, "licences": licences, "code_version": code_version(),
            "pictures": [{"stem": Path(p).stem, "path": p} for p in pictures],
            "evaluation_kind": EVALUATION_KIND.get(manifest["builder"], "groups")}


def render_card(workspace: Workspace, manifest: dict[str, Any], tables: list[dict[str, Any]], configs: list[str],
                repo: str, licences: dict[str, int], pictures: list[str]) -> str:
    """The card body from the builder's template (``generic`` when it has none)."""
    folder = Path(str(resources.files("dataset_cards")))
    environment = Environment(loader=FileSystemLoader(folder), undefined=StrictUndefined, keep_trailing_newline=True)
    name = f"{manifest['builder']}.md.j2"
    template = environment.get_template(name if (folder / name).is_file() else "generic.md.j2")
    return template.render(**_context(workspace, manifest, tables, configs, repo, licences, pictures))


def _copy_pictures(workspace: Workspace, target: Path, dry_run: bool) -> list[str]:
    """The latest analysis's PNGs, copied beside the card (``images/``); their relative paths."""
    analyses = workspace.runs.list("analyze")
    if not analyses:
        return []
    folder = workspace.root / "reports" / analyses[0].run_id
    copied = []
    for picture in sorted(folder.glob("*.png")):
        copied.append(f"images/{picture.name}")
        if not dry_run:
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
    folder_dry_run = dry_run and kind == "folder"
    repo = location if kind == "hub" else target.name
    configs = configs_of(tables)
    uris = {uri for table in tables.values() if "uri" in table.collect_schema()
            for uri in table.select("uri").collect()["uri"]}
    item_licences: Counter[str] = Counter()
    for item in workspace.catalog.items():
        if item.uri in uris:
            item_licences[item.license or license or "unknown (set --license)"] += 1
    config = {"release": manifest.get("run_id"), "to": to, "license": license, "tag": tag, "private": private}
    with workspace.runs.track("publish", f"{manifest['builder']} -> {to}", config, extend_completed=True) as run:
        before = {str(p.relative_to(target)): file_digest(p) for p in target.rglob("*") if p.is_file()} \
            if target.exists() else {}
        written: list[dict[str, Any]] = []
        yaml_configs, infos, croissant_configs = [], [], {}
        for name, splits in configs.items():
            features = features_for(next(iter(tables[t] for t in splits.values())), manifest)
            croissant_configs[name] = (features, list(splits))
            for split, table_name in splits.items():
                if not folder_dry_run:
                    write_table(workspace, tables[table_name], features, target / "data" / name, split)
                written.append({"config": name, "split": split, "rows": row_count(tables[table_name])})
            yaml_configs.append({"config_name": name, "data_files": [{"split": s, "path": f"data/{name}/{s}-*"}
                                                                    for s in splits]})
            info = datasets.DatasetInfo(features=features)._to_yaml_dict()
            infos.append({"config_name": name, **info, "splits": [
                {"name": s, "num_examples": row_count(tables[t]),
                 "num_bytes": sum(p.stat().st_size for p in (target / "data" / name).glob(f"{s}-*.parquet"))}
                for s, t in splits.items()]})
        total = sum(t["rows"] for t in written)
        front = {"license": (license or (next(iter(item_licences)) if len(item_licences) == 1 else "other")).lower(),
                 "task_categories": ["image-classification"], "tags": ["spurious-correlations", "curate",
                                                                       manifest["builder"]],
                 "size_categories": [size_category(total)], "configs": yaml_configs, "dataset_info": infos}
        pictures = _copy_pictures(workspace, target, folder_dry_run)
        body = render_card(workspace, manifest, written, list(configs), repo, dict(item_licences), pictures)
        card = f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n{body}"
        _check_card(card, workspace)
        metadata = croissant(f"{manifest['builder']}-benchmark", f"A {manifest['builder']} benchmark of spurious "
                             "correlations built with curate; see README.md.", front["license"],
                             f"https://huggingface.co/datasets/{repo}", "1.0.0", croissant_configs)
        if not folder_dry_run:
            (target / "README.md").write_text(card)
            (target / "croissant.json").write_text(json.dumps(metadata, indent=1, sort_keys=True))
            validate_croissant(target / "croissant.json")
        after = {str(p.relative_to(target)): file_digest(p) for p in target.rglob("*") if p.is_file()} \
            if target.exists() else {}
        changed = sorted(k for k, v in after.items() if before.get(k) != v)
        if kind == "hub":
            try:
                uploaded = hub.upload(target, location, private, tag, dry_run, endpoint=endpoint)
            except hub.HubError as error:
                raise PublishError(str(error)) from error
            changed = uploaded.changed
        with workspace.transaction() as conn:
            workspace.runs.add_counts(conn, run.run_id, {"rows": total, "files_changed": len(changed)})
    return PublishResult(to, after, workspace.runs.get(run.run_id), time.perf_counter() - started, changed)
