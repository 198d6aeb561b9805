"""Background training jobs for the app: a job table, a scheduler that runs one worker process per job, and
the status the app shows. No UI code here; see scheduler.py for the GPU policy."""

from dreamrelation.jobs.scheduler import JobScheduler
from dreamrelation.jobs.status import JobStatus, TrainedRelation, job_status, list_relations
from dreamrelation.jobs.store import ACTIVE, FINISHED, RUNNING, STATES, Job, JobError, JobNotFound, JobStore

__all__ = [
    "ACTIVE",
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
