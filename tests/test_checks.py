"""The type checker's escape hatches stay few and explained: every ``type: ignore`` in the package
names the error it silences and says why (after it, or in an ``# ignored below (code): why`` line
above). ``make lint`` runs mypy, which also refuses ignores that are no longer needed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = re.compile(r"#\s*type:\s*ignore(\[[^\]]*\])?(.*)$")


def unexplained_ignores(paths: list[Path]) -> list[str]:
    """``path:line`` of every ``type: ignore`` without an error code or a reason."""
    found = []
    for path in paths:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            match = IGNORE.search(line)
            if match is None:
                continue
            after = match.group(2).strip()
            above = lines[number - 1].strip() if number else ""
            explained = (after.startswith("#") and after.lstrip("# ")) or above.startswith("# ignored below (")
            if not match.group(1) or not explained:
                found.append(f"{path.name}:{number + 1}")
    return found


def test_every_type_ignore_names_its_error_and_why() -> None:
    package = sorted([*(ROOT / "curate").rglob("*.py"), *(ROOT / "annotation").rglob("*.py")])
    assert unexplained_ignores(package) == []


def test_an_ignore_without_a_code_or_a_reason_is_found(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("a = f()  # type: ignore\n"
                      "b = f()  # type: ignore[arg-type]\n"
                      "c = f()  # type: ignore[arg-type]  # f is untyped\n"
                      "# ignored below (arg-type): f is untyped\n"
                      "d = f()  # type: ignore[arg-type]\n")
    assert unexplained_ignores([source]) == ["m.py:1", "m.py:2"]
