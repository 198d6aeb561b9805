"""The job table: one SQLite file, HOME/jobs.sqlite3, shared by the app's threads, its scheduler and the workers.

WAL mode lets readers (the app polling statuses) run while a worker writes; every call opens its own
connection, so any thread or process may use one `JobStore`. State changes that can race (a cancel against a
worker finishing, two pollers claiming a job) are compare-and-set: `update(..., only_from=...)`.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dreamrelation.config import RunConfig
from dreamrelation.jobs.folder import JobFolder

STATES = ("queued", "preparing", "training", "done", "failed", "cancelled")
RUNNING = ("preparing", "training")  # a worker process exists (or should)
ACTIVE = ("queued",) + RUNNING
FINISHED = ("done", "failed", "cancelled")

MAX_RELATION_NAME = 100
_BUSY_TIMEOUT_S = 30.0  # a writer holds the lock for milliseconds; waiting this long means something is wrong

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    relation TEXT NOT NULL,
    state TEXT NOT NULL,
    settings TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    pid INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    source TEXT,
    gpus INTEGER NOT NULL DEFAULT 1,
    devices TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
"""
_UPDATABLE = {"state", "settings", "pid", "error", "attempts", "started", "finished", "devices"}
# Columns added since the first release, with their definitions: older homes gain them at open.
_ADDED_COLUMNS = {"source": "TEXT", "gpus": "INTEGER NOT NULL DEFAULT 1", "devices": "TEXT"}


class JobError(ValueError):
    """A request about a job that cannot be done; the message is short and meant for the user."""


class JobNotFound(JobError):
    """No such job for this owner (also raised for other owners' jobs, with the same message)."""


@dataclass(frozen=True)
class Job:
    """One row of the job table. Times are Unix seconds; `started` is when the latest worker started."""

    id: str
    owner: str
    relation: str
    state: str
    settings: dict  # the RunConfig as JSON
    output_dir: Path  # where the trainer writes: HOME/jobs/ID/output
    pid: int | None
    error: str | None
    attempts: int  # how many of its workers stopped unexpectedly (see JobScheduler.reconcile)
    created: float
    started: float | None
    finished: float | None
    source: dict | None  # the resolved, memory-planned model (models.ModelSource as JSON), pinned when queued
    gpus: int  # how many GPUs the job asked for
    devices: tuple[str, ...]  # the GPU ids it runs on (as CUDA_VISIBLE_DEVICES names them), kept once it ends

    @property
    def run(self) -> RunConfig:
        """The job's training settings as a RunConfig."""
        return RunConfig.model_validate(self.settings)

    @property
    def job_dir(self) -> Path:
        """HOME/jobs/ID: the output folder, the worker's log and what the worker and scheduler tell each other."""
        return self.output_dir.parent

    @property
    def folder(self) -> JobFolder:
        """The job's folder (HOME/jobs/ID) as the worker and the scheduler read and write it."""
        return JobFolder(self.job_dir)

    @property
    def log_path(self) -> Path:
        """HOME/jobs/ID/worker.log: the worker's stdout and stderr, and the scheduler's notes."""
        return self.folder.log


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["settings"] = json.loads(values["settings"])
    values["source"] = json.loads(values["source"]) if values["source"] else None
    values["output_dir"] = Path(values["output_dir"])
    values["devices"] = tuple(values["devices"].split(",")) if values["devices"] else ()
    return Job(**values)


