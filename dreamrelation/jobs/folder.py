"""A job's folder, HOME/jobs/ID: how the app's scheduler and the job's worker talk, wherever the worker runs.

The job table stays on the app's machine (SQLite must not be shared over a network file system), so a worker
never opens it: the scheduler writes what to train into the folder before it starts the worker, the worker
writes what happened next to it, and the scheduler turns that into the table's states. The folder sits in
the data home, which a cluster's nodes see at the same path (README, "A Ray cluster").

    job.json        the scheduler's: the RunConfig and the model as planned for it (the worker's only input)
    prepared.json   the worker's, when its first step is next: {"host": ..., "devices": [...], "processes": N}
    outcome.json    the worker's, last: {"state": "done" | "failed", "error": one line or null}
    worker.log      the worker's stdout and stderr, and the scheduler's notes
    output/         the trainer's run folder (checkpoints, progress.jsonl, the LoRA)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dreamrelation.config import RunConfig

# The longest line the job table or worker.log takes from an error (a worker's, Ray's): a sentence and its fix.
MAX_LINE_CHARS = 500


def one_line(text: str) -> str:
    """`text` on one line: every run of whitespace (newlines included) one space, cut to MAX_LINE_CHARS with an
    ellipsis. Takes and returns a str."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"


class JobFolder:
    """The files of one job's folder (`path` = HOME/jobs/ID); every write is atomic (a reader sees all or none)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.spec = self.path / "job.json"
        self.prepared_file = self.path / "prepared.json"
        self.outcome_file = self.path / "outcome.json"
        self.log = self.path / "worker.log"

    def write_spec(self, settings: dict, source: dict | None) -> None:
        """Write what the worker trains: `settings` (a RunConfig as JSON) and `source` (a ModelSource as JSON or
        None), and forget what an earlier worker of the job reported."""
        self.path.mkdir(parents=True, exist_ok=True)
        for report in (self.prepared_file, self.outcome_file):
            report.unlink(missing_ok=True)
        _write_json(self.spec, {"settings": settings, "source": source})

    def read_spec(self) -> tuple[RunConfig, dict | None]:
        """The RunConfig and the planned model (a ModelSource as JSON, or None) the scheduler wrote."""
        spec = json.loads(self.spec.read_text(encoding="utf-8"))
        return RunConfig.model_validate(spec["settings"]), spec["source"]

    def mark_prepared(self, host: str, devices: list[str], processes: int) -> None:
        """The worker's model and data are ready and its first step is next, on `host` with GPUs `devices` (the
        CUDA_VISIBLE_DEVICES it saw; [] for none) in `processes` processes."""
        _write_json(self.prepared_file, {"host": host, "devices": devices, "processes": processes, "time": time.time()})

    def prepared(self) -> dict | None:
        """What `mark_prepared` wrote, or None before."""
        return _read_json(self.prepared_file)

    def finish(self, state: str, error: str | None = None) -> None:
        """The worker's last word: `state` "done" or "failed", with a one-line `error` when failed."""
        if state not in ("done", "failed"):
            raise ValueError(f"a worker finishes done or failed, not {state!r}")
        _write_json(self.outcome_file, {"state": state, "error": error})

    def outcome(self) -> dict | None:
        """What `finish` wrote ({"state", "error"}), or None when the worker has not finished (or died)."""
        return _read_json(self.outcome_file)

    def note(self, text: str) -> None:
        """Append a scheduler line to worker.log, where the app shows the log tail."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"[scheduler {time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(value) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
