"""Memory presets for the frozen base, the estimate of a job's peak GPU memory, and the choice between them.

A preset says how the frozen transformer's weights are stored (the adapters always train in fp32):
  bf16     as loaded, in the compute dtype (no saving; on the CPU plain fp32);
  fp8      layerwise casting (diffusers): weights stored in float8_e4m3fn, each layer cast to the compute dtype
           for its forward; norms and embeddings stay as they are (the model's skip list), adapters too;
  offload  group offloading (diffusers): the frozen weights live in CPU memory and reach the GPU a group at a
           time, for cards that cannot hold even fp8 weights (slower: the weights cross PCIe every step);
  nf4      a 4-bit base through bitsandbytes (CUDA only; peft trains LoRA on top of its layers).
`auto` takes the first of AUTO_ORDER whose estimated peak fits the GPU's free memory, and on the CPU bf16
(the compute dtype there is fp32). Every figure is in bytes unless a name says GB.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

PRESETS = ("bf16", "fp8", "offload", "nf4")
# Least lossy first: fp8 costs a little precision and no time; offload costs time and no precision; nf4 is
# never picked for the user (it changes the base's outputs most and needs bitsandbytes).
AUTO_ORDER = ("bf16", "fp8", "offload")
GB = 1024**3
# Bytes per parameter of the frozen transformer in each preset. nf4: 4 bits plus one fp32 scale per block
# of 64 weights (bitsandbytes' default block size).
_STORAGE_BYTES = {"fp8": 1.0, "nf4": 0.5 + 4 / 64}
# AdamW on fp32 adapters: weight, gradient and two moments.
_ADAPTER_TRAINING_BYTES = 16
# CUDA context, cuBLAS workspaces and the allocator's fragmentation: measured figures sit this far above
# the tensors' sum on any model size.
_OVERHEAD = 1.5 * GB


class InsufficientMemory(ValueError):
    """No preset fits the GPU's free memory; the message says what to change."""


@dataclass(frozen=True)
class ModelSize:
    """What the estimate needs of a base model, counted on the meta device (no weights loaded).

    transformer: parameters of the transformer; largest_block: of its largest block (what one offload group
    or one recomputed block holds); blocks: number of blocks; width: the token stream's hidden size;
    encoders: parameters of the text encoder and the VAE (on the GPU while the cache is filled).
    """

    transformer: int
    largest_block: int
    blocks: int
    width: int
    encoders: int


@dataclass(frozen=True)
class ClipTokens:
    """The sequence one clip becomes: latent tokens (frames' x height's x width's patches) and text tokens,
    and the clip's pixel count (frames x height x width, what the VAE sees)."""

    latent: int
    text: int
    pixels: int


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's peak GPU memory by part, in bytes; `total` = the larger of its two phases plus overhead."""

    preset: str
    weights: int  # the frozen transformer as the preset stores it on the GPU
    adapters: int  # adapter weights (and, training, their gradients and optimizer moments)
    activations: int  # the transformer's activations at the peak of a step
    encoding: int  # text encoder + VAE weights and the VAE's activations while clips are encoded/decoded
    vae_tiling: bool  # whether the VAE works in tiles (its untiled activations would not fit)

    @property
    def total(self) -> int:
        return int(self.weights + self.adapters + max(self.activations, self.encoding) + _OVERHEAD)

    def describe(self) -> str:
        """'~31 GB with fp8' (the figure a refusal and the log quote)."""
        return f"~{self.total / GB:.0f} GB with {self.preset}"


@dataclass(frozen=True)
class MemoryProfile:
    """A family's activation constants (ModelSpecification.memory_profile), per token and hidden unit.

    training: bytes a block keeps for backward per token and hidden unit, in units of the compute dtype's
    size (the attention's q, k, v and output, the feed-forward's inner activations, norms and residuals);
    inference: the same for one block's forward without autograd; vae: bytes per pixel the VAE's largest
    layers hold at once, untiled; vae_tile_pixels: frames x height x width of one tile when tiling.
    """

    training: float
    inference: float
    vae: float
    vae_tile_pixels: int


