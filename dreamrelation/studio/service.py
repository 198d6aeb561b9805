"""`Studio`: every action of the app for one owner, over the workspace, the job scheduler and the generator."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from dreamrelation.config import GenerateConfig, MaskCorrection, MasksConfig, ModelConfig, StudioConfig
from dreamrelation.export import export_comfyui
from dreamrelation.hub import fetch_relation, push_relation
from dreamrelation.jobs import ACTIVE, FINISHED, Job, JobScheduler, JobStatus, job_status, list_relations
from dreamrelation.jobs.choice import make_executor
from dreamrelation.jobs.executors import torch_device
from dreamrelation.jobs.status import TrainedRelation
from dreamrelation.masks.pipeline import Progress
from dreamrelation.masks.prompts import SubjectPrompt
from dreamrelation.data.dataset import DatasetError
from dreamrelation.models import ModelSource, resolve_model
from dreamrelation.models.base import ClipShape, ExpertChoiceError, GenerationDefaults, ModelSpecification
from dreamrelation.models.memory import InsufficientMemory
from dreamrelation.outputs import RunDir, comfyui_lora_path
from dreamrelation.runtime import resolve_device
from dreamrelation.studio import datasets
from dreamrelation.studio.generation import GenerationRecord, Generator, gallery
from dreamrelation.studio.training import build_run
from dreamrelation.studio.workspace import ZERO_GPU_ENV, StudioError, Workspace, lost_on_restart
from dreamrelation.train.planning import plan_training

BASE_MODEL = "base"  # the relation id that means "no LoRA: the base model alone"


class Studio:
    """The app's use cases. Takes the data directory, the base model's ModelConfig and whether to start the
    job scheduler (one per data directory). Every method takes the owner key (`owner_key` of a session or
    user identity) and sees only that owner's datasets, jobs and files; errors a user can fix are
    StudioError/JobError (ValueError)."""

    def __init__(self, home: Path, model: ModelConfig, start_scheduler: bool = True,
                 settings: StudioConfig | None = None):
        self.workspace = Workspace(home)
        self.model = model
        self.settings = settings or StudioConfig()
        executor = make_executor(self.settings)
        executor.check_home(self.workspace.home)  # ExecutorError: a cluster that cannot see the home
        self.scheduler = JobScheduler(self.workspace.store, executor)
        self.generator = Generator(model, lambda: self.source)
        if start_scheduler:
            self.scheduler.start()

    def owner_key(self, identity: str) -> str:
        """The owner key of 'session:HASH' or 'user:NAME' (a keyed hash: the identity is never stored)."""
        return self.workspace.owner_key(identity)

    @cached_property
    def source(self) -> ModelSource:
        """The base model resolved once for the app's life: its folder, family and defaults (no weights)."""
        return resolve_model(self.model)

    @property
    def spec(self) -> ModelSpecification:
        """The base model's family bound to its folder (what clip shapes it takes, its experts)."""
        return self.source.spec

    @property
    def clip_defaults(self) -> ClipShape:
        """The clip shape the base model trains and generates at by default."""
        return self.source.clip

    @property
    def generation_defaults(self) -> GenerationDefaults:
        """The steps and guidance scale the base model generates with by default (the generation tab's)."""
        return self.source.generation

    @property
    def on_gpu(self) -> bool:
        return resolve_device(self.model.device).type == "cuda"

    def describe(self) -> str:
        """One paragraph (markdown) on the base model, the device and what that means for the user."""
        d = self.clip_defaults
        where = (
            "a GPU: full-size models train in hours, generation takes minutes"
            if self.on_gpu
            else "the CPU: only small models such as the embedded toy model are practical; training takes "
            "minutes, generation seconds"
        )
        if os.environ.get(ZERO_GPU_ENV):
            where = "ZeroGPU: a GPU is lent per generation; training needs dedicated GPU hardware (Space settings)"
        experts = self.spec.experts
        if len(experts) > 1:
            names = " and ".join(f"{e.name}-noise expert (σ {e.sigma_low:.3g}–{e.sigma_high:.3g})" for e in experts)
            experts_line = f" It has two experts, a {names}; relations train the high-noise one by default."
        else:
            experts_line = ""
        return (
            f"Base model **{self.model.name}** ({self.spec.pipeline_class_name}; {d.num_frames} frames, "
            f"{d.width}x{d.height}, {d.fps} fps), "
            f"running on {where}.{experts_line} Training: {self.scheduler.executor.describe()}."
        )

    @property
    def max_gpus_per_job(self) -> int:
        """The most GPUs one training job may ask for here."""
        return self.scheduler.executor.max_gpus

    def storage_warning(self) -> str | None:
        """One line for the page when the data folder is on a Space's own disk (wiped by a restart), else None."""
        if not lost_on_restart(self.workspace.home):
            return None
        return (f"This Space keeps its data in {self.workspace.home}, on its own disk: a restart loses every job, "
                "dataset and relation. Mount a storage bucket as a volume and point DREAMRELATION_HOME at it "
                "(README, 'Docker and Spaces').")

    def training_refusal(self) -> str | None:
        """Why this hardware cannot train (one line), None when it can: ZeroGPU lends a GPU per call, for seconds
        to minutes, and a relation trains for hours."""
        if os.environ.get(ZERO_GPU_ENV):
            return ("training needs dedicated GPU hardware: ZeroGPU lends a GPU per call, for minutes; pick a GPU "
                    "in the Space's settings (README, 'Models': a 24 GB card for the smaller models, 80 GB for the "
                    "largest), or train elsewhere and generate here")
        return None

    # Datasets and masks.
    def create_dataset(
        self, owner: str, relation: str, uploads: list[Path], captions: str | list[str],
        subjects: str | None = None, engine: str = "auto", progress: Progress | None = None,
    ) -> datasets.DatasetReport:
        """Ingest uploads and make their masks (datasets.create_dataset with the app's settings); refused while
        the owner's files use the disk one person may use here."""
        self.check_disk(owner)
        return datasets.create_dataset(
            self.workspace, owner, relation, uploads, captions, self.clip_defaults, MasksConfig(engine=engine),
            subjects, progress,
        )

    @staticmethod
    def example_preview(example: str) -> Path | None:
        """The first video of a bundled example, None for an unknown name."""
        return datasets.example_preview(example)

    def load_example(self, owner: str, example: str) -> datasets.DatasetReport:
        """A new dataset with a bundled example's videos and ground-truth masks (refused as create_dataset is)."""
        self.check_disk(owner)
        return datasets.copy_example(self.workspace, owner, example)

    def dataset(self, owner: str, dataset_id: str) -> datasets.DatasetReport:
        return datasets.read_dataset(self.workspace, owner, dataset_id)

    def list_datasets(self, owner: str) -> list[datasets.DatasetReport]:
        """The owner's datasets, newest first."""
        return datasets.list_datasets(self.workspace, owner)

    def delete_dataset(self, owner: str, dataset_id: str) -> None:
        """Delete one of the owner's datasets (its videos, masks and latents); jobs trained on it keep their runs.
        StudioError when it is not theirs or a queued or training job still reads it."""
        folder = self.workspace.dataset_dir(owner, dataset_id)
        for job in self.workspace.store.list(owner, states=ACTIVE):
            if Path(job.settings["data"]["data_dir"]) == folder:
                raise StudioError(f"job {job.id} ({job.state}) trains on dataset {dataset_id}; cancel it first")
        self.workspace.discard_dataset_dir(folder)

    def overlay_frame(self, owner: str, dataset_id: str, video: str, frame: int):
        """uint8 (H, W, 3): frame `frame` of a video with its masks tinted over it (the frame to click on)."""
        return datasets.overlay_frame(self.workspace, owner, dataset_id, video, frame)

    def correct_masks(
        self, owner: str, dataset_id: str, video: str, correction: MaskCorrection, progress: Progress | None = None,
    ) -> datasets.DatasetReport:
        """Add a correction's clicked points to one video of a dataset and re-propagate its masks."""
        prompt = SubjectPrompt(
            subject=correction.subject - 1, frame=correction.frame,
            points=[(x, y) for x, y, _ in correction.points], labels=[label for _, _, label in correction.points],
        )
        return datasets.correct_masks(self.workspace, owner, dataset_id, video, prompt, MasksConfig(), progress)

    # Training jobs.
    def start_training(self, owner: str, dataset_id: str, preset: str = "quick", settings: dict | None = None,
                       gpus: int = 1) -> Job:
        """Queue a training job on `gpus` GPUs on one of the owner's datasets; returns the job (its id is the
        relation's id). Refused in one line beyond the owner's limits (StudioConfig) or the GPUs there are."""
        if refusal := self.training_refusal():
            raise StudioError(refusal)
        if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= self.max_gpus_per_job:
            raise StudioError(f"a job may ask for 1 to {self.max_gpus_per_job} GPU(s) here "
                              f"({self.scheduler.executor.describe()}), got {gpus!r}")
        self._check_owner_limits(owner)
        report = self.dataset(owner, dataset_id)
        if not report.ready:
            raise StudioError(f"dataset {dataset_id} has no video with masks yet: fix or replace its videos")
        folder = self.workspace.dataset_dir(owner, dataset_id)
        run = build_run(self.model, folder, preset, settings)
        try:
            planned = plan_training(run, self.source)
        except (DatasetError, ExpertChoiceError, InsufficientMemory) as error:  # refused here, before a worker starts
            raise StudioError(str(error)) from None
        # The job carries the model as planned here: the worker loads that folder with that memory preset, and
        # fails in one line, before loading, if the GPU's free memory no longer fits it (memory.check_plan_fits).
        self._drop_unmasked(folder, report)
        return self.scheduler.submit(owner, report.relation, run, planned.model_dump(mode="json"), gpus)

    def _check_owner_limits(self, owner: str) -> None:
        """Refuse (StudioError, one line saying the limit and how to free room) a new job of an owner at a limit."""
        active = self.workspace.store.list(owner, states=ACTIVE)
        if len(active) >= self.settings.max_jobs_per_owner:
            raise StudioError(
                f"you have {len(active)} jobs queued or training, the most one person may have here "
                f"({self.settings.max_jobs_per_owner}); wait for one to finish or cancel one")
        self.check_disk(owner)

    def check_disk(self, owner: str) -> None:
        """Refuse (StudioError) when the owner's datasets and runs use the disk one person may use here."""
        used = self.workspace.disk_used(owner)
        limit = self.settings.max_disk_gb_per_owner * 1e9
        if used >= limit:
            raise StudioError(
                f"your datasets and training runs use {used / 1e9:.2f} GB of the {limit / 1e9:g} GB one person may "
                "use here; delete a dataset or a relation you no longer need to free room")
    @staticmethod
    def _drop_unmasked(folder: Path, report: datasets.DatasetReport) -> None:
        # The trainer refuses a dataset with a video lacking masks; those videos were flagged to the user.
        rejected = folder / "without-masks"
        for video in report.videos:
            if video.error is not None and video.video.exists():
                rejected.mkdir(exist_ok=True)
                video.video.rename(rejected / video.video.name)

    def job_status(self, owner: str, job_id: str) -> JobStatus:
        return job_status(self.workspace.store, job_id, owner)

    def follow_job(self, owner: str, job_id: str, poll_s: float = 1.0, timeout_s: float | None = None) -> Iterator[JobStatus]:
        """Yield the job's status now and at every change (step, state) until it has finished (or timeout)."""
        started, last = time.monotonic(), None
        while True:
            status = self.job_status(owner, job_id)
            key = (status.state, status.step, status.queue_position)
            if key != last:
                yield status
                last = key
            if status.state in FINISHED or (timeout_s is not None and time.monotonic() - started > timeout_s):
                return
            time.sleep(poll_s)

    def cancel_job(self, owner: str, job_id: str) -> Job:
        return self.scheduler.cancel(job_id, owner)

    def resume_job(self, owner: str, job_id: str) -> Job:
        return self.scheduler.resume(job_id, owner)

    def delete_job(self, owner: str, job_id: str) -> None:
        """Delete a finished job of the owner with its run folder (checkpoints, the LoRA, samples) and the
        generations made with it. JobNotFound when it is not theirs; JobError while it is queued or training."""
        job = self.workspace.store.delete(job_id, owner)
        shutil.rmtree(job.job_dir, ignore_errors=True)
        shutil.rmtree(self.workspace.generation_dir(owner, job.id), ignore_errors=True)

    def list_jobs(self, owner: str) -> list[Job]:
        return self.workspace.store.list(owner)

    def list_relations(self, owner: str) -> list[TrainedRelation]:
        return list_relations(self.workspace.store, owner)

    def relation_files(self, owner: str, job_id: str) -> list[Path]:
        """The downloads of a trained relation: its LoRA file per trained expert (diffusers format), its settings
        (config.yaml) and, when the base model's family has that format, each LoRA in ComfyUI's (written on first
        request)."""
        run = RunDir(self._relation(owner, job_id).lora_path.parent)
        loras = list(run.lora_files().values())
        return [*loras, run.config, *filter(None, map(self._comfyui_twin, loras))]

    def _comfyui_twin(self, lora: Path) -> Path | None:
        """The ComfyUI-format copy of one LoRA file, None when the family has no such format."""
        comfyui = comfyui_lora_path(lora)
        # Written again when older than the LoRA: a resumed job exports its LoRA anew.
        if comfyui.exists() and comfyui.stat().st_mtime >= lora.stat().st_mtime:
            return comfyui
        try:
            return export_comfyui(lora, self.spec)
        except ValueError:  # the family has no ComfyUI format
            return None

    def _relation(self, owner: str, job_id: str) -> TrainedRelation:
        for relation in self.list_relations(owner):
            if relation.job_id == job_id:
                return relation
        raise StudioError(f"relation {job_id!r} not found among your trained relations")

    # Generation.
    def generate(self, owner: str, job_id: str, request: GenerateConfig) -> GenerationRecord:
        """Generate with one of the owner's relations, a relation published on the Hub (its id, user/name) or
        BASE_MODEL; the video joins that relation's gallery.

        Generation runs on a GPU slot no training job holds, and is refused when every slot trains (the GPU
        policy, jobs/scheduler.py); on a machine without GPUs it runs beside training.
        """
        with self.scheduler.lend_slot() as slot:
            if slot is None and self.scheduler.executor.gpu_slots:
                raise StudioError("every GPU is training a relation; generate once a job finishes, or cancel one")
            device = torch_device(slot) if slot is not None and self.model.device == "auto" else None
            return self._generate(owner, job_id, request, device)

    def _generate(self, owner: str, job_id: str, request: GenerateConfig, device: str | None) -> GenerationRecord:
        if job_id == BASE_MODEL:
            lora, relation = None, {"relation_id": BASE_MODEL, "relation": "base model"}
        elif "/" in job_id:  # a relation published on the Hub, fetched without the app's own login (token=False)
            lora, relation = fetch_relation(job_id, token=False), {"relation_id": job_id, "relation": job_id}
        else:
            trained = self._relation(owner, job_id)
            # The run folder: every expert's LoRA file loads into its expert.
            lora, relation = trained.lora_path.parent, {"relation_id": job_id, "relation": trained.relation}
        return self.generator.generate(lora, request, self.workspace.generation_dir(owner, job_id), relation, device)

    def publish_relation(self, owner: str, job_id: str, repo_id: str, token: str, private: bool = False) -> str:
        """Publish one of the owner's trained relations to the Hub model repo `repo_id` with the owner's `token`
        (used for this call only: never stored or logged); returns the repo's URL. A blank token is refused:
        the app's own login (a Space's HF_TOKEN) must never publish for its visitors."""
        if not isinstance(token, str) or not token.strip():
            raise StudioError("paste a Hugging Face token with write access to publish (used for this request only)")
        run = self._relation(owner, job_id).lora_path.parent
        return push_relation(run, repo_id, token=token.strip(), private=bool(private))

    def gallery(self, owner: str, job_id: str) -> list[GenerationRecord]:
        """The owner's earlier generations with a relation (or BASE_MODEL), newest first."""
        return gallery(self.workspace.generation_dir(owner, job_id))
