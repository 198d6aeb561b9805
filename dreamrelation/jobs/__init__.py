"""Background training jobs for the app: a job table, a scheduler that starts each job's worker through an
executor (this machine's GPUs, or a Ray cluster), and the status the app shows. No UI code here; see
scheduler.py for the GPU policy."""

from dreamrelation.jobs.choice import make_executor
from dreamrelation.jobs.executors import CPU_SLOT, Executor, ExecutorError, LocalExecutor
from dreamrelation.jobs.scheduler import JobScheduler
from dreamrelation.jobs.status import JobStatus, TrainedRelation, job_status, list_relations
from dreamrelation.jobs.store import ACTIVE, FINISHED, RUNNING, STATES, Job, JobError, JobNotFound, JobStore

__all__ = [
    "ACTIVE",
    "CPU_SLOT",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "make_executor",
    "FINISHED",
    "RUNNING",
    "STATES",
    "Job",
    "JobError",
    "JobNotFound",
    "JobScheduler",
    "JobStatus",
    "JobStore",
    "TrainedRelation",
    "job_status",
    "list_relations",
]
