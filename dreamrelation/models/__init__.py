"""Base models: a registry of families, `resolve_model` (a name -> a ModelSource, once per job) and `load_model`,
which loads what a job needs of it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from dreamrelation.config import ASSETS_ENV, TOY_MODEL_DIR, ModelConfig
from dreamrelation.models import memory
from dreamrelation.models.memory import MemoryPlan
from dreamrelation.models.base import (
    ClipShape,
    Expert,
    GenerationDefaults,
    ModelSpecification,
    read_clip_defaults,
    read_generation_defaults,
)
from dreamrelation.models.mochi import MochiSpecification
from dreamrelation.models.wan import WanSpecification
from dreamrelation.runtime import resolve_device, resolve_dtype

FAMILIES: dict[str, ModelSpecification] = {"MochiPipeline": MochiSpecification(), "WanPipeline": WanSpecification()}

HUB_ALIASES = {
    "mochi-1": "genmo/mochi-1-preview",
    "wan2.1-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "wan2.1-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "wan2.2-a14b": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    "wan2.2-5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
}
# name -> size in models/tiny_random.py
TINY_RANDOM = {
    "tiny-random": "tiny", "tiny-random-small": "small", "tiny-random-wan": "wan", "tiny-random-wan22": "wan22",
    "tiny-random-wan22-5b": "wan22-5b",
}
ENCODERS = ("text_encoder", "vae")  # what a run whose clips and captions are all cached never loads


class ModelLoadError(RuntimeError):
    """The base model cannot be found or loaded; the message says how to provide it."""


class ModelSource(BaseModel):
    """A model name resolved once, where a job is planned: its pipeline folder, clip and generation defaults and,
    once planned, the memory plan. JSON-ready: the studio pins it into the job and the worker and trainer use it
    as given; the family's specification is bound to the folder on first use (`spec`)."""

    model_config = ConfigDict(extra="forbid")

    name: str  # what the user chose (an alias, a Hub id, a folder)
    folder: Path
    clip: ClipShape  # the clip shape it generates and trains at unless told otherwise
    generation: GenerationDefaults  # the steps and guidance it generates with unless told otherwise
    memory: MemoryPlan | None = None  # the preset a planned job runs with, and why

    @cached_property
    def spec(self) -> ModelSpecification:
        """The family's specification bound to `folder`."""
        return specification_for(self.folder)


@dataclass
class LoadedModel:
    spec: ModelSpecification
    pipe: object
    source: str
    folder: Path
    device: torch.device
    dtype: torch.dtype
    defaults: ClipShape  # the clip shape it generates and trains at unless told otherwise
    generation: GenerationDefaults  # the steps and guidance it generates with unless told otherwise
    memory: memory.MemoryPlan  # the memory preset it was loaded with, and why

    def ensure_encoders(self) -> None:
        """Load the text encoder and the VAE onto the device if they were left out (a run whose cache was warm
        until now); generation loads every component up front."""
        for name in ENCODERS:
            if getattr(self.pipe, name, None) is None:
                component = self.spec.load_component(str(self.folder), name, self.dtype).to(self.device)
                self.pipe.register_modules(**{name: component})
                if name == "vae" and self.memory.vae_tiling:
                    component.enable_tiling()


def specification_for(folder: Path) -> ModelSpecification:
    """The specification of a saved pipeline folder: its family (from model_index.json) bound to it."""
    index = folder / "model_index.json"
    if not index.exists():
        raise ModelLoadError(f"{folder} is not a saved diffusers pipeline (no model_index.json)")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name not in FAMILIES:
        raise ModelLoadError(f"{folder} holds a {class_name}; supported pipelines: {sorted(FAMILIES)}")
    return FAMILIES[class_name].bind(folder)


