"""Runs queued training jobs in worker processes, in the background of the app.

GPU policy: one training job at a time. A relation LoRA run takes the whole accelerator (a full-size video transformer
alone fills most of a large GPU), so jobs wait in one first-in-first-out queue, ordered by submission time,
shared by all owners; `max_running` stays 1 except on machines with room for more. Generation is the app's
call: `JobScheduler.training_running()` says whether a training job holds the GPU right now, so the app can
make a generation request wait, or refuse it, while one does.

Each job runs in its own process (`python -m dreamrelation.jobs.worker`), in a process group of its own, so
a cancel stops everything it started and the app can restart without stopping training: a new scheduler
adopts workers still alive and puts jobs whose worker died back in the queue, to continue from their newest
checkpoint (at most 3 tries in all). Run one scheduler per home folder.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil

from dreamrelation.config import RunConfig
from dreamrelation.jobs.store import ACTIVE, RUNNING, Job, JobError, JobStore
from dreamrelation.train.checkpoint import latest_checkpoint

logger = logging.getLogger(__name__)

WORKER_MODULE = "dreamrelation.jobs.worker"
MAX_ATTEMPTS = 3  # tries per job before a worker that keeps dying (out of memory, a crash) marks it failed
KILL_AFTER_S = 5.0  # how long a cancelled worker gets to exit on SIGTERM before SIGKILL


class JobScheduler:
    """Starts queued jobs' workers (at most `max_running` at once) and watches them, from a daemon thread.

    Takes the job store, the Python that runs workers, and how often (seconds) to look at the queue.
    """

    def __init__(self, store: JobStore, python: str = sys.executable, max_running: int = 1, poll_s: float = 0.5):
        self.store = store
        self.python = python
        self.max_running = max_running
        self.poll_s = poll_s
        self._workers: dict[str, subprocess.Popen] = {}  # the workers this scheduler started, by job id
        # One pass (reconcile, then start) at a time: a job claimed but not yet given its pid must not look dead.
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread (reconciles at once, then starts and watches workers); no-op if running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="job-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread and wait for it; running workers keep going (a later scheduler adopts them)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, owner: str, relation: str, run: RunConfig, source: dict | None = None) -> Job:
        """Queue a training job for `owner` on the model `source` was planned for (a ModelSource as JSON; None:
        the worker plans it); returns it (queued). Raises JobError for a bad name."""
        return self.store.create(owner, relation, run, source)

    def training_running(self) -> Job | None:
        """The job (of any owner) whose worker holds the GPU now, or None. For decisions, not for display."""
        running = self.store.in_states(RUNNING)
        return running[0] if running else None

    def cancel(self, job_id: str, owner: str) -> Job:
        """Cancel a job of `owner`: a queued one leaves the queue; a running one's process group gets SIGTERM,
        then SIGKILL after KILL_AFTER_S, and this returns once it is gone. Returns the cancelled Job.

        Raises JobNotFound, or JobError when the job has already finished (and then changes nothing).
        """
        job = self.store.get(job_id, owner)
        cancelled = self.store.update(job.id, only_from=ACTIVE, state="cancelled", finished=time.time())
        if cancelled is None:  # finished already, or while we looked
            job = self.store.get(job_id, owner)
            raise JobError(f"job {job.id} has already finished ({job.state}); nothing to cancel")
        if cancelled.pid is not None and self._alive(cancelled):
            with self._lock:
                worker = self._workers.get(job.id)
            _stop_group(cancelled.pid, worker)
            _note(cancelled, f"cancelled; stopped the worker (pid {cancelled.pid})")
        return self.store.update(job.id, pid=None)

    def resume(self, job_id: str, owner: str) -> Job:
        """Queue a failed or cancelled job of `owner` again, to continue from its newest checkpoint.

        Returns the queued Job; raises JobNotFound, or JobError when the job is in another state or has no
        checkpoint.
        """
        job = self.store.get(job_id, owner)
        if job.state not in ("failed", "cancelled"):
            raise JobError(f"job {job.id} is {job.state}; only a failed or cancelled job can be resumed")
        if latest_checkpoint(job.output_dir) is None:
            raise JobError(f"job {job.id} has no checkpoint to resume from; submit it again instead")
        resumed = self.store.update(
            job.id, only_from=("failed", "cancelled"), state="queued", pid=None, error=None, attempts=0, finished=None
        )
        if resumed is None:
            raise JobError(f"job {job.id} is already queued again")
        return resumed

    def reconcile(self) -> list[Job]:
        """Make the table match the processes: each preparing/training job whose worker is not alive goes back
        to the queue (attempts + 1), or to failed once MAX_ATTEMPTS tries have died; live workers are kept
        (adopted when another scheduler started them). Returns the jobs it changed.
        """
        with self._lock:
            for job_id, worker in list(self._workers.items()):
                if worker.poll() is not None:  # reaps it, so it does not linger as a zombie
                    del self._workers[job_id]
            changed = [self._recover(job) for job in self.store.in_states(RUNNING) if not self._alive(job)]
        return [job for job in changed if job is not None]

    def _loop(self) -> None:
        while True:
            try:
                self.reconcile()
                self._start_queued()
            except Exception:  # a locked database or a full disk must not end scheduling for good
                logger.exception("job scheduler pass failed; trying again")
            if self._stopping.wait(self.poll_s):
                return

    def _start_queued(self) -> None:
        with self._lock:
            while not self._stopping.is_set() and len(self.store.in_states(RUNNING)) < self.max_running:
                job = self.store.next_queued()
                if job is None:
                    return
                self._spawn(job)

    def _spawn(self, job: Job) -> None:
        job = self.store.update(job.id, only_from=("queued",), state="preparing", pid=None, started=time.time())
        if job is None:  # cancelled since it was read
            return
        job.job_dir.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-u", "-m", WORKER_MODULE, "--home", str(self.store.home), "--job", job.id]
        try:
            with open(job.log_path, "ab") as log:
                worker = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        except OSError as error:
            self.store.update(
                job.id, only_from=RUNNING, state="failed", error=f"could not start the worker: {error}",
                finished=time.time(),
            )
            return
        self._workers[job.id] = worker
        logger.info("job %s: started worker pid %d", job.id, worker.pid)
        if self.store.update(job.id, only_from=RUNNING, pid=worker.pid) is None:  # cancelled before it had a pid
            _stop_group(worker.pid, worker)

    def _alive(self, job: Job) -> bool:
        with self._lock:
            worker = self._workers.get(job.id)
        if worker is not None:
            return worker.poll() is None
        return job.pid is not None and _runs_worker_of(job.pid, job.id)

    def _recover(self, job: Job) -> Job | None:
        attempts = job.attempts + 1
        checkpoint = latest_checkpoint(job.output_dir)
        if attempts >= MAX_ATTEMPTS:
            recovered = self.store.update(
                job.id, only_from=RUNNING, state="failed", pid=None, attempts=attempts, finished=time.time(),
                error=f"the training process stopped unexpectedly {attempts} times; see the log",
            )
            note = f"the worker (pid {job.pid}) stopped unexpectedly while {job.state}, {attempts} times now: failed"
        else:
            recovered = self.store.update(job.id, only_from=RUNNING, state="queued", pid=None, attempts=attempts)
            where = checkpoint.name if checkpoint else "the start"
            note = (
                f"the worker (pid {job.pid}) stopped unexpectedly while {job.state}; queued again to continue "
                f"from {where} (try {attempts + 1} of {MAX_ATTEMPTS})"
            )
        if recovered is not None:
            _note(job, note)
            logger.warning("job %s: %s", job.id, note)
        return recovered


def _runs_worker_of(pid: int, job_id: str) -> bool:
    """Whether process `pid` is alive and is the worker of `job_id` (a pid may have been reused since)."""
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:  # gone, a zombie, or not ours to read
        return False
    return WORKER_MODULE in argv and job_id in argv


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


def _stop_group(pid: int, worker: subprocess.Popen | None) -> None:
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


def _note(job: Job, text: str) -> None:
    """Append a scheduler line to the job's worker.log, where the app shows the log tail."""
    job.job_dir.mkdir(parents=True, exist_ok=True)
    with open(job.log_path, "a", encoding="utf-8") as log:
        log.write(f"[scheduler {time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")
