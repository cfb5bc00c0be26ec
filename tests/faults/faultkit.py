"""Helpers of the fault suite (a plain module: a second conftest.py would shadow tests/conftest.py).

The fault suite: each test starts from a known workspace, applies one fault (a kill, a FIFO, a full
disk, a damaged file, a hostile server) and checks what is left: the same rows as without the fault,
one clear line instead of a traceback, and a catalogue that passes ``PRAGMA integrity_check``."""

from __future__ import annotations

from pathlib import Path

from conftest import distinct_image
from typer.testing import CliRunner

from curate.cli import app
from curate.workspace import Workspace

IMAGES = 120


def make_image_folder(tmp_path: Path) -> Path:
    """A folder of ``IMAGES`` small distinct PNGs in three classes."""
    root = tmp_path / "images"
    for index in range(IMAGES):
        path = root / f"class{index % 3}" / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        distinct_image(index, (8, 8)).save(path)
    return root


def rows(workspace: Workspace) -> dict[str, list[tuple[object, ...]]]:
    """What a workspace holds, without run ids and time stamps (which differ between runs)."""
    conn = workspace.connect()
    found = {
        "items": conn.execute("SELECT item_id, uri, label, width, height, mode, format, size_bytes, license, "
                              "metadata FROM items ORDER BY item_id").fetchall(),
        "item_sources": conn.execute("SELECT source_id, locator, item_id, fingerprint, label, split, metadata "
                                     "FROM item_sources ORDER BY source_id, locator").fetchall(),
        "quarantine": conn.execute("SELECT source_id, locator, fingerprint, reason FROM quarantine "
                                   "ORDER BY source_id, locator").fetchall(),
    }
    return {table: [tuple(row) for row in table_rows] for table, table_rows in found.items()}


def intact(workspace: Workspace) -> bool:
    """``PRAGMA integrity_check`` says ok."""
    return workspace.connect().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def temporaries(folder: Path) -> list[Path]:
    """Temporary files left under ``folder``."""
    return sorted(folder.rglob("*.tmp"))


def curate(*args: str | Path) -> tuple[int, str]:
    """Run the CLI in this process: exit code and everything it printed."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(output: str) -> str:
    """The single ``error:`` line of a failed command (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and len(lines) == 1, output
    return errors[0]