def _hub_snapshot(repo_id: str, name: str) -> Path:
    """The local snapshot of a Hub model: the cache first, then one download attempt, never a retry loop."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, etag_timeout=10))
    except Exception as error:
        raise ModelLoadError(
            f"model {name!r} ({repo_id}) is not in the Hugging Face cache and could not be downloaded "
            f"({type(error).__name__}). On a connected machine run `hf download {repo_id}`, or pass "
            f"--model /path/to/a/saved/pipeline."
        ) from None


def hub_id(name: str) -> str | None:
    """The Hugging Face Hub id a model name loads from (an alias or an org/name that is no local folder), or
    None for a local, embedded or built model."""
    if name in HUB_ALIASES:
        return HUB_ALIASES[name]
    if name in TINY_RANDOM or name == "toy" or Path(name).expanduser().is_dir() or name.count("/") != 1:
        return None
    return name


def resolve_folder(config: ModelConfig) -> Path:
    """The folder holding the pipeline named by `config.name` (building a tiny-random model on first use, looking
    a Hub id up in the cache): the one step that turns a name into weights on disk."""
    name = config.name
    if name in TINY_RANDOM:
        from dreamrelation.models.tiny_random import materialize_tiny_pipeline

        return materialize_tiny_pipeline(config.cache_dir, seed=config.seed, size=TINY_RANDOM[name])
    if name == "toy":
        if not (TOY_MODEL_DIR / "model_index.json").exists():
            raise ModelLoadError(
                f"the toy model is missing: {TOY_MODEL_DIR} holds no model_index.json (assets/ is not part of a "
                f"wheel: install the checkout with `pip install -e .` or set {ASSETS_ENV} to its assets folder), "
                "or choose another model such as --model tiny-random"
            )
        return TOY_MODEL_DIR
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if (repo_id := hub_id(name)) is not None:
        return _hub_snapshot(repo_id, name)
    raise ModelLoadError(
        f"unknown model {name!r}: use 'toy', {', '.join(map(repr, [*HUB_ALIASES, *TINY_RANDOM]))}, a Hub id (org/name) "
        "or a folder holding a saved pipeline"
    )


def resolve_model(config: ModelConfig) -> ModelSource:
    """The ModelSource of the model `config` names: resolved to a folder once, its family bound to it, its clip
    and generation defaults read (the folder's dreamrelation.json, else the family's). No weights load."""
    folder = resolve_folder(config)
    spec = specification_for(folder)
    return ModelSource(name=config.name, folder=folder, clip=read_clip_defaults(folder, spec.defaults),
                       generation=read_generation_defaults(folder, spec.generation))


def plan_memory(
    source: ModelSource,
    config: ModelConfig,
    shape: ClipShape,
    *,
    training: bool,
    gradient_checkpointing: bool = False,
    adapter_parameters: Callable[[torch.nn.Module], int] = lambda transformer: 0,
    experts: tuple[Expert, ...] | None = None,
) -> memory.MemoryPlan:
    """The memory preset a job on `source` runs with (models/memory.py), before any weight loads; `config` gives
    the device, dtype and the requested preset.

    `shape` is the job's clip; `adapter_parameters(meta transformer)` counts the adapters it trains on each
    expert (none at generation: a relation LoRA is a few MB); `experts` are the transformers resident on the GPU
    (None: all of them, as generation needs). Offload training recomputes activations block by block (a block's
    weights leave the GPU only when no saved activation holds them), so it is estimated with gradient
    checkpointing. Raises memory.InsufficientMemory when nothing fits.
    """
    spec = source.spec
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    resident = [expert.component for expert in (experts or spec.experts)]
    measured = {}

    def estimate(preset: str, free: int | None) -> memory.MemoryEstimate:
        if not measured:  # built once, and only on a GPU: the CPU plans nothing
            pipe = memory.build_meta_pipeline(source.folder)
            space, time = spec.latent_factors()
            measured["size"] = memory.model_size(pipe, spec.block_lists, resident)
            measured["adapters"] = sum(adapter_parameters(getattr(pipe, name)) for name in resident) if training else 0
            measured["tokens"] = memory.clip_tokens(pipe.transformer.config, space, time, spec.max_text_length(pipe),
                                                    shape.num_frames, shape.height, shape.width)
        return memory.estimate_memory(
            measured["size"], spec.memory_profile, measured["tokens"], preset, training=training,
            gradient_checkpointing=gradient_checkpointing or preset == "offload",
            adapter_parameters=measured["adapters"], compute_bytes=dtype.itemsize, free=free,
        )

    return memory.choose_preset(config.memory, device, estimate, f"{shape.num_frames}x{shape.height}x{shape.width}")


def load_model(
    config: ModelConfig,
    plan: memory.MemoryPlan | None = None,
    training: bool = False,
    *,
    source: ModelSource | None = None,
    experts: tuple[Expert, ...] | None = None,
    encoders: bool = True,
) -> LoadedModel:
    """Load the base pipeline `source` (None: resolved from `config`) on `config`'s device and dtype, stored as
    `plan`'s preset says (None: the source's pinned plan, else planned here for generation at the model's default
    clip); ModelLoadError with a fix otherwise.

    Only what the job needs loads: the transformers of `experts` (None: every one), and the text encoder and VAE
    unless `encoders` is False (LoadedModel.ensure_encoders loads them later if the cache turns out cold). With
    offload the transformers stay in CPU memory: at generation they are group-offloaded here; in training
    (`training`) the trainer offloads their frozen layers once the adapters exist (memory.offload_frozen_weights).
    """
    source = source or resolve_model(config)
    spec = source.spec
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    plan = plan or source.memory or plan_memory(source, config, source.clip, training=False)
    quantization = memory.nf4_quantization(dtype) if plan.preset == "nf4" else None
    kept = {expert.component for expert in (experts or spec.experts)}
    without = tuple(expert.component for expert in spec.experts if expert.component not in kept)
    without += () if encoders else ENCODERS
    try:
        pipe = spec.load_pipeline(str(source.folder), dtype, quantization, without)
    except Exception as error:
        raise ModelLoadError(f"could not load the pipeline in {source.folder}: {error}") from error
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and not (name in kept and plan.preset == "offload"):
            component.to(device)
    for name in kept:
        if plan.preset == "fp8":
            memory.cast_to_fp8(getattr(pipe, name), dtype)
        if plan.preset == "offload" and not training:
            memory.offload_for_inference(getattr(pipe, name), device)
    if plan.vae_tiling and encoders:
        pipe.vae.enable_tiling()
    return LoadedModel(spec=spec, pipe=pipe, source=source.name, folder=source.folder, device=device, dtype=dtype,
                       defaults=source.clip, generation=source.generation, memory=plan)
