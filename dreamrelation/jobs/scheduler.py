"""Runs queued training jobs through an executor, in the background of the app.

GPU policy. A job asks for a number of GPUs (default 1). The queue is ordered by turns between owners
(`JobStore.queue`), and jobs start strictly in that order: when the job at the head cannot start yet (it asks
for more GPUs than are free), the jobs behind it wait too. That is what keeps a large job from starving: with
backfilling, small jobs would keep taking the GPUs as they free up one by one, and a safe backfill needs run
times this app cannot know in advance. The executor says whether the head can start and where
(jobs/executors.py): locally, on free GPU slots with CUDA_VISIBLE_DEVICES set to them; on a Ray cluster, when
the job Ray holds waiting for resources has started. Generation borrows a free slot (`lend_slot`) so that no
job starts on the GPU it renders on, and is refused when every slot trains.

Workers never touch the table (jobs/folder.py): the scheduler writes a job's spec into its folder, starts
the worker, and turns what the worker writes back into states. A new scheduler adopts workers still running
and puts jobs whose worker died without a word back in the queue, to continue from their newest checkpoint
(at most 3 tries in all). Run one scheduler per home folder.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dreamrelation.config import RunConfig
from dreamrelation.jobs.executors import Executor
from dreamrelation.jobs.store import ACTIVE, RUNNING, Job, JobError, JobStore
from dreamrelation.train.checkpoint import latest_checkpoint

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # tries per job before a worker that keeps dying (out of memory, a crash) marks it failed


class JobScheduler:
    """Starts queued jobs' workers through `executor` and watches them, from a daemon thread that looks at the
    queue every `poll_s` seconds."""

    def __init__(self, store: JobStore, executor: Executor, poll_s: float = 0.5):
        self.store, self.executor, self.poll_s = store, executor, poll_s
        # One pass (reconcile, then start) at a time: a job claimed but not yet started must not look dead.
        self._lock = threading.RLock()
        self._lent: set[str] = set()  # GPU slots lent to generation
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

    def submit(self, owner: str, relation: str, run: RunConfig, source: dict | None = None, gpus: int = 1) -> Job:
        """Queue a training job for `owner` on `gpus` GPUs, on the model `source` was planned for (a ModelSource as
        JSON; None: the worker plans it); returns it (queued). Raises JobError for a bad name or GPU count."""
        if gpus > self.executor.max_gpus:
            raise JobError(f"a job may ask for 1 to {self.executor.max_gpus} GPU(s) here ({self.executor.describe()})")
        return self.store.create(owner, relation, run, source, gpus)

    @contextmanager
    def lend_slot(self) -> Iterator[str | None]:
        """Lend a GPU slot no job holds for the duration of the block (no job starts on it meanwhile); yields its
        id, or None when every GPU slot is taken (the caller refuses) or the executor has none on this machine (a
        CPU machine, a cluster: the caller runs beside training)."""
        with self._lock:
            free = self.executor.free_slots(self.store.in_states(RUNNING), self._lent)
            slot = free[0] if free else None
            if slot is not None:
                self._lent.add(slot)
        try:
            yield slot
        finally:
            if slot is not None:
                with self._lock:
                    self._lent.discard(slot)

    def cancel(self, job_id: str, owner: str) -> Job:
        """Cancel a job of `owner`: a queued one leaves the queue; a running one's worker is stopped (the whole
        process group locally, the Ray job on a cluster) and this returns once it is gone. Returns the Job.

        Raises JobNotFound, or JobError when the job has already finished (and then changes nothing).
        """
        with self._lock:  # not while a pass is starting this very job
            job = self.store.get(job_id, owner)
            cancelled = self.store.update(job.id, only_from=ACTIVE, state="cancelled", finished=time.time())
        if cancelled is None:  # finished already, or while we looked
            job = self.store.get(job_id, owner)
            raise JobError(f"job {job.id} has already finished ({job.state}); nothing to cancel")
        if job.state in RUNNING:
            self.executor.stop(cancelled)
            cancelled.folder.note("cancelled; stopped the worker")
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
        """Make the table match the workers: a preparing job whose worker is ready moves to training; a job whose
        worker has ended takes the state it reported (done, failed), or, when it ended without a word, goes back
        to the queue (attempts + 1) or to failed once MAX_ATTEMPTS tries have died. Live workers are kept (adopted
        when another scheduler started them). Returns the jobs it changed.
        """
        changed = []
        with self._lock:
            for job in self.store.in_states(RUNNING):
                if self.executor.running(job):
                    changed.append(self._notice_prepared(job))
                elif (outcome := job.folder.outcome()) is not None:
                    changed.append(self.store.update(job.id, only_from=RUNNING, pid=None, finished=time.time(),
                                                     state=outcome["state"], error=outcome["error"]))
                else:
                    changed.append(self._recover(job))
        return [job for job in changed if job is not None]

    def _notice_prepared(self, job: Job) -> Job | None:
        if job.state != "preparing" or (prepared := job.folder.prepared()) is None:
            return None
        # Where the executor placed the job itself (a cluster), the worker says which GPUs it got.
        devices = job.devices or tuple(prepared["devices"])
        return self.store.update(job.id, only_from=("preparing",), state="training", devices=devices)

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
            while not self._stopping.is_set() and (job := self.store.next_queued()) is not None:
                devices = self.executor.place(job, self.store.in_states(RUNNING), self._lent)
                if devices is None:  # the head waits, and so does everyone behind it (see the GPU policy)
                    return
                self._spawn(job, devices)

    def _spawn(self, job: Job, devices: list[str]) -> None:
        job = self.store.update(job.id, only_from=("queued",), state="preparing", pid=None, started=time.time(),
                                devices=devices)
        if job is None:  # cancelled since it was read
            return
        job.folder.write_spec(job.settings, job.source)
        started = time.perf_counter()
        try:
            pid = self.executor.start(job, devices)
        except OSError as error:
            self.store.update(job.id, only_from=RUNNING, state="failed", finished=time.time(),
                              error=f"could not start the worker: {error}")
            return
        where = f"GPU(s) {', '.join(devices)}" if devices else f"the {self.executor.name} executor's choice"
        logger.info("job %s: started on %s in %.3f s", job.id, where, time.perf_counter() - started)
        if pid is not None:
            self.store.update(job.id, only_from=RUNNING, pid=pid)

    def _recover(self, job: Job) -> Job | None:
        attempts = job.attempts + 1
        checkpoint = latest_checkpoint(job.output_dir)
        if attempts >= MAX_ATTEMPTS:
            recovered = self.store.update(
                job.id, only_from=RUNNING, state="failed", pid=None, attempts=attempts, finished=time.time(),
                error=f"the training process stopped unexpectedly {attempts} times; see the log",
            )
            note = f"the worker stopped unexpectedly while {job.state}, {attempts} times now: failed"
        else:
            recovered = self.store.update(job.id, only_from=RUNNING, state="queued", pid=None, attempts=attempts)
            where = checkpoint.name if checkpoint else "the start"
            note = (
                f"the worker stopped unexpectedly while {job.state}; queued again to continue "
                f"from {where} (try {attempts + 1} of {MAX_ATTEMPTS})"
            )
        if recovered is not None:
            job.folder.note(note)
            logger.warning("job %s: %s", job.id, note)
        return recovered
