"""Run records: every stage run is stored with its config, code version, models and counts.

A run that died (its process is gone while it still says ``running``) reads as ``interrupted``;
starting the same stage with the same config again resumes it under the same ``run_id``.

Liveness is a lock, not a host name and a pid (containers change the one and reuse the other):
the process running a run holds ``flock`` on ``runs/<run_id>.lock``; the kernel releases it when
the process dies, however it dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import threading
import time
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

    def __init__(self, connect: Connect, transaction: Transaction, lock_dir: Path) -> None:
        self._connect = connect
        self._transaction = transaction
        self._lock_dir = lock_dir
        self._held: dict[str, int] = {}  # run id -> descriptor of the lock this process holds
        self._held_guard = threading.Lock()

    def start(self, stage: str, name: str, config: Mapping[str, Any],
              models: Mapping[str, Any] | None = None, *, resume: bool = True,
              extend_completed: bool = False) -> Run:
        """Start a run, or resume the latest unfinished run of the same stage and config.

        With ``extend_completed`` a completed run of the same config is taken up again too (for
        stages that only add what is missing, so running twice stores the same rows once).
        """
        fingerprint = digest({"stage": stage, "config": config})
        statuses = (*_RESUMABLE, RunStatus.COMPLETED) if extend_completed else _RESUMABLE
        claimed: list[str] = []  # the lock taken, let go again should the transaction fail
        try:
            with self._transaction() as conn:
                return self._get(conn, self._claim(conn, stage, name, config, models, fingerprint,
                                                   statuses if resume else (), claimed))
        except BaseException:
            for run_id in claimed:
                self._release_lock(run_id)
            raise

    def _claim(self, conn: sqlite3.Connection, stage: str, name: str, config: Mapping[str, Any],
               models: Mapping[str, Any] | None, fingerprint: str, statuses: tuple[RunStatus, ...],
               claimed: list[str]) -> str:
        """Take up the newest run of ``statuses`` that no live process holds, or insert a new one."""
        host, pid, stamp = socket.gethostname(), os.getpid(), now()
        if statuses:
            marks = ", ".join("?" * len(statuses))
            for row in conn.execute(
                f"SELECT * FROM runs WHERE stage = ? AND fingerprint = ? AND status IN ({marks}) "
                "ORDER BY started_at DESC", (stage, fingerprint, *statuses),
            ).fetchall():
                if self._take_lock(row["run_id"]):
                    claimed.append(row["run_id"])
                    conn.execute(
                        "UPDATE runs SET status = ?, pid = ?, host = ?, updated_at = ?, "
                        "attempts = attempts + 1, error = NULL, finished_at = NULL WHERE run_id = ?",
                        (RunStatus.RUNNING, pid, host, stamp, row["run_id"]),
                    )
                    return row["run_id"]
        run_id = f"{stage}-{stamp[:19].replace('-', '').replace(':', '')}-{secrets.token_hex(3)}"
        self._take_lock(run_id)
        claimed.append(run_id)
        conn.execute(
            "INSERT INTO runs (run_id, stage, name, config, fingerprint, code_version, models, counts, "
            "status, started_at, updated_at, pid, host) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?, ?, ?, ?, ?)",
            (run_id, stage, name, dumps(dict(config)), fingerprint, code_version(),
             dumps(dict(models or {})), RunStatus.RUNNING, stamp, stamp, pid, host),
        )
        return run_id

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
        """Add ``delta`` to a run's counts (in the caller's transaction when inside one)."""
        with self._transaction() as conn:
            self.add_counts(conn, run_id, delta)

    def set_counts(self, run_id: str, values: Mapping[str, int]) -> None:
        """Set counts that describe a run's output (rows written), replacing earlier values, so a run
        taken up again reports its output once; other counts are kept. Joins the caller's
        transaction when inside one."""
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
            finished = self._get(conn, run_id)
        self._release_lock(run_id)
        return finished

    def get(self, run_id: str) -> Run:
        """One run by id or by a unique id prefix."""
        return self._get(self._connect(), run_id)

    def list(self, stage: str | None = None) -> list[Run]:
        """All runs, newest first; dead ``running`` runs read as ``interrupted``."""
        query, args = "SELECT * FROM runs", tuple[str, ...]()
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

    # liveness ------------------------------------------------------------------------------
    def _lock_path(self, run_id: str) -> Path:
        return self._lock_dir / f"{run_id}.lock"

    def _take_lock(self, run_id: str) -> bool:
        """Hold the run's lock from now until ``finish`` (or this process's end); False when a live
        process (this one included) holds it already."""
        self._lock_dir.mkdir(exist_ok=True)
        fd = os.open(self._lock_path(run_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:  # a shared lock is only ever a look (``_is_live``) that ends at once
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return False
                fcntl.flock(fd, fcntl.LOCK_UN)
                time.sleep(0.001)
                continue
            with self._held_guard:
                self._held[run_id] = fd
            return True

    def _release_lock(self, run_id: str) -> None:
        with self._held_guard:
            fd = self._held.pop(run_id, None)
        if fd is not None:
            os.close(fd)

    def _is_live(self, row: sqlite3.Row) -> bool:
        """True while some process holds the run's lock (a run without a lock file is not live)."""
        if row["status"] != RunStatus.RUNNING:
            return False
        if row["run_id"] in self._held:
            return True
        try:
            fd = os.open(self._lock_path(row["run_id"]), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _with_live_status(self, row: sqlite3.Row) -> Run:
        run = _row_to_run(row)
        if run.status == RunStatus.RUNNING and not self._is_live(row):
            return replace(run, status=RunStatus.INTERRUPTED)
        return run
