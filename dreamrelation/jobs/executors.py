"""Where training workers run: the interface the scheduler drives, and the local executor (this machine's GPUs).

The scheduler decides which job goes next (the queue's turns, jobs/store.py); an executor decides whether it
can start now and where, starts its worker, says whether it still runs, and stops it. Both executors keep no
state the table does not have, so a restarted app adopts running workers from the table alone.

    LocalExecutor   a worker process per job on this machine, on GPU slots it hands out itself
    RayExecutor     (jobs/ray_executor.py) a Ray job per job on a cluster, placed by Ray
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

import psutil

from dreamrelation.jobs.store import Job

logger = logging.getLogger(__name__)

WORKER_MODULE = "dreamrelation.jobs.worker"
CPU_SLOT = "cpu"  # the one slot of a machine without GPUs: its job gets no CUDA_VISIBLE_DEVICES
KILL_AFTER_S = 5.0  # how long a cancelled worker gets to exit on SIGTERM before SIGKILL


class ExecutorError(RuntimeError):
    """The executor cannot serve this app (a cluster out of reach, a home it cannot see); one line for the user."""


def worker_command(python: str, job_dir: Path, processes: int) -> list[str]:
    """The command that trains the job of `job_dir` in `processes` processes: the worker module itself, or under
    `accelerate launch` (the trainer's data-parallel path) for more than one."""
    worker = ["-m", WORKER_MODULE, "--job-dir", str(job_dir)]
    if processes == 1:
        return [python, "-u", *worker]
    # --multi_gpu selects torchrun (gloo on a machine without GPUs); a port of its own per job, since jobs
    # run side by side on one machine.
    return [python, "-u", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
            "--num_processes", str(processes), "--main_process_port", str(_free_port()),
            "--mixed_precision", "no", "--dynamo_backend", "no", *worker]


class Executor(ABC):
    """Runs the workers of the scheduler's jobs. The scheduler calls it from one thread at a time."""

    name: str

    @property
    @abstractmethod
    def max_gpus(self) -> int:
        """The most GPUs one job may ask for here."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the page: where jobs train (e.g. "4 GPUs on this machine (0, 1, 2, 3)")."""

    def check_home(self, home: Path) -> None:
        """Raise ExecutorError (one line) when the workers cannot see `home` at the same path; here they can."""

    @abstractmethod
    def place(self, job: Job, running: list[Job], held: Iterable[str]) -> list[str] | None:
        """The GPU ids `job` would start on now, [] when the executor places it itself, or None when it must wait.
        `running`: the jobs whose workers run; `held`: GPU ids lent to something else (generation)."""

    @abstractmethod
    def start(self, job: Job, devices: list[str]) -> int | None:
        """Start `job`'s worker on `devices` (as `place` gave them); returns its process id where it has one
        on this machine, else None. Raises OSError when it cannot start."""

    @abstractmethod
    def running(self, job: Job) -> bool:
        """Whether `job`'s worker still runs: one this executor started, or one an earlier app started (adopted)."""

    @abstractmethod
    def stop(self, job: Job) -> None:
        """Stop `job`'s worker and everything it started; returns once it is gone."""

    @property
    def gpu_slots(self) -> list[str]:
        """The GPU ids of this machine the executor trains on ([] when its jobs run elsewhere or on the CPU)."""
        return []

    def free_slots(self, running: list[Job], held: Iterable[str]) -> list[str]:
        """Slots on this machine that no job and nothing else holds (for generation); [] when it has none."""
        return []


class LocalExecutor(Executor):
    """A worker process per job on this machine, each on GPU slots of its own (`slots`: GPU ids as
    CUDA_VISIBLE_DEVICES names them, or [CPU_SLOT] on a machine without GPUs), run by `python`."""

    name = "local"

    def __init__(self, slots: list[str], python: str = sys.executable):
        if not slots:
            raise ValueError("the local executor needs at least one slot")
        self.slots, self.python = list(slots), python
        self._workers: dict[str, subprocess.Popen] = {}  # the workers this executor started, by job id

    @property
    def max_gpus(self) -> int:
        return len(self.slots)

    def describe(self) -> str:
        if self.slots == [CPU_SLOT]:
            return "one job at a time on this machine's CPU"
        return f"{len(self.slots)} GPU(s) on this machine ({', '.join(self.slots)}), a job on each free one"

    @property
    def gpu_slots(self) -> list[str]:
        return [] if self.slots == [CPU_SLOT] else list(self.slots)

    def free_slots(self, running: list[Job], held: Iterable[str]) -> list[str]:
        # The CPU slot is never lent: on a machine without GPUs generation runs beside training.
        return [slot for slot in self._free(running, held) if slot != CPU_SLOT]

    def place(self, job: Job, running: list[Job], held: Iterable[str]) -> list[str] | None:
        free = self._free(running, held)
        return free[: job.gpus] if len(free) >= job.gpus else None

    def _free(self, running: list[Job], held: Iterable[str]) -> list[str]:
        taken = {device for job in running for device in job.devices} | set(held)
        return [slot for slot in self.slots if slot not in taken]

    def start(self, job: Job, devices: list[str]) -> int | None:
        environment = dict(os.environ)
        if devices != [CPU_SLOT]:
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        command = worker_command(self.python, job.job_dir, len(devices))
        with open(job.log_path, "ab") as log:
            worker = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      env=environment, start_new_session=True)
        self._workers[job.id] = worker
        return worker.pid

    def running(self, job: Job) -> bool:
        worker = self._workers.get(job.id)
        if worker is not None:
            if worker.poll() is None:
                return True
            del self._workers[job.id]  # reaped, so it does not linger as a zombie
            return False
        return job.pid is not None and runs_worker_of(job.pid, job.job_dir)

    def stop(self, job: Job) -> None:
        worker = self._workers.get(job.id)
        pid = job.pid if job.pid is not None else (worker.pid if worker is not None else None)
        if pid is not None and (worker is not None or runs_worker_of(pid, job.job_dir)):
            stop_group(pid, worker)
        self._workers.pop(job.id, None)


