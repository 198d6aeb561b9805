"""progress.jsonl: one JSON object per line, appended by the trainer and read by other processes (the app).

The trainer's records (ProgressRecorder):
    {"event": "start", "step": S, "steps": N, "clips": K, "time": T}       each run, S > 0 when resumed
    {"step": S, "steps": N, "mode": M, "losses": {"loss": ..., "loss_rec": ..., "loss_rcl": ...},
     "lr": LR, "sec_per_step": ..., "eta_s": ..., "time": T}                every log_every steps and the last
    {"event": "eval", "step": S, "losses": {"eval": ..., "eval_inside": ..., "eval_outside": ...},
     "seconds": ..., "time": T}                                             every eval_every steps and the last
    {"event": "done", "step": N, "lora": PATH, "time": T}
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from dreamrelation.train.callbacks import EvalReport, StepReport, TrainerCallback, TrainResult

if TYPE_CHECKING:
    from dreamrelation.config import RunConfig

# Whole iterations (step, checkpoint, sample) of the last few: a median of them is an ETA that neither a slow
# first step nor an occasional checkpoint throws off.
_ETA_WINDOW = 20


class ProgressLog:
    """Appends records to OUT/progress.jsonl, each flushed at once so readers see whole lines."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        """Append one record (JSON-serialisable values) with a wall-clock `time`."""
        record.setdefault("time", round(time.time(), 3))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_progress(path: Path) -> list[dict]:
    """Every complete record of a progress.jsonl (a line still being written is skipped); [] when absent."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class ProgressRecorder(TrainerCallback):
    """The trainer's events as progress.jsonl records (formats in this module's docstring)."""

    def __init__(self, path: Path, log_every: int):
        self.log = ProgressLog(path)
        self.log_every = log_every
        self.recent: deque[float] = deque(maxlen=_ETA_WINDOW)
        self.last_event = time.perf_counter()

    def on_prepared(self, run: RunConfig, step: int, clips: int) -> None:
        self.log.write(event="start", step=step, steps=run.train.steps, clips=clips)
        self.last_event = time.perf_counter()

    def on_step(self, report: StepReport) -> None:
        now = time.perf_counter()
        self.recent.append(now - self.last_event)  # from the previous step's end: a whole iteration
        self.last_event = now
        if report.step % self.log_every == 0 or report.step == report.steps:
            eta = statistics.median(self.recent) * (report.steps - report.step)
            self.log.write(**dataclasses.asdict(report), eta_s=round(eta, 1))

    def on_evaluation(self, report: EvalReport) -> None:
        self.log.write(event="eval", **dataclasses.asdict(report))

    def on_done(self, result: TrainResult) -> None:
        self.log.write(event="done", step=result.steps, lora=str(result.lora_path))
