"""What the trainer, exporter and generator need from a base model family.

One subclass per family, a file each in this package: it says how to load the pipeline and each of its
components, which clip shapes it takes, which transformers (experts) denoise which noise levels, where each
adapter role goes, how a clip and a caption are encoded, how subject masks map to its latent grid, what can
leave the GPU once the data is encoded, and how one training forward pass is computed. A specification is
bound once to the saved pipeline folder it describes (`bind`, as finetrainers binds a model's configs once),
reading the configs that set its clip rules, VAE factors and experts. Nothing outside models/ names a family.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreamrelation.models.memory import MemoryProfile


# Beside model_index.json, a pipeline folder may say the clip shape it was trained at and the steps and guidance
# it generates well with (the toy model does); what it leaves out, its family's defaults fill.
CLIP_DEFAULTS_FILE = "dreamrelation.json"


@dataclass(frozen=True)
class ClipShape:
    """A clip's frame count, size and rate: a model's defaults, or what a run, an ingest or a request uses."""

    num_frames: int
    height: int
    width: int
    fps: float

    def resolve(self, num_frames: int | None = None, height: int | None = None, width: int | None = None,
                fps: float | None = None) -> "ClipShape":
        """This shape with the values that are set (not None) replaced."""
        given = dict(num_frames=num_frames, height=height, width=width, fps=fps)
        return replace(self, **{name: value for name, value in given.items() if value is not None})


@dataclass(frozen=True)
class GenerationDefaults:
    """The denoising steps and classifier-free guidance scale a model generates with unless told otherwise."""

    steps: int
    guidance_scale: float

    def resolve(self, steps: int | None = None, guidance_scale: float | None = None) -> "GenerationDefaults":
        """These defaults with the values that are set (not None) replaced."""
        given = dict(steps=steps, guidance_scale=guidance_scale)
        return replace(self, **{name: value for name, value in given.items() if value is not None})


def _declared(folder: Path, key: str) -> dict | None:
    """The `key` section of a pipeline folder's CLIP_DEFAULTS_FILE, None when it has none."""
    path = Path(folder) / CLIP_DEFAULTS_FILE
    return json.loads(path.read_text(encoding="utf-8")).get(key) if path.is_file() else None


def read_clip_defaults(folder: Path, family_defaults: ClipShape) -> ClipShape:
    """The clip defaults a pipeline folder declares in CLIP_DEFAULTS_FILE, else `family_defaults`."""
    declared = _declared(folder, "clip_defaults")
    return family_defaults if declared is None else ClipShape(**declared)


def read_generation_defaults(folder: Path, family_defaults: GenerationDefaults) -> GenerationDefaults:
    """The generation defaults a pipeline folder declares in CLIP_DEFAULTS_FILE, else `family_defaults`."""
    declared = _declared(folder, "generation_defaults")
    return family_defaults if declared is None else GenerationDefaults(**declared)