def torch_device(slot: str) -> str | None:
    """The torch device ('cuda:N') of GPU slot `slot` in this process, None when this process does not see it."""
    visible = visible_gpus()
    return f"cuda:{visible.index(slot)}" if slot in visible else None


def visible_gpus() -> list[str]:
    """The GPU ids this machine lets the app use: CUDA_VISIBLE_DEVICES' names when set, else 0..n-1; [] without."""
    import torch

    count = torch.cuda.device_count()
    named = [device for device in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if device.strip()]
    return [device.strip() for device in named[:count]] if named else [str(index) for index in range(count)]


def runs_worker_of(pid: int, job_dir: Path) -> bool:
    """Whether process `pid` is alive and is a worker (or its launcher) of the job in `job_dir` (a pid may have been
    reused since)."""
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:  # gone, a zombie, or not ours to read
        return False
    return WORKER_MODULE in argv and str(job_dir) in argv


def _group_members(group: int) -> list[int]:
    """The live (not zombie) processes of process group `group`."""
    members = []
    for process in psutil.process_iter(["status"]):  # processes that exit meanwhile are skipped
        if process.info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        try:
            if os.getpgid(process.pid) == group:
                members.append(process.pid)
        except ProcessLookupError:  # it exited while we looked
            continue
    return members


def stop_group(pid: int, worker: subprocess.Popen | None) -> None:
    """SIGTERM the process group of `pid`, SIGKILL it if anything is left after KILL_AFTER_S; returns once it is
    empty (or KILL_AFTER_S after the SIGKILL). `worker` is its Popen when this process started it."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + KILL_AFTER_S
        while time.monotonic() < deadline:
            if worker is not None:
                worker.poll()  # reap our own child, which would otherwise stay in the group as a zombie
            if not _group_members(group):
                return
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