def estimate_memory(
    size: ModelSize,
    profile: MemoryProfile,
    tokens: ClipTokens,
    preset: str,
    *,
    training: bool,
    gradient_checkpointing: bool,
    adapter_parameters: int,
    compute_bytes: int = 2,
    free: int | None = None,
) -> MemoryEstimate:
    """The peak GPU memory of one job (batch 1; generation runs CFG's two branches as a batch of 2).

    Weights: parameters x the preset's bytes; offload holds two blocks (the running one and the next).
    Activations, training: every block keeps profile.training x tokens x width values, or, with gradient
    checkpointing, only its input plus one block recomputed; generation: profile.inference for one block.
    Encoding: encoders in the compute dtype plus the VAE's activations, in tiles when `free` is given and
    the untiled ones would not fit it. Returns a MemoryEstimate.
    """
    sequence = tokens.latent + tokens.text
    per_block = sequence * size.width * compute_bytes
    if preset == "offload":
        weights = 2 * size.largest_block * compute_bytes
    else:
        weights = size.transformer * _STORAGE_BYTES.get(preset, compute_bytes)
    if training:
        adapters = adapter_parameters * _ADAPTER_TRAINING_BYTES
        if gradient_checkpointing:
            activations = size.blocks * per_block + profile.training * per_block
        else:
            activations = size.blocks * profile.training * per_block
    else:
        adapters = adapter_parameters * compute_bytes
        activations = 2 * profile.inference * per_block
    untiled = profile.vae * tokens.pixels
    encoders = size.encoders * compute_bytes
    vae_tiling = free is not None and encoders + untiled + _OVERHEAD > free
    vae = profile.vae * min(tokens.pixels, profile.vae_tile_pixels) if vae_tiling else untiled
    return MemoryEstimate(preset, int(weights), int(adapters), int(activations), int(encoders + vae), vae_tiling)


@dataclass(frozen=True)
class MemoryPlan:
    """The preset a job runs with, its estimate (None on the CPU), and why it was chosen (one line)."""

    preset: str
    estimate: MemoryEstimate | None
    reason: str

    @property
    def vae_tiling(self) -> bool:
        return bool(self.estimate and self.estimate.vae_tiling)


def check_plan_fits(plan: MemoryPlan, device: torch.device,
                    free_memory: Callable[[torch.device], int] | None = None) -> None:
    """Raise InsufficientMemory, in one line, when a job's pinned `plan` (made when it was queued) no longer fits
    the free memory of `device` (another process took some since); nothing to check on the CPU."""
    if plan.estimate is None or device.type != "cuda":
        return
    free = (free_memory or cuda_free_memory)(device)
    if plan.estimate.total > free:
        raise InsufficientMemory(
            f"this job was planned with memory {plan.preset}, which needs {plan.estimate.describe()}, but the GPU now "
            f"has {free / GB:.0f} GB free: free the GPU (another job or app holds it) and resume the job"
        )


def cuda_free_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device (torch.cuda.mem_get_info)."""
    return torch.cuda.mem_get_info(device)[0]


def choose_preset(
    requested: str,
    device: torch.device,
    estimate: Callable[[str, int | None], MemoryEstimate],
    shape_text: str,
    free_memory: Callable[[torch.device], int] = cuda_free_memory,
) -> MemoryPlan:
    """The preset of a job: `requested` ('auto' or one of PRESETS), checked against the free memory.

    `estimate(preset, free)` returns the job's MemoryEstimate; `shape_text` names the clip in messages
    ('61x480x848'). On the CPU nothing is estimated: 'auto' is bf16 (plain fp32 there). Raises
    InsufficientMemory with the fix when the requested preset, or every preset 'auto' may pick, needs more
    than the GPU has free. Returns a MemoryPlan.
    """
    if device.type != "cuda":
        if requested == "nf4":
            raise InsufficientMemory("memory nf4 needs a CUDA GPU (bitsandbytes); on the CPU use auto, bf16 or fp8")
        if requested == "auto":
            return MemoryPlan("bf16", None, "memory auto on the CPU: the base as loaded (fp32), nothing to plan")
        return MemoryPlan(requested, None, f"memory {requested} on the CPU, as requested (no GPU memory to plan)")
    free = free_memory(device)
    candidates = AUTO_ORDER if requested == "auto" else (requested,)
    for preset in candidates:
        fits = estimate(preset, free)
        if fits.total <= free:
            why = "the least lossy preset that fits" if requested == "auto" else "as requested"
            return MemoryPlan(preset, fits, f"memory {preset} ({why}): needs {fits.describe()} at {shape_text}, "
                                            f"{free / GB:.0f} GB free")
    needed = estimate(candidates[0], free)
    hint = "try fewer frames or a smaller size"
    if requested not in ("auto", "offload"):
        hint += " or --memory offload"
    raise InsufficientMemory(
        f"needs {needed.describe()} at {shape_text}; this GPU has {free / GB:.0f} GB free: {hint}"
    )


def build_meta_pipeline(folder: Path):
    """A saved pipeline with its models on the meta device (configs read, no weights): tokenizer, scheduler
    and the pipeline's own attributes are real, so a family's specification can be asked about it."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        library, class_name = entry
        cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
        if issubclass(cls, diffusers.ModelMixin):
            with init_empty_weights():
                components[name] = cls.from_config(cls.load_config(folder / name))
        elif issubclass(cls, transformers.PreTrainedModel):
            with init_empty_weights():
                components[name] = cls(transformers.AutoConfig.from_pretrained(folder / name))
        else:
            components[name] = cls.from_pretrained(folder / name)
    return getattr(diffusers, index["_class_name"])(**components)


