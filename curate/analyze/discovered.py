"""The report's view of cues discovered from a model's mistakes (``curate propose errors``): per
run, each class's top cues with their error rates, and an image strip of each class's first cue
(images with it, wrong ones first, above images without it, right ones first)."""

from __future__ import annotations

from typing import Any

from curate.analyze import _slug, _thumbnail
from curate.analyze.plots import image_strips
from curate.workspace import Workspace

SOURCE = "errors"


def discovered_sections(workspace: Workspace, top: int = 5, strip_k: int = 5) -> list[dict[str, Any]]:
    """One section per ``errors`` proposal run: ``rows`` (each class's ``top`` cues, ranked) and
    ``pictures`` (the strips, written to ``reports/<run id>/``)."""
    sections = []
    for run in (r for r in workspace.runs.list("propose") if r.name == SOURCE):
        cues = [cue for cue in workspace.catalog.cues(source=SOURCE, run_id=run.run_id) if cue.extra["rank"] <= top]
        if not cues:
            continue
        cues.sort(key=lambda cue: (cue.class_label, cue.extra["rank"]))
        rows = [{"class_label": cue.class_label, "attribute": cue.attribute, "taxonomy_type": cue.taxonomy_type,
                 **cue.extra} for cue in cues]
        pictures = []
        for cue in (cue for cue in cues if cue.extra["rank"] == 1):
            name = f"discovered-{_slug(cue.class_label)}-{_slug(cue.attribute)}.png"
            with_cue, without = ([_thumbnail(workspace, workspace.catalog.item(i).uri)
                                  for i in cue.extra[key][:strip_k]] for key in ("examples", "counterexamples"))
            pictures.append(image_strips(
                with_cue, without, workspace.root / "reports" / run.run_id / name,
                f"{cue.class_label}: '{cue.attribute}' (top: with it, wrong first; bottom: without it)"))
        sections.append({"method": run.config["options"]["method"], "run_id": run.run_id, "top": top, "rows": rows,
                         "pictures": pictures})
    return sections

