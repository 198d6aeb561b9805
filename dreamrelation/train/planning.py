"""Planning a training run before any weight loads: the model resolved once, the experts it trains, its clip
shape and its dataset's captions checked, its memory plan made. The app plans here when it queues a job and
pins the result into the job; `train` plans here when it is given none."""

from __future__ import annotations

from dreamrelation.config import RunConfig
from dreamrelation.data.dataset import DatasetError, check_captions
from dreamrelation.method.adapters import adapter_parameter_count
from dreamrelation.models import ModelSource, plan_memory, resolve_model


def plan_training(run: RunConfig, source: ModelSource | None = None) -> ModelSource:
    """The ModelSource `run` trains on, with its memory plan: `source` as given when it already holds one (a
    job's pinned plan), else resolved from `run.model` (unless given) and planned.

    Raises DatasetError for a caption that does not name two subjects (data.dataset.check_captions) or a clip
    shape the model cannot take, models.base.ExpertChoiceError for an expert it lacks, and
    memory.InsufficientMemory (with the fix) when nothing fits the GPU.
    """
    if source is not None and source.memory is not None:
        return source
    check_captions(run.data.data_dir, run.data.masks_dir)
    source = source or resolve_model(run.model)
    spec = source.spec
    experts = spec.trained_experts(run.train.experts)
    shape = source.clip.resolve(run.data.num_frames, run.data.height, run.data.width)
    if problem := spec.clip_shape_problem(shape.num_frames, shape.height, shape.width):
        raise DatasetError(problem)
    plan = plan_memory(
        source, run.model, shape, training=True, gradient_checkpointing=run.train.gradient_checkpointing,
        adapter_parameters=lambda transformer: adapter_parameter_count(transformer, spec, run.method),
        experts=experts,
    )
    return source.model_copy(update={"memory": plan})
