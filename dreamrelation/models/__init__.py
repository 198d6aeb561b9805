"""Base models: a registry of families and `load_model`, which turns a ModelConfig into a loaded pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dreamrelation.config import ASSETS_ENV, TOY_MODEL_DIR, ModelConfig
from dreamrelation.models.base import ClipShape, ModelSpecification, read_clip_defaults
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


def load_model(config: ModelConfig) -> LoadedModel:
    """Load the base pipeline named by `config` on its device and dtype; ModelLoadError with a fix otherwise."""
    folder = resolve_source(config)
    spec = specification_for(folder)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    try:
        pipe = spec.load_pipeline(str(folder), dtype, device)
    except Exception as error:
        raise ModelLoadError(f"could not load the pipeline in {folder}: {error}") from error
    return LoadedModel(spec=spec, pipe=pipe, source=config.name, folder=folder, device=device, dtype=dtype,
                       defaults=read_clip_defaults(folder, spec.defaults))


def model_clip_defaults(config: ModelConfig) -> ClipShape:
    """The clip shape of the model `config` names, without loading its weights (for ingesting uploads)."""
    folder = resolve_source(config)
    return read_clip_defaults(folder, specification_for(folder).defaults)


def model_specification(config: ModelConfig) -> ModelSpecification:
    """The family of the model `config` names, without loading its weights (to check a clip shape early)."""
    return specification_for(resolve_source(config))