def model_size(pipe, block_lists: tuple[str, ...], resident: Sequence[str] = ("transformer",)) -> ModelSize:
    """The ModelSize of a pipeline (meta or loaded); `block_lists` names a transformer's ModuleList(s) of blocks
    (the family's ModelSpecification.block_lists); `resident` the transformers (experts) on the GPU, whose
    weights add up. A step runs one expert, so blocks, width and the largest block are the first one's (two
    experts of one pipeline share their architecture)."""
    transformer = getattr(pipe, resident[0])
    blocks = [block for path in block_lists for block in transformer.get_submodule(path)]
    config = transformer.config
    return ModelSize(
        transformer=sum(p.numel() for name in resident for p in getattr(pipe, name).parameters()),
        largest_block=max(sum(p.numel() for p in block.parameters()) for block in blocks),
        blocks=len(blocks),
        width=config.num_attention_heads * config.attention_head_dim,
        encoders=sum(p.numel() for name in ("text_encoder", "vae") for p in getattr(pipe, name).parameters()),
    )


def patch_sizes(config) -> tuple[int, int, int]:
    """(time, height, width) patch of a transformer config: an int patch is spatial only, a triple is all three."""
    patch = config.patch_size
    return (1, patch, patch) if isinstance(patch, int) else tuple(patch)


def clip_tokens(config, space: int, time: int, text_tokens: int, num_frames: int, height: int, width: int) -> ClipTokens:
    """The ClipTokens of a num_frames x height x width clip for a transformer (its `config`) whose VAE compresses
    by `space` and `time` (causal: 1 + (F - 1) / time latent frames)."""
    patch_t, patch_h, patch_w = patch_sizes(config)
    latent_frames = 1 + (num_frames - 1) // time
    latent = (latent_frames // patch_t) * (height // space // patch_h) * (width // space // patch_w)
    return ClipTokens(latent=latent, text=text_tokens, pixels=num_frames * height * width)


def cast_to_fp8(transformer: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Preset fp8: store the transformer's weights in float8_e4m3fn, computing in `compute_dtype`.

    diffusers' layerwise casting skips the model's precision-critical layers and every peft adapter layer, so
    it may run before adapters are added. peft gives a new adapter its base layer's dtype, float8 here, which
    would round a LoRA's small weights away; it takes a layer's `compute_dtype` instead where one is declared
    (as bitsandbytes layers do), so each cast layer declares its compute dtype.
    """
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
    for module in transformer.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype == torch.float8_e4m3fn:
            module.compute_dtype = compute_dtype


def offload_for_inference(transformer: torch.nn.Module, device: torch.device) -> None:
    """Preset offload at generation: block-level group offloading, one block per group, prefetched on a CUDA
    stream (diffusers re-applies it when a LoRA is loaded or unloaded)."""
    transformer.enable_group_offload(
        onload_device=device, offload_type="block_level", num_blocks_per_group=1, use_stream=device.type == "cuda"
    )


def offload_frozen_weights(transformer: torch.nn.Module, device: torch.device) -> int:
    """Preset offload in training: group offloading of each frozen Linear layer (nearly all of a transformer's
    weights) from CPU memory; everything else (adapters, norms, embeddings, buffers) moves to `device`.

    Not block-level: diffusers moves every parameter of a group, and an adapter moved off the GPU between its
    forward and its backward would get its gradient on the other device. Returns the number of offloaded layers.
    """
    from diffusers.hooks import apply_group_offloading
    from peft.tuners.lora.layer import LoraLayer

    adapter_parts = set(LoraLayer.adapter_layer_names)
    offloaded = set()
    for path, module in transformer.named_modules():
        frozen = not any(p.requires_grad for p in module.parameters())
        if isinstance(module, torch.nn.Linear) and frozen and not adapter_parts & set(path.split(".")):
            apply_group_offloading(module, onload_device=device, offload_type="leaf_level")
            offloaded.add(module)
    for module in transformer.modules():
        if module not in offloaded:
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                tensor.data = tensor.data.to(device)
    return len(offloaded)


def nf4_quantization(compute_dtype: torch.dtype):
    """Preset nf4: the PipelineQuantizationConfig that loads the transformer in 4 bits (bitsandbytes, CUDA)."""
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": compute_dtype},
        components_to_quantize=["transformer"],
    )
