"""Base models: a registry of families and `load_model`, which turns a ModelConfig into a loaded pipeline."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dreamrelation.config import ASSETS_ENV, TOY_MODEL_DIR, ModelConfig
from dreamrelation.models import memory
from dreamrelation.models.base import (
    ClipShape,
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
}
# name -> size in models/tiny_random.py
TINY_RANDOM = {"tiny-random": "tiny", "tiny-random-small": "small", "tiny-random-wan": "wan"}


class ModelLoadError(RuntimeError):
    """The base model cannot be found or loaded; the message says how to provide it."""


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


def specification_for(folder: Path) -> ModelSpecification:
    """The family of a saved pipeline folder, from its model_index.json."""
    index = folder / "model_index.json"
    if not index.exists():
        raise ModelLoadError(f"{folder} is not a saved diffusers pipeline (no model_index.json)")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name not in FAMILIES:
        raise ModelLoadError(f"{folder} holds a {class_name}; supported pipelines: {sorted(FAMILIES)}")
    return FAMILIES[class_name]


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


def resolve_source(config: ModelConfig) -> Path:
    """The folder holding the pipeline named by `config.name` (building tiny-random on first use)."""
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


def plan_memory(
    config: ModelConfig,
    shape: ClipShape,
    *,
    training: bool,
    gradient_checkpointing: bool = False,
    adapter_parameters: Callable[[torch.nn.Module], int] = lambda transformer: 0,
) -> memory.MemoryPlan:
    """The memory preset a job on the model `config` names runs with (models/memory.py), before any weight loads.

    `shape` is the job's clip; `adapter_parameters(meta transformer)` counts the adapters it trains (none at
    generation: a relation LoRA is a few MB). Offload training recomputes activations block by block (a block's
    weights leave the GPU only when no saved activation holds them), so it is estimated with gradient
    checkpointing. Raises memory.InsufficientMemory when nothing fits.
    """
    folder = resolve_source(config)
    spec = specification_for(folder)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    measured = {}

    def estimate(preset: str, free: int | None) -> memory.MemoryEstimate:
        if not measured:  # built once, and only on a GPU: the CPU plans nothing
            pipe = memory.build_meta_pipeline(folder)
            space, time = spec.latent_factors(pipe)
            measured["size"] = memory.model_size(pipe, spec.block_lists)
            measured["adapters"] = adapter_parameters(pipe.transformer) if training else 0
            measured["tokens"] = memory.clip_tokens(pipe.transformer.config, space, time, spec.max_text_length(pipe),
                                                    shape.num_frames, shape.height, shape.width)
        return memory.estimate_memory(
            measured["size"], spec.memory_profile, measured["tokens"], preset, training=training,
            gradient_checkpointing=gradient_checkpointing or preset == "offload",
            adapter_parameters=measured["adapters"], compute_bytes=dtype.itemsize, free=free,
        )

    return memory.choose_preset(config.memory, device, estimate, f"{shape.num_frames}x{shape.height}x{shape.width}")


def load_model(config: ModelConfig, plan: memory.MemoryPlan | None = None, training: bool = False) -> LoadedModel:
    """Load the base pipeline named by `config` on its device and dtype, stored as `plan`'s preset says (None:
    planned here for generation at the model's default clip); ModelLoadError with a fix otherwise.

    With offload the transformer stays in CPU memory: at generation it is group-offloaded here; in training
    (`training`) the trainer offloads its frozen layers once the adapters exist (memory.offload_frozen_weights).
    """
    folder = resolve_source(config)
    spec = specification_for(folder)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    defaults = read_clip_defaults(folder, spec.defaults)
    plan = plan or plan_memory(config, defaults, training=False)
    quantization = memory.nf4_quantization(dtype) if plan.preset == "nf4" else None
    try:
        pipe = spec.load_pipeline(str(folder), dtype, quantization)
    except Exception as error:
        raise ModelLoadError(f"could not load the pipeline in {folder}: {error}") from error
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and not (name == "transformer" and plan.preset == "offload"):
            component.to(device)
    if plan.preset == "fp8":
        memory.cast_to_fp8(pipe.transformer, dtype)
    if plan.preset == "offload" and not training:
        memory.offload_for_inference(pipe.transformer, device)
    if plan.vae_tiling:
        pipe.vae.enable_tiling()
    return LoadedModel(spec=spec, pipe=pipe, source=config.name, folder=folder, device=device, dtype=dtype,
                       defaults=defaults, generation=read_generation_defaults(folder, spec.generation), memory=plan)


def model_clip_defaults(config: ModelConfig) -> ClipShape:
    """The clip shape of the model `config` names, without loading its weights (for ingesting uploads)."""
    folder = resolve_source(config)
    return read_clip_defaults(folder, specification_for(folder).defaults)


def model_generation_defaults(config: ModelConfig) -> GenerationDefaults:
    """The steps and guidance scale the model `config` names generates with, without loading its weights."""
    folder = resolve_source(config)
    return read_generation_defaults(folder, specification_for(folder).generation)


def model_specification(config: ModelConfig) -> ModelSpecification:
    """The family of the model `config` names, without loading its weights (to check a clip shape early)."""
    return specification_for(resolve_source(config))
