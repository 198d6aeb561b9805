"""The worker process of one training job: `python -m dreamrelation.jobs.worker --home HOME --job ID`.

The scheduler starts it in its own process group with stdout and stderr going to HOME/jobs/ID/worker.log.
It trains in this process, continuing from the newest checkpoint of the job's output folder when there is
one, and records the outcome in the job table. It lowers its own CPU priority (WORKER_NICENESS) first.
SIGTERM keeps its default action (exit at once): everything worth keeping is already on disk as checkpoints,
so there is nothing to clean up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from dreamrelation.config import RunConfig
from dreamrelation.data.dataset import DatasetError
from dreamrelation.jobs.store import RUNNING, JobStore
from dreamrelation.models import ModelLoadError, ModelSource
from dreamrelation.models.base import ExpertChoiceError
from dreamrelation.models.memory import InsufficientMemory
from dreamrelation.runtime import quiet_loading_bars
from dreamrelation.train.callbacks import TrainerCallback
from dreamrelation.train.checkpoint import latest_checkpoint
from dreamrelation.train.trainer import train

# Training runs below the app's priority: on a machine whose cores it saturates (a CPU Space), the web server
# still answers status polls and page loads at once, and training only loses the little time they take.
WORKER_NICENESS = 19
_MAX_ERROR_CHARS = 500
# Errors whose message is the whole story (the fix included): logged as one line, without a traceback.
_USER_ERRORS = (InsufficientMemory, ModelLoadError, DatasetError, ExpertChoiceError)


def run_job(store: JobStore, job_id: str) -> int:
    """Train job `job_id` to its end in this process. Returns the exit status: 0 done, 1 failed or not runnable."""
    job = store.update(
        job_id, only_from=("queued", "preparing"), state="preparing", pid=os.getpid(), started=time.time()
    )
    if job is None:  # cancelled (or taken by another worker) before this process got going
        print(f"job {job_id} is {store.load(job_id).state}; not training it", flush=True)
        return 1
    run = job.run
    checkpoint = latest_checkpoint(job.output_dir)
    run = run.model_copy(update={"train": run.train.model_copy(update={"resume": checkpoint is not None})})
    where = f"resuming from {checkpoint.name}" if checkpoint else "from the start"
    print(f"job {job.id}: training relation {job.relation!r}, {where}", flush=True)

    source = ModelSource.model_validate(job.source) if job.source else None  # as the app planned it
    try:
        quiet_loading_bars()
        with warnings.catch_warnings():
            _hide_library_warnings()
            result = train(run, show_progress=False, callbacks=[MarkTraining(store, job.id)], source=source)
    except Exception as error:
        if isinstance(error, _USER_ERRORS):  # the line says it all; a traceback would only bury it
            print(f"job {job.id}: {error}", flush=True)
        else:
            traceback.print_exc()
        store.update(job.id, only_from=RUNNING, state="failed", error=_one_line(error), pid=None, finished=time.time())
        return 1
    store.update(job.id, only_from=RUNNING, state="done", error=None, pid=None, finished=time.time())
    print(f"job {job.id}: done, {result.steps} steps; LoRA at {result.lora_path}", flush=True)
    return 0


def _hide_library_warnings() -> None:
    """Leave out of the log the libraries' warnings about their own internals, which the user can do nothing
    about (the log is what the app shows)."""
    # A diffusers RoPE asks for fp32 autocast, which torch refuses on the CPU and says so at every step.
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
    # peft warns on each named adapter after the first; several named adapters on one model is the method.
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model")


class MarkTraining(TrainerCallback):
    """Moves the job from preparing to training once the model and data are ready and the first step is next."""

    def __init__(self, store: JobStore, job_id: str):
        self.store, self.job_id = store, job_id

    def on_prepared(self, run: RunConfig, step: int, clips: int) -> None:
        self.store.update(self.job_id, only_from=("preparing",), state="training")


def _one_line(error: BaseException) -> str:
    # The table holds what the user reads; the traceback went to worker.log.
    message = " ".join(str(error).split()) or type(error).__name__
    return message[:_MAX_ERROR_CHARS]


def lower_cpu_priority(niceness: int) -> None:
    """Raise this process' nice value by `niceness`, and its autogroup's to `niceness` where Linux has them.

    With autogroups (sched(7)), nice ranks threads only within a session, and the worker runs in a session of
    its own: its group's nice value is the one that lets the app's session go first. Raising it needs no
    privilege; where the file is missing or refuses, the process' own nice value still applies.
    """
    os.nice(niceness)
    try:
        Path("/proc/self/autogroup").write_text(f"{niceness}\n")
    except OSError as error:
        logging.getLogger(__name__).debug("autogroup nice value left alone: %s", error)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: parses --home and --job, runs the job, returns the exit status."""
    parser = argparse.ArgumentParser(description="Run one DreamRelation training job of a job store.")
    parser.add_argument("--home", type=Path, required=True, help="The app's home folder (holds jobs.sqlite3).")
    parser.add_argument("--job", required=True, help="The job id.")
    args = parser.parse_args(argv)
    lower_cpu_priority(WORKER_NICENESS)  # before any tensor work, so torch's thread pool inherits it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # e.g. "resumed from ..."
    return run_job(JobStore(args.home), args.job)


if __name__ == "__main__":
    sys.exit(main())
