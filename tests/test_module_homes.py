"""Each module lives where its users expect it: the road's later stages do not reach back into
ingest for a table reader or a catalogue query, and models do not reach into the workspace."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(folder: Path) -> dict[str, set[str]]:
    """Every module each file under ``folder`` imports (at the top or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(("folder", "foreign"), [
    ("curate/builders", "curate.ingest"), ("curate/evaluate", "curate.ingest"), ("curate/analyze", "curate.ingest"),
    ("annotation", "curate.ingest"), ("curate/models", "curate.workspace"),
])
def test_no_module_reaches_into_a_home_it_does_not_belong_to(folder: str, foreign: str) -> None:
    reaching = {path: sorted(n for n in names if n == foreign or n.startswith(f"{foreign}."))
                for path, names in _imports(ROOT / folder).items()}
    assert not {path: names for path, names in reaching.items() if names}


def test_a_table_that_is_not_there_is_one_clear_error() -> None:
    from curate.tabular import TableError, read_table

    with pytest.raises(TableError, match="^no table at .*no-such-table.csv$"):
        read_table(ROOT / "no-such-table.csv")
