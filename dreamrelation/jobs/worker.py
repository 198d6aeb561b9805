"""The worker process of one training job: `python -m dreamrelation.jobs.worker --job-dir HOME/jobs/ID`.

The scheduler's executor starts it, on this machine (in a process group of its own, under `accelerate launch`
for a job of several GPUs) or on a cluster's node, with stdout and stderr going to the folder's worker.log.
It never opens the job table: it reads what to train from the job folder and writes back when its first step
is next and how it ended (jobs/folder.py). It trains in this process, continuing from the newest checkpoint
of the job's output folder when there is one. It lowers its own CPU priority (WORKER_NICENESS) first.
SIGTERM keeps its default action (exit at once): everything worth keeping is already on disk as checkpoints,
so there is nothing to clean up.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import traceback
import warnings
from pathlib import Path

from dreamrelation.config import RunConfig
from dreamrelation.data.dataset import DatasetError
from dreamrelation.jobs.folder import JobFolder, one_line
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
# Errors whose message is the whole story (the fix included): logged as one line, without a traceback.
_USER_ERRORS = (InsufficientMemory, ModelLoadError, DatasetError, ExpertChoiceError)


def run_job(folder: JobFolder) -> int:
    """Train the job of `folder` to its end in this process. Returns the exit status: 0 done, 1 failed.

    Under `accelerate launch` every process runs this; only the main one (RANK 0) reports to the folder."""
    job_id = folder.path.name
    run, planned = folder.read_spec()
    checkpoint = latest_checkpoint(run.train.output_dir)
    run = run.model_copy(update={"train": run.train.model_copy(update={"resume": checkpoint is not None})})
    where = f"resuming from {checkpoint.name}" if checkpoint else "from the start"
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    main_process = _is_main_process()
    if main_process:
        print(f"job {job_id}: training on {socket.gethostname()}, GPUs {devices or 'none'} "
              f"(CUDA_VISIBLE_DEVICES), {_processes()} process(es), {where}", flush=True)

    source = ModelSource.model_validate(planned) if planned else None  # as the app planned it
    callbacks = [ReportPrepared(folder, devices)] if main_process else []
    try:
        quiet_loading_bars()
        with warnings.catch_warnings():
            _hide_library_warnings()
            result = train(run, show_progress=False, callbacks=callbacks, source=source)
    except Exception as error:
        if isinstance(error, _USER_ERRORS):  # the line says it all; a traceback would only bury it
            print(f"job {job_id}: {error}", flush=True)
        else:
            traceback.print_exc()
        if main_process:
            # The table holds what the user reads; the traceback went to worker.log.
            folder.finish("failed", one_line(str(error)) or type(error).__name__)
        return 1
    if main_process:
        folder.finish("done")
        # The owner reads this log through the app: the file's name, not where the server keeps it.
        print(f"job {job_id}: done, {result.steps} steps; relation LoRA {result.lora_path.name}", flush=True)
    return 0


def _is_main_process() -> bool:
    # RANK is what `accelerate launch` (torchrun) gives each process; read before the trainer builds its
    # Accelerator, since an accelerate state made here would fix the device settings ahead of the run's.
    return os.environ.get("RANK", "0") == "0"


def _processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _hide_library_warnings() -> None:
    """Leave out of the log the libraries' warnings about their own internals, which the user can do nothing
    about (the log is what the app shows)."""
    # A diffusers RoPE asks for fp32 autocast, which torch refuses on the CPU and says so at every step.
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
    # peft warns on each named adapter after the first; several named adapters on one model is the method.
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model")


class ReportPrepared(TrainerCallback):
    """Tells the scheduler, through the job folder, that the model and data are ready and the first step is next
    (the job goes from preparing to training), and on which host and GPUs (`devices`: CUDA_VISIBLE_DEVICES)."""

    def __init__(self, folder: JobFolder, devices: str):
        self.folder, self.devices = folder, devices

    def on_prepared(self, run: RunConfig, step: int, clips: int) -> None:
        ids = [device for device in self.devices.split(",") if device]
        self.folder.mark_prepared(socket.gethostname(), ids, _processes())


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
    """Command-line entry: parses --job-dir, runs the job, returns the exit status."""
    parser = argparse.ArgumentParser(description="Run one DreamRelation training job from its job folder.")
    parser.add_argument("--job-dir", type=Path, required=True, help="The job's folder, HOME/jobs/ID (holds job.json).")
    args = parser.parse_args(argv)
    lower_cpu_priority(WORKER_NICENESS)  # before any tensor work, so torch's thread pool inherits it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # e.g. "resumed from ..."
    return run_job(JobFolder(args.job_dir))


if __name__ == "__main__":
    sys.exit(main())