class JobStore:
    """The jobs of one app home folder, kept in HOME/jobs.sqlite3 (created on first use)."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "jobs.sqlite3"
        with self._connect() as db:
            # WAL is a property of the file: set once, every later connection (any process) gets it.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            # Homes made by older versions gain the newer columns (a NULL source: the worker plans the model).
            present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED_COLUMNS.items():
                if name not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per call: sqlite3 connections must not cross threads, and calls are rare and short.
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    def create(self, owner: str, relation: str, run: RunConfig, source: dict | None = None, gpus: int = 1) -> Job:
        """Queue a new job: takes the owner, a relation name (1-100 characters), the settings, the model as
        planned for it (a ModelSource as JSON; None: the worker plans it) and how many GPUs it asks for.

        The settings' output_dir is replaced by HOME/jobs/ID/output. Returns the queued Job; raises JobError
        for an empty owner or a bad relation name.
        """
        relation = relation.strip()
        if not owner:
            raise JobError("a job needs an owner")
        if not relation or len(relation) > MAX_RELATION_NAME:
            raise JobError(f"give the relation a name of 1 to {MAX_RELATION_NAME} characters")
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise JobError(f"a job needs a whole number of GPUs, at least 1 (got {gpus!r})")
        with self._connect() as db:
            while True:
                job_id = secrets.token_hex(4)
                output_dir = self.home / "jobs" / job_id / "output"
                train = run.train.model_copy(update={"output_dir": output_dir})
                settings = run.model_copy(update={"train": train}).model_dump(mode="json")
                try:
                    db.execute(
                        "INSERT INTO jobs (id, owner, relation, state, settings, output_dir, created, source, gpus)"
                        " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                        (job_id, owner, relation, json.dumps(settings), str(output_dir), time.time(),
                         json.dumps(source) if source is not None else None, gpus),
                    )
                    break
                except sqlite3.IntegrityError:  # the id is taken (one in 4e9): draw again
                    continue
        return self.load(job_id)

    def load(self, job_id: str) -> Job:
        """The job with this id whoever owns it: for the scheduler and workers, never for user requests.

        Raises JobNotFound when there is none."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"job {job_id} not found")
        return _job(row)

    def get(self, job_id: str, owner: str) -> Job:
        """The job `job_id` of `owner`. Raises JobNotFound, with the same message, when the id is unknown or
        belongs to another owner, so ids of other people's jobs cannot be probed."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)).fetchone()
        if row is None:
            raise JobNotFound(f"job {job_id} not found")
        return _job(row)

    def list(self, owner: str, states: Iterable[str] | None = None) -> list[Job]:
        """The jobs of `owner`, newest first; only those in `states` when given."""
        return self._select("owner = ?", (owner,), states, newest_first=True)

    def owners(self) -> list[str]:
        """Every owner that has a job, in no particular order."""
        with self._connect() as db:
            return [owner for (owner,) in db.execute("SELECT DISTINCT owner FROM jobs")]

    def rename_owner(self, old: str, new: str) -> int:
        """Give every job of owner `old` to owner `new` (re-keying a data directory); returns how many."""
        if not new:
            raise JobError("a job needs an owner")
        with self._connect() as db:
            return db.execute("UPDATE jobs SET owner = ? WHERE owner = ?", (new, old)).rowcount

    def delete(self, job_id: str, owner: str) -> Job:
        """Remove a finished job of `owner` from the table; returns it (its files are the caller's to delete).
        Raises JobNotFound as `get` does, and JobError while it is queued or running."""
        with self._connect() as db:
            row = db.execute(
                f"DELETE FROM jobs WHERE id = ? AND owner = ? AND state IN ({', '.join('?' * len(FINISHED))})"
                " RETURNING *", (job_id, owner, *FINISHED),
            ).fetchone()
        if row is None:
            job = self.get(job_id, owner)  # JobNotFound for another owner's or an unknown id
            raise JobError(f"job {job.id} is {job.state}; cancel it before deleting it")
        return _job(row)

    def vacuum(self) -> None:
        """Rewrite the file, so that no overwritten value survives in its free pages (after re-keying owners)."""
        with self._connect() as db:
            db.execute("VACUUM")

    def in_states(self, states: Iterable[str]) -> list[Job]:
        """Every owner's jobs in `states`, oldest first: for the scheduler."""
        return self._select("1", (), states, newest_first=False)

    def _select(self, where: str, args: tuple, states: Iterable[str] | None, newest_first: bool) -> list[Job]:
        if states is not None:
            states = tuple(states)
            where += f" AND state IN ({', '.join('?' * len(states))})"
            args += states
        order = "DESC" if newest_first else "ASC"
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY created {order}, rowid {order}", args)
            return [_job(row) for row in rows]

    def update(self, job_id: str, only_from: Iterable[str] | None = None, **fields) -> Job | None:
        """Set `fields` (state, settings, pid, error, attempts, started, finished) of a job.

        With `only_from`, only while the job's state is one of those (an atomic compare-and-set). Returns the
        updated Job, or None when `only_from` did not match; raises JobNotFound for an unknown id.
        """
        unknown = fields.keys() - _UPDATABLE
        if not fields or unknown:
            raise ValueError(f"cannot update {sorted(unknown) or 'nothing'}; updatable: {sorted(_UPDATABLE)}")
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown state {fields['state']!r}; one of {STATES}")
        if "settings" in fields:
            fields["settings"] = json.dumps(fields["settings"])
        if "devices" in fields:
            fields["devices"] = ",".join(fields["devices"]) or None
        where, args = "id = ?", [job_id]
        if only_from is not None:
            only_from = tuple(only_from)
            where += f" AND state IN ({', '.join('?' * len(only_from))})"
            args += only_from
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._connect() as db:
            row = db.execute(
                f"UPDATE jobs SET {assignments} WHERE {where} RETURNING *", [*fields.values(), *args]
            ).fetchone()
        if row is None:
            self.load(job_id)  # raises JobNotFound when the id is unknown rather than just in another state
            return None
        return _job(row)

    def queue(self) -> list[Job]:
        """The queued jobs of every owner in the order they start: owners take turns.

        A job's turn is how many jobs its owner already had queued or training when it was submitted (read from
        the table: those created before it and not finished by then). Lower turns go first, then older jobs. So
        one owner's twelve jobs in a row do not hold back the next owner's first, and the order of two jobs
        never changes while they wait.
        """
        queued = self.in_states(("queued",))
        owners = {job.owner for job in queued}
        mine = {owner: self._select("owner = ?", (owner,), None, newest_first=False) for owner in owners}

        def turn(job: Job) -> int:
            return sum(1 for other in mine[job.owner] if other.created < job.created
                       and (other.finished is None or other.finished > job.created))

        return sorted(queued, key=turn)  # stable: older first within a turn
    def queue_position(self, job_id: str) -> int | None:
        """1-based place of a queued job in the queue (`queue`'s order), or None when it is not queued."""
        for position, job in enumerate(self.queue(), start=1):
            if job.id == job_id:
                return position
        return None

    def next_queued(self) -> Job | None:
        """The queued job whose turn is next (`queue`), or None when the queue is empty."""
        queued = self.queue()
        return queued[0] if queued else None
