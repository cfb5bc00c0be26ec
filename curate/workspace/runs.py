"""Run records: every stage run is stored with its config, code version, models and counts.

A run that died (its process is gone while it still says ``running``) reads as ``interrupted``;
starting the same stage with the same config again resumes it under the same ``run_id``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import curate
from curate.records import Run, RunStatus
from curate.secrets import scrub
from curate.workspace._sql import digest, dumps, now

Connect = Callable[[], sqlite3.Connection]
Transaction = Callable[[], AbstractContextManager[sqlite3.Connection]]
_RESUMABLE = (RunStatus.RUNNING, RunStatus.INTERRUPTED, RunStatus.FAILED, RunStatus.COMPLETED_WITH_FAILURES)


class RunNotFoundError(KeyError):
    """No run has this id (or id prefix), or the prefix is ambiguous."""


@lru_cache(maxsize=1)
def code_version() -> str:
    """``curate``'s version, plus the git commit when running from a checkout.

    >>> code_version().startswith(curate.__version__)
    True
    """
    package_dir = Path(curate.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return curate.__version__
    return f"{curate.__version__}+g{commit}" if commit else curate.__version__


def _process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _row_to_run(row: sqlite3.Row) -> Run:
    return Run(
        run_id=row["run_id"], stage=row["stage"], name=row["name"], config=json.loads(row["config"]),
        fingerprint=row["fingerprint"], code_version=row["code_version"], status=RunStatus(row["status"]),
        started_at=row["started_at"], updated_at=row["updated_at"], finished_at=row["finished_at"],
        models=json.loads(row["models"]), counts=json.loads(row["counts"]), pid=row["pid"],
        host=row["host"], attempts=row["attempts"], error=row["error"],
    )


class RunLog:
    """The ``runs`` table: start, resume, count, finish and list stage runs.

    >>> from curate.workspace import Workspace
    >>> import tempfile
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> run = ws.runs.start("ingest", "folder demo", {"path": "/data"})
    >>> ws.runs.finish(run.run_id, RunStatus.COMPLETED).status
    <RunStatus.COMPLETED: 'completed'>
    """

    def __init__(self, connect: Connect, transaction: Transaction) -> None:
        self._connect = connect
        self._transaction = transaction

    def start(self, stage: str, name: str, config: Mapping[str, Any],
              models: Mapping[str, Any] | None = None, *, resume: bool = True,
              extend_completed: bool = False) -> Run:
        """Start a run, or resume the latest unfinished run of the same stage and config.

        With ``extend_completed`` a completed run of the same config is taken up again too (for
        stages that only add what is missing, so running twice stores the same rows once).
        """
        fingerprint = digest({"stage": stage, "config": config})
        host, pid, stamp = socket.gethostname(), os.getpid(), now()
        statuses = (*_RESUMABLE, RunStatus.COMPLETED) if extend_completed else _RESUMABLE
        with self._transaction() as conn:
            if resume:
                marks = ", ".join("?" * len(statuses))
                for row in conn.execute(
                    f"SELECT * FROM runs WHERE stage = ? AND fingerprint = ? AND status IN ({marks}) "
                    "ORDER BY started_at DESC", (stage, fingerprint, *statuses),
                ):
                    if not self._is_live(row):
                        conn.execute(
                            "UPDATE runs SET status = ?, pid = ?, host = ?, updated_at = ?, "
                            "attempts = attempts + 1, error = NULL, finished_at = NULL WHERE run_id = ?",
                            (RunStatus.RUNNING, pid, host, stamp, row["run_id"]),
                        )
                        return self._get(conn, row["run_id"])
            run_id = f"{stage}-{stamp[:19].replace('-', '').replace(':', '')}-{secrets.token_hex(3)}"
            conn.execute(
                "INSERT INTO runs (run_id, stage, name, config, fingerprint, code_version, models, counts, "
                "status, started_at, updated_at, pid, host) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?, ?, ?, ?, ?)",
                (run_id, stage, name, dumps(dict(config)), fingerprint, code_version(),
                 dumps(dict(models or {})), RunStatus.RUNNING, stamp, stamp, pid, host),
            )
            return self._get(conn, run_id)

    @contextmanager
    def track(self, stage: str, name: str, config: Mapping[str, Any], *,
              extend_completed: bool = False, failures: Callable[[], int] | None = None) -> Iterator[Run]:
        """Start (or resume) a run for the block: completed when it ends (``completed_with_failures``
        when ``failures()`` counts requests a re-run would retry), ``interrupted`` on Ctrl-C,
        ``failed`` with the error on any other exception (which propagates)."""
        run = self.start(stage, name, config, extend_completed=extend_completed)
        try:
            yield run
        except KeyboardInterrupt:
            self.finish(run.run_id, RunStatus.INTERRUPTED, "interrupted by the user")
            raise
        except BaseException as error:
            self.finish(run.run_id, RunStatus.FAILED, f"{type(error).__name__}: {error}")
            raise
        failed = failures() if failures is not None else 0
        if failed:
            self.finish(run.run_id, RunStatus.COMPLETED_WITH_FAILURES,
                        f"{failed} requests failed; run the same command again to retry them")
        else:
            self.finish(run.run_id, RunStatus.COMPLETED)

    def add_counts(self, conn: sqlite3.Connection, run_id: str, delta: Mapping[str, int]) -> None:
        """Add ``delta`` to a run's counts inside the caller's transaction (so counts match rows)."""
        row = conn.execute("SELECT counts FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        counts = json.loads(row["counts"])
        for key, value in delta.items():
            counts[key] = counts.get(key, 0) + value
        conn.execute("UPDATE runs SET counts = ?, updated_at = ? WHERE run_id = ?",
                     (dumps(counts), now(), run_id))

    def count(self, run_id: str, delta: Mapping[str, int]) -> None:
        """Add ``delta`` to a run's counts in a transaction of its own."""
        with self._transaction() as conn:
            self.add_counts(conn, run_id, delta)

    def set_counts(self, run_id: str, values: Mapping[str, int]) -> None:
        """Set some of a run's counts to ``values`` (figures of the latest pass, not running totals)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT counts FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            conn.execute("UPDATE runs SET counts = ?, updated_at = ? WHERE run_id = ?",
                         (dumps({**json.loads(row["counts"]), **values}), now(), run_id))

    def set_models(self, run_id: str, models: Mapping[str, Any]) -> None:
        """Record the models (name -> version and settings) a run used."""
        with self._transaction() as conn:
            conn.execute("UPDATE runs SET models = ?, updated_at = ? WHERE run_id = ?",
                         (dumps(dict(models)), now(), run_id))

    def finish(self, run_id: str, status: RunStatus, error: str | None = None) -> Run:
        """Close a run as completed, failed or interrupted (the error scrubbed of secrets)."""
        stamp, error = now(), scrub(error) if error is not None else None
        with self._transaction() as conn:
            conn.execute("UPDATE runs SET status = ?, error = ?, finished_at = ?, updated_at = ? "
                         "WHERE run_id = ?", (status, error, stamp, stamp, run_id))
            return self._get(conn, run_id)

    def get(self, run_id: str) -> Run:
        """One run by id or by a unique id prefix."""
        return self._get(self._connect(), run_id)

    def list(self, stage: str | None = None) -> list[Run]:
        """All runs, newest first; dead ``running`` runs read as ``interrupted``."""
        query, args = "SELECT * FROM runs", ()
        if stage is not None:
            query, args = query + " WHERE stage = ?", (stage,)
        rows = self._connect().execute(query + " ORDER BY started_at DESC", args).fetchall()
        return [self._with_live_status(row) for row in rows]

    def _get(self, conn: sqlite3.Connection, run_id: str) -> Run:
        rows = conn.execute("SELECT * FROM runs WHERE run_id = ? OR run_id LIKE ? ESCAPE '\\' LIMIT 2",
                            (run_id, run_id.replace("_", "\\_").replace("%", "\\%") + "%")).fetchall()
        exact = [row for row in rows if row["run_id"] == run_id]
        if exact:
            return self._with_live_status(exact[0])
        if len(rows) != 1:
            raise RunNotFoundError(f"no run {'matches' if not rows else 'is unique for'} {run_id!r}")
        return self._with_live_status(rows[0])

    def _is_live(self, row: sqlite3.Row) -> bool:
        if row["status"] != RunStatus.RUNNING or row["pid"] is None:
            return False
        if row["host"] != socket.gethostname():
            return True  # cannot see another host's processes: assume it is alive
        return _process_alive(row["pid"])

    def _with_live_status(self, row: sqlite3.Row) -> Run:
        run = _row_to_run(row)
        if run.status == RunStatus.RUNNING and not self._is_live(row):
            return replace(run, status=RunStatus.INTERRUPTED)
        return run
