"""``curate report``: one Markdown (or HTML) page with the workspace's figures and pictures."""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import polars as pl
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from curate.analyze import GAPS_TABLE, STATS_TABLE, cue_runs, gap_runs
from curate.analyze.discovered import discovered_sections
from curate.analyze.gap import GAP_COLUMNS
from curate.analyze.plots import accuracy_per_group, group_sizes
from curate.evaluate import EVALUATIONS_TABLE
from curate.workspace import Workspace, code_version
from curate.workspace._sql import now

TEMPLATES = Path(__file__).with_name("templates")


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _percent(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.0f}%"


def _markdown_to_html(text: str) -> str:
    """Enough Markdown for the report: headings, tables, images, code and paragraphs."""
    out, table = [], False
    for line in text.splitlines():
        escaped = html.escape(line)
        escaped = re.sub(r"!\[([^]]*)]\(([^)]+)\)", r'<img alt="\1" src="\2" style="max-width:100%">', escaped)
        escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
        if line.startswith("|"):
            cells = [c.strip() for c in escaped.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            tag = "th" if not table else "td"
            out.append(("<table>" if not table else "") + "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells)
                       + "</tr>")
            table = True
            continue
        if table:
            out.append("</table>")
            table = False
        heading = re.match(r"^(#+) (.*)", escaped)
        out.append(f"<h{len(heading.group(1))}>{heading.group(2)}</h{len(heading.group(1))}>" if heading
                   else (f"<p>{escaped}</p>" if escaped.strip() else ""))
    if table:
        out.append("</table>")
    body = "\n".join(out)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>curate report</title><style>"
            f"body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}"
            f"td,th{{border:1px solid #ccc;padding:2px 6px;font-size:90%}}</style></head><body>{body}</body></html>")


def build_report(workspace: Workspace, fmt: str = "md", out: Path | None = None, top: int = 5) -> Path:
    """Write the report (``md`` or ``html``) into ``reports/`` (or ``out``); pictures are linked
    relative to the report. Returns the file written."""
    if fmt not in ("md", "html"):
        raise ValueError(f"report format is md or html, not {fmt!r}")
    target = out or workspace.root / "reports" / f"report.{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    runs = workspace.runs.list()
    analyses, gaps, evaluations = [], [], []
    for run in gap_runs(workspace):
        try:  # each run's own part: parts from older versions have fewer columns
            table = workspace.tables.scan(GAPS_TABLE, part=run.run_id).collect()
        except KeyError:
            continue
        table = table.with_columns(pl.lit(None).alias(c) for c in GAP_COLUMNS if c not in table.columns)
        gaps.append({"kind": run.config["gap"], "run_id": run.run_id, "mask": run.config["mask"],
                     "bootstrap": run.config.get("bootstrap"), "failed": run.counts.get("failed_answers", 0),
                     "rows": table.sort(["class_label", "score"], descending=[False, True],
                                        nulls_last=True).to_dicts()})
    for run in cue_runs(workspace):
        if STATS_TABLE not in workspace.tables.names():
            break
        stats = workspace.tables.scan(STATS_TABLE).filter(pl.col("run_id") == run.run_id).collect()
        folder = workspace.root / "reports" / run.run_id
        pictures = [{"stem": p.stem, "relative": _relative(p, target)} for p in sorted(folder.glob("*.png"))]
        analyses.append({"kind": run.config["evidence"], "run_id": run.run_id, "top": top, "pictures": pictures,
                         "rows": stats.filter(pl.col("rank") <= top).sort(["class_label", "rank"]).to_dicts()})
    if EVALUATIONS_TABLE in workspace.tables.names():
        for row in workspace.tables.read(EVALUATIONS_TABLE).iter_rows(named=True):
            metrics = json.loads(row["metrics"])
            picture = None
            if any(k.startswith("acc_") and ":" in k for k in metrics):
                path = workspace.root / "reports" / row["run_id"] / "accuracy-per-group.png"
                picture = _relative(accuracy_per_group(metrics, path), target)
            evaluations.append({"kind": row["kind"], "run_id": row["run_id"], "metrics": metrics, "picture": picture})
    groups = []
    for source in (s for s in workspace.catalog.sources() if s.kind == "groups"):
        table = workspace.catalog.group_table(source.source_id)
        counts = {f"split {split}: y={y}, a={a}": n for split, y, a, n in
                  table.group_by(["split", "y", "a"]).len().sort(["split", "y", "a"]).iter_rows()}
        path = group_sizes(counts, workspace.root / "reports" / "groups" / f"{source.source_id}.png",
                           f"group sizes of {Path(source.location).name}")
        groups.append({"location": Path(source.location).name, "picture": _relative(path, target),
                       "counts": counts})
    discovered = [{**section, "pictures": [{"stem": p.stem, "relative": _relative(p, target)}
                                           for p in section["pictures"]]}
                  for section in discovered_sections(workspace, top)]
    environment = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True)
    environment.filters.update(num=_number, pct=_percent)
    text = environment.get_template("report.md.j2").render(
        name=workspace.root.name, written=now(), code_version=code_version(), status=workspace.status(), runs=runs,
        analyses=analyses, gaps=gaps, evaluations=evaluations, groups=groups, discovered=discovered)
    target.write_text(text if fmt == "md" else _markdown_to_html(text))
    return target


def _relative(path: Path, report: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), report.parent.resolve())).as_posix()
