"""What the app shows about jobs: one job's progress (from the table, progress.jsonl and worker.log), and the
relations an owner has trained."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter

from dreamrelation.jobs.store import JobStore
from dreamrelation.outputs import RunDir
from dreamrelation.train.progress import read_progress

LOG_TAIL_LINES = 20
# Where a job's files sit on the server: useless to a remote client (it downloads and generates by job id) and
# telling of the server's layout, whose owner folders are named by owner key.
_SERVER_PATHS = frozenset({"sample_video", "lora_path"})


@dataclass
class JobStatus:
    """Everything the app shows about one job. Paths are None until the file exists."""

    id: str
    relation: str
    state: str
    queue_position: int | None  # 1-based, while queued (owners take turns: JobStore.queue)
    gpus: int  # how many GPUs it asked for
    devices: list[str]  # the GPU ids it runs (or ran) on, as CUDA_VISIBLE_DEVICES names them; [] before it starts
    step: int
    steps: int
    fraction: float  # step / steps
    memory: str  # the memory preset it trains with (planned when it was queued; models/memory.py)
    memory_note: str  # what that means on its device, and why (the plan's reason, e.g. fp32 on the CPU)
    eta_s: float | None  # while training
    losses: dict[str, float]  # the latest step's loss terms: "loss", "loss_rec", and "loss_rcl" once it applies
    loss_history: dict[str, list[tuple[int, float]]]  # (step, value) per term, the run as it was resumed; the
    # evaluation loss's terms ("eval", "eval_inside", "eval_outside") beside the training loss's
    eval_losses: dict[str, float]  # the latest evaluation loss (train/evaluation.py), {} before the first
    sample_video: Path | None  # the newest sample video (RunDir.latest_sample)
    lora_path: Path | None  # when done
    log_tail: list[str]  # the last lines of worker.log
    error: str | None
    attempts: int
    created: float
    started: float | None
    finished: float | None

    def to_dict(self) -> dict:
        """The status as JSON-ready values (paths as strings, (step, value) pairs as lists)."""
        return TypeAdapter(JobStatus).dump_python(self, mode="json")

    def to_public_dict(self) -> dict:
        """to_dict without the server's file paths: what the app's API answers."""
        return _without_server_paths(self.to_dict())


@dataclass
class TrainedRelation:
    """A finished job's relation LoRA, as a gallery or generation page lists it."""

    job_id: str
    relation: str
    lora_path: Path
    steps: int
    created: float

    def to_dict(self) -> dict:
        """The entry as JSON-ready values."""
        return TypeAdapter(TrainedRelation).dump_python(self, mode="json")

    def to_public_dict(self) -> dict:
        """to_dict without the server's file paths: what the app's API answers."""
        return _without_server_paths(self.to_dict())


def job_status(store: JobStore, job_id: str, owner: str) -> JobStatus:
    """The status of job `job_id` of `owner`; raises JobNotFound as JobStore.get does."""
    job = store.get(job_id, owner)
    out = RunDir(job.output_dir)
    records = read_progress(out.progress)
    steps = job.settings["train"]["steps"]  # not job.run: a job saved by an older version must still display
    step, history, latest, evaluated = 0, {}, None, {}
    for record in records:
        if record.get("event") == "start":
            # A resumed run redoes the steps after its checkpoint: forget the first run's values for them.
            step, latest = record["step"], None
            history = {term: [(s, v) for s, v in points if s <= step] for term, points in history.items()}
        elif record.get("event") == "eval":
            evaluated = record["losses"]
            for term, value in evaluated.items():
                history.setdefault(term, []).append((record["step"], value))
        elif "losses" in record:
            step, latest = record["step"], record
            for term, value in record["losses"].items():
                history.setdefault(term, []).append((step, value))
    return JobStatus(
        id=job.id,
        relation=job.relation,
        state=job.state,
        queue_position=store.queue_position(job.id),
        gpus=job.gpus,
        devices=list(job.devices),
        step=step,
        steps=steps,
        fraction=min(step / steps, 1.0),
        memory=job.source["memory"]["preset"] if job.source else job.settings["model"]["memory"],
        memory_note=job.source["memory"]["reason"] if job.source else f"memory {job.settings['model']['memory']}",
        eta_s=latest["eta_s"] if latest is not None and job.state == "training" else None,
        losses=latest["losses"] if latest is not None else {},
        loss_history=history,
        eval_losses=evaluated,
        sample_video=out.latest_sample(),
        lora_path=next(iter(out.lora_files().values()), None) if job.state == "done" else None,
        log_tail=_tail(job.log_path, LOG_TAIL_LINES),
        error=job.error,
        attempts=job.attempts,
        created=job.created,
        started=job.started,
        finished=job.finished,
    )


def list_relations(store: JobStore, owner: str) -> list[TrainedRelation]:
    """The relations `owner` has trained: done jobs whose LoRA file is still there, newest first."""
    relations = []
    for job in store.list(owner, states=("done",)):
        files = RunDir(job.output_dir).lora_files()
        if files:
            steps = job.settings["train"]["steps"]
            relations.append(TrainedRelation(job.id, job.relation, next(iter(files.values())), steps, job.created))
    return relations


def _tail(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8", errors="replace") as log:
        return [line.rstrip("\n") for line in deque(log, maxlen=lines)]


def _without_server_paths(values: dict) -> dict:
    return {name: value for name, value in values.items() if name not in _SERVER_PATHS}
