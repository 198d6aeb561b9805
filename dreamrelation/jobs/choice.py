"""Which executor runs an app's training jobs: this machine's GPU slots, or a Ray cluster (jobs/executors.py)."""

from __future__ import annotations

from dreamrelation.config import StudioConfig
from dreamrelation.jobs.executors import CPU_SLOT, Executor, LocalExecutor, visible_gpus


def make_executor(settings: StudioConfig) -> Executor:
    """The executor `settings` ask for: a Ray cluster's (`cluster`), else this machine's GPUs (`gpus`, default
    every visible one; one CPU slot without any). Raises ExecutorError (one line) for a cluster out of reach."""
    if settings.cluster:
        from dreamrelation.jobs.ray_executor import RayExecutor  # Ray is an extra: only a cluster needs it

        return RayExecutor(settings.cluster, settings.max_gpus_per_job)
    named = [device.strip() for device in (settings.gpus or "").split(",") if device.strip()]
    return LocalExecutor(list(dict.fromkeys(named)) or visible_gpus() or [CPU_SLOT])