def write_clip_defaults(folder: Path, defaults: ClipShape, generation: GenerationDefaults | None = None) -> Path:
    """Record the clip shape a saved pipeline was trained at and, when given, the generation defaults it is
    served with (read back by read_clip_defaults and read_generation_defaults); returns the file."""
    declared = {"clip_defaults": asdict(defaults)}
    if generation is not None:
        declared["generation_defaults"] = asdict(generation)
    path = Path(folder) / CLIP_DEFAULTS_FILE
    path.write_text(json.dumps(declared, indent=1) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Expert:
    """One transformer of a pipeline and the noise levels it denoises: sigma in [sigma_low, sigma_high)
    (the top one also takes sigma_high = 1). Two-expert pipelines hand the high-noise steps to `transformer`
    and the rest to `transformer_2`."""

    component: str  # the pipeline attribute: "transformer" or "transformer_2"
    name: str  # what users choose it by: "high", "low", or "all" for a one-transformer model
    sigma_low: float
    sigma_high: float

    def holds(self, sigma: float) -> bool:
        """Whether this expert denoises noise level `sigma`."""
        return self.sigma_low <= sigma < self.sigma_high or (sigma == self.sigma_high == 1.0)


ONE_EXPERT = (Expert("transformer", "all", 0.0, 1.0),)


class ExpertChoiceError(ValueError):
    """An --experts choice the model cannot take; the message says which it can."""


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else {}


class ModelSpecification(ABC):
    """A base model family. `bind(folder)` returns the specification of one saved pipeline of it; the loaded
    pipeline is passed in where weights are needed."""

    pipeline_class_name: str
    defaults: ClipShape
    generation: GenerationDefaults  # the family's diffusers pipeline's own call defaults
    max_num_frames: int  # the longest clip the family generates or trains on
    frame_group: int  # clips have 1 + k * frame_group frames (the VAE's causal time compression)
    side_multiple: int = 16  # heights and widths are multiples of this (VAE space factor x patch size)
    # Projection names (relative to one attention module) of each adapter placement.
    projections: dict[str, tuple[str, ...]]
    block_lists: tuple[str, ...]  # the transformer's ModuleList(s) of blocks (memory estimate, offloading)
    memory_profile: MemoryProfile  # activation constants of the peak-memory estimate (models/memory.py)
    experts: tuple[Expert, ...] = ONE_EXPERT  # the pipeline's transformers, high noise first
    vae_config: object = None  # the bound folder's VAE config (latent statistics), as the VAE reads it
    folder: Path | None = None  # the saved pipeline this specification is bound to

    def bind(self, folder: Path) -> "ModelSpecification":
        """This family's specification of the saved pipeline in `folder`: a copy holding its VAE config and
        whatever the family reads from its configs (`_bound_attributes`)."""
        bound = copy.copy(self)
        bound.folder = Path(folder)
        index = _read_json(bound.folder / "model_index.json")
        bound.vae_config = _meta_config(bound.folder, "vae", index["vae"])
        for name, value in bound._bound_attributes(bound.folder, index).items():
            setattr(bound, name, value)
        return bound

    def _bound_attributes(self, folder: Path, index: dict) -> dict:
        """Attributes of this specification that the pipeline in `folder` (its model_index.json: `index`) sets."""
        return {}

    def trained_experts(self, choice: str) -> tuple[Expert, ...]:
        """The experts a run trains for an --experts choice ('high', 'low', 'both'). A one-transformer model has
        one expert for every noise level, which 'high' (the default) means; ExpertChoiceError otherwise."""
        if len(self.experts) == 1:
            if choice != "high":
                raise ExpertChoiceError(f"experts {choice!r}: this model has one transformer for every noise "
                                        "level; choosing an expert applies to models with a high-noise and a "
                                        "low-noise transformer")
            return self.experts
        by_name = {expert.name: expert for expert in self.experts}
        return tuple(self.experts) if choice == "both" else (by_name[choice],)

    def lora_load_kwargs(self, component: str) -> dict:
        """The keyword arguments of the pipeline's `load_lora_weights` that put a LoRA into transformer
        `component` (none: the pipeline's one transformer)."""
        return {}

    def expert_for(self, sigma: float) -> Expert:
        """The expert that denoises noise level `sigma`."""
        return next(expert for expert in self.experts if expert.holds(sigma))

    def load_pipeline(self, source: str, dtype: torch.dtype, quantization=None, without: tuple[str, ...] = ()):
        """Load the family's diffusers pipeline from a folder in `dtype`, on the CPU, with the components named in
        `without` left out (None); `quantization` is a diffusers PipelineQuantizationConfig or None."""
        import diffusers

        # The family's own class, not DiffusionPipeline: diffusers reads its optional components (a second expert,
        # `transformer_2`, left out by None) from the class `from_pretrained` is called on.
        pipe = getattr(diffusers, self.pipeline_class_name).from_pretrained(
            source, dtype=dtype, quantization_config=quantization, **{name: None for name in without},
            **{name: self.load_component(source, name, dtype) for name in self.separately_loaded if name not in without},
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    separately_loaded: tuple[str, ...] = ()  # components load_pipeline loads with load_component (own dtype)

    def load_component(self, source: str, name: str, dtype: torch.dtype) -> torch.nn.Module:
        """One model component (e.g. 'text_encoder', 'vae') of the saved pipeline in `source`, in `dtype`, on the
        CPU: the class model_index.json names, from its subfolder."""
        import diffusers
        import transformers

        library, class_name = _read_json(Path(source) / "model_index.json")[name]
        cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
        return cls.from_pretrained(source, subfolder=name, dtype=dtype)

    @abstractmethod
    def attention_paths(self, transformer: torch.nn.Module) -> list[str]:
        """Full module paths of the attention modules that carry adapters, in block order."""

    def target_modules(self, transformer: torch.nn.Module, placement: str) -> list[str]:
        """Full module paths of the Linear layers of one placement (a key of `projections`) in every block.

        Full paths matter: a bare `to_q` would also match unrelated layers (e.g. a pooler). Call this before
        the first adapter is added: wrapped layers are no longer `nn.Linear`.
        """
        modules = dict(transformer.named_modules())
        paths = []
        for attention in self.attention_paths(transformer):
            dead = self.unused_projections(modules[attention])
            for projection in self.projections[placement]:
                path = f"{attention}.{projection}"
                if projection not in dead and isinstance(modules.get(path), torch.nn.Linear):
                    paths.append(path)
        return paths

    def unused_projections(self, attention: torch.nn.Module) -> set[str]:
        """Projections of this attention module whose output never reaches the model's output (an adapter
        there would train nothing)."""
        return set()

    def original_lora_state(self, state: dict[str, torch.Tensor], alphas: dict[str, float]) -> dict[str, torch.Tensor]:
        """A LoRA of the transformer in diffusers' keys (`<module>.lora_A.weight`, `<module>.lora_B.weight`) ->
        the same LoRA in the keys of the family's original checkpoints, the format ComfyUI loads.

        `alphas` maps each module path to its alpha; a `<module>.alpha` scalar is written where it differs from
        the module's rank (readers take alpha = rank otherwise). ValueError when the family has no such format.
        """
        raise ValueError("this model family has no ComfyUI format; export the diffusers file")

    @abstractmethod
    def max_text_length(self, pipe) -> int:
        """Number of text tokens the pipeline encodes a caption to."""

    def text_length_problem(self, pipe, text: str) -> str | None:
        """'N tokens long and the model reads at most L; shorten it' when `text` is longer than the tokens the
        pipeline reads (its tokenizer would cut it silently), else None."""
        count = len(pipe.tokenizer(text, verbose=False).input_ids)  # verbose: no warning of its own
        limit = self.max_text_length(pipe)
        if count <= limit:
            return None
        return f"{count} tokens long and the model reads at most {limit}; shorten it"

    def clip_shape_problem(self, num_frames: int | None, height: int | None, width: int | None) -> str | None:
        """A line saying which of the clip's frames, height and width (None: unset) the family cannot take and
        the nearest values it can, else None."""
        group = self.frame_group
        if num_frames is not None and (num_frames - 1) % group:
            nearest = max(1, round((num_frames - 1) / group)) * group + 1
            examples = f"e.g. {group * 2 + 1}, {group * 4 + 1}"
            return f"num_frames: this model needs {group}k+1 frames ({examples}); {num_frames} -> {nearest}"
        if num_frames is not None and num_frames > self.max_num_frames:
            return f"num_frames: at most {self.max_num_frames} for this model, got {num_frames}"
        for name, side in (("height", height), ("width", width)):
            if side is not None and side % self.side_multiple:
                nearest = max(1, round(side / self.side_multiple)) * self.side_multiple
                return f"{name}: this model needs a multiple of {self.side_multiple}; {side} -> {nearest}"
        return None

    @abstractmethod
    def encode_prompts(self, pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (embeddings (B, L, D), attention mask (B, L) bool), on the pipeline's device."""

    def encode_clip(self, pipe, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames (F, H, W, 3) -> VAE posterior (mean, logvar), each (C, F', H', W') fp32, unnormalised.

        Both families' VAEs take (1, 3, F, H, W) in [-1, 1] and return a diagonal Gaussian."""
        vae = pipe.vae
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None]  # (1, 3, F, H, W)
        video = video.to(vae.device, vae.dtype) / 127.5 - 1.0
        with torch.no_grad():
            posterior = vae.encode(video).latent_dist
        return posterior.mean[0].float().cpu(), posterior.logvar[0].float().cpu()

    @abstractmethod
    def normalize_latents(self, config, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents (B, C, F', H', W') -> the transformer's latent space, given the VAE config (latent mean,
        std and scaling factor): the inverse of the pipeline's decode scaling."""

    @abstractmethod
    def latent_factors(self) -> tuple[int, int]:
        """(space, time) compression of the bound pipeline's VAE, as the pipeline itself reads them."""

    @abstractmethod
    def offload_after_encoding(self, pipe) -> list[torch.nn.Module]:
        """The components training no longer needs once captions and clips are encoded (they leave the GPU)."""

    def masks_to_latent_grid(self, masks: torch.Tensor) -> torch.Tensor:
        """Pixel masks (S, F, H, W) in [0, 1] -> latent-grid masks (S, F', H/s, W/s) of the bound pipeline's VAE.

        A cell is 1 where any subject pixel falls (max-pool in space); latent frame 0 takes mask frame 0 and
        latent frame k >= 1 the mean of frames t(k-1)+1 .. tk, as a causal VAE with time factor t groups them.
        """
        space, time = self.latent_factors()
        if (masks.shape[1] - 1) % time:
            raise ValueError(f"masks need {time}k+1 frames, got {masks.shape[1]}")
        pooled = F.max_pool2d(masks.float(), space)  # (S, F, H/s, W/s), frames as channels
        rest = pooled[:, 1:].unflatten(1, (-1, time)).mean(dim=2)
        return torch.cat([pooled[:, :1], rest], dim=1)

    @abstractmethod
    def training_forward(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One flow-matching forward pass.

        Takes clean latents and noise (B, C, F', H', W'), sigmas (B,) in [0, 1], text (B, L, D) and mask (B, L),
        and the transformer's compute dtype; returns (prediction, target), both fp32 (B, C, F', H', W').
        """


def _meta_config(folder: Path, name: str, entry: list):
    """The full config (defaults filled in) of component `name` of a saved pipeline, built on the meta device
    from its config file: no weights are read."""
    import diffusers
    from accelerate import init_empty_weights

    cls = getattr(diffusers, entry[1])
    with init_empty_weights():
        return cls.from_config(cls.load_config(folder / name)).config
