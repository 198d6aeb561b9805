"""Benchmark: cost of one DreamRelation training step against a plain single-adapter LoRA step.

Times the library's real training iteration (dreamrelation.train.trainer: `prepare_training` sets up adapters,
AdamW, schedule and accelerate as a run does, then `advance` per step) on the same model and the same random
cached data in two configurations, each in its own process so its peak memory is its own:

  (a) plain LoRA     MethodConfig(mode="direct-lora", contrastive=False, mask_loss=False): one adapter on
                     q, k, v and out of every block, plain MSE;
  (b) DreamRelation  MethodConfig() defaults: relation/subject1/subject2/ffn adapters, hybrid-mask loss and
                     the relational contrastive loss; one mode per step, drawn as the trainer draws it.

It prints a markdown table of seconds/step (warm-up steps excluded), peak memory and the ratio (b)/(a); the
project's target is (b)/(a) <= 1.10.

Presets (PRESETS below; each names its family's specification in dreamrelation.models.FAMILIES, bound to the
tiny-random pipeline of the same variant where a model's structure differs from the family's default: Wan 2.2's
two experts and boundary, TI2V-5B's 16x VAE; that pipeline's weights are never used):
  small        (default, CPU) the tiny-random "small" Mochi pipeline (a few million parameters), 25 frames at
               128x128 -> latents (12, 5, 16, 16); peak memory is the process's max RSS.
  small-wan    (CPU) a small random-weight WanTransformer3DModel (4 blocks, 4 heads x 32, text 64, ffn 256, 16
               latent channels), 25 frames at 128x128 -> latents (16, 7, 16, 16).
  small-wan22  (CPU) the same small transformer trained as Wan 2.2 A14B's high-noise expert (its experts have Wan
               2.1's architecture; what differs is the expert: sigma drawn from [0.875, 1], as --experts high).
  mochi-1      (needs --device cuda) the full-size MochiTransformer3DModel with random bf16 weights built on the
               GPU (no download), 61 frames at 480x848 -> latents (12, 11, 60, 106), gradient checkpointing on;
               peak memory is torch.cuda.max_memory_allocated, plus MFU against --peak-tflops.
  wan2.1-1.3b  (needs --device cuda) the full-size WanTransformer3DModel of Wan2.1-T2V-1.3B with random bf16
               weights built on the GPU, 81 frames at 480x832 -> latents (16, 21, 60, 104), 512 zero-padded text
               tokens, gradient checkpointing on.
  wan2.2-5b    (needs --device cuda) the same for Wan2.2-TI2V-5B (30 blocks, 24 heads x 128, ffn 14336, 48 latent
               channels; its VAE compresses 16x in space), 121 frames at 704x1280 -> latents (48, 31, 44, 80).
  wan2.2-a14b-high  (needs --device cuda) one expert of Wan2.2-T2V-A14B (Wan 2.1 14B's architecture: 40 blocks,
               40 heads x 128, ffn 13824), trained as the high-noise expert, 81 frames at 480x832 -> latents
               (16, 21, 60, 104).

--blocks N builds the model with N blocks instead of its own count; with it the full-size presets also run on
the CPU (a check of their code path at tiny sizes, not a measurement).

Run from the repository root:
  PYTHONPATH=. .venv/bin/python benchmarks/train_step.py
  PYTHONPATH=. .venv/bin/python benchmarks/train_step.py --preset small-wan
  PYTHONPATH=. .venv/bin/python benchmarks/train_step.py --preset small-wan22
  PYTHONPATH=. python benchmarks/train_step.py --preset mochi-1 --device cuda --steps 10 --warmup 2
  PYTHONPATH=. python benchmarks/train_step.py --preset wan2.1-1.3b --device cuda --steps 10 --warmup 2
  PYTHONPATH=. python benchmarks/train_step.py --preset wan2.2-a14b-high --device cuda --steps 5 --warmup 1
  PYTHONPATH=. .venv/bin/python benchmarks/train_step.py --preset wan2.1-1.3b --device cpu --blocks 2 \
      --frames 9 --height 64 --width 64 --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable

import torch

from dreamrelation.models.memory import patch_sizes

CONFIGS = {
    "a": ("plain LoRA", dict(mode="direct-lora", contrastive=False, mask_loss=False)),
    "b": ("DreamRelation", {}),
}
CLIPS = 4  # random cached clips the steps draw from
RESULT_MARKER = "TRAIN_STEP_RESULT "
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------------------
# Builders: (args) -> (transformer on args.device, VAE config with the latent statistics normalize_latents reads).


def build_small(args: argparse.Namespace):
    """The tiny-random "small" Mochi pipeline's fp32 transformer on the device, and its VAE config."""
    from dreamrelation.models.tiny_random import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=args.seed, size="small")
    return pipe.transformer.to(args.device), pipe.vae.config


def identity_latent_statistics(channels: int):
    """A stand-in VAE config whose latent mean is 0 and std 1 (what both families' normalize_latents read)."""
    return types.SimpleNamespace(
        z_dim=channels, latents_mean=[0.0] * channels, latents_std=[1.0] * channels, scaling_factor=1.0
    )


def random_on_device(factory: Callable[[], torch.nn.Module], device: str, seed: int) -> torch.nn.Module:
    """A model with random bf16 weights built straight on `device` (no download, no fp32 copy).

    Constructed on the meta device with bf16 as the default dtype (so no fp32 copy is ever materialised), then
    allocated on the device and initialised in place: norm weights 1, biases 0, everything else (Mochi's
    pos_frequencies included) normal(0, 0.02). Parameters the class keeps in fp32 when loaded in bf16
    (`_keep_in_fp32_modules`, e.g. Wan's time embedder, modulation tables and cross-attention norm) are then
    made fp32, as `from_pretrained(torch_dtype=torch.bfloat16)` leaves them.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = factory()
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if name == "weight" and "Norm" in type(module).__name__:
                    parameter.fill_(1.0)
                elif name == "bias":
                    parameter.zero_()
                else:
                    parameter.normal_(0.0, 0.02)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for path, parameter in list(model.named_parameters()):
        if any(part in keep for part in path.split(".")):
            parameter.data = parameter.data.float()
    return model


def build_mochi1(args: argparse.Namespace):
    """Full-size Mochi-1 transformer with random bf16 weights on the device; identity latent statistics."""
    from diffusers import MochiTransformer3DModel

    layers = {} if args.blocks is None else {"num_layers": args.blocks}
    transformer = random_on_device(lambda: MochiTransformer3DModel(**layers), args.device, args.seed)
    return transformer, types.SimpleNamespace(latents_mean=None, latents_std=None, scaling_factor=1.0)


SMALL_WAN = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
    text_dim=64, freq_dim=256, ffn_dim=256, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
# The transformer/config.json of the Wan-AI/*-Diffusers models; what every full-size one shares:
WAN_FULL_SIZE = dict(
    patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6,
)
WAN_1_3B = dict(WAN_FULL_SIZE, num_attention_heads=12, in_channels=16, out_channels=16, ffn_dim=8960, num_layers=30)
WAN22_5B = dict(WAN_FULL_SIZE, num_attention_heads=24, in_channels=48, out_channels=48, ffn_dim=14336, num_layers=30)
# Wan2.2-T2V-A14B's transformer and transformer_2 alike (Wan2.1-T2V-14B's architecture).
WAN_14B = dict(WAN_FULL_SIZE, num_attention_heads=40, in_channels=16, out_channels=16, ffn_dim=13824, num_layers=40)


def wan_config(config: dict, args: argparse.Namespace) -> dict:
    """`config` with args.blocks blocks when --blocks is given."""
    return config if args.blocks is None else {**config, "num_layers": args.blocks}


def build_small_wan(args: argparse.Namespace):
    """A few-million-parameter WanTransformer3DModel with diffusers' own random init, fp32 on the device."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(args.seed)
    config = wan_config(SMALL_WAN, args)
    transformer = WanTransformer3DModel(**config).to(args.device)
    return transformer, identity_latent_statistics(config["in_channels"])


def full_size_wan(config: dict) -> Callable[[argparse.Namespace], tuple[torch.nn.Module, object]]:
    """The builder of a full-size WanTransformer3DModel of `config` (one of the dicts above): random bf16 weights
    on the device, identity latent statistics.

    RoPE's cos/sin tables are non-persistent buffers that the meta-device construction leaves empty: they are
    rebuilt on the device (fp32, as a loaded model has them).
    """

    def build(args: argparse.Namespace):
        from diffusers import WanTransformer3DModel
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        built = wan_config(config, args)
        transformer = random_on_device(lambda: WanTransformer3DModel(**built), args.device, args.seed)
        c = transformer.config
        transformer.rope = WanRotaryPosEmbed(c.attention_head_dim, c.patch_size, c.rope_max_seq_len).to(args.device)
        return transformer, identity_latent_statistics(built["in_channels"])

    return build


# ---------------------------------------------------------------------------------------------------------------
# Per-family FLOP counting (the base weights each token meets, and the attention's shape).


def token_parameters(transformer: torch.nn.Module, family: "Family") -> tuple[int, int]:
    """(N_video, N_text): base weights each video token / each text token is multiplied by in one forward.

    The blocks' Linear layers whose names (inside a block) start with the family's text prefixes count for text
    tokens, those with its video prefixes for video tokens, plus proj_out. The modulation layers and embedders
    act once per sample (or not at all in backward) and are left out. Call before adapters are added (peft
    wraps the Linear layers).
    """
    video = text = 0
    for name, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name == "proj_out":
            video += module.weight.numel()
        elif name.startswith(family.blocks + "."):
            local = name.split(".", 2)[2]  # e.g. "attn1.to_q", "ff.net.0.proj"
            if local.startswith(family.text_layers):
                text += module.weight.numel()
            elif local.startswith(family.video_layers):
                video += module.weight.numel()
    return video, text


def joint_attention_flops(video_tokens: int, preset: "Preset", hidden: int, layers: int) -> float:
    """Mochi's joint attention over the video and the valid text tokens: 4 * S^2 * hidden * layers."""
    return 4.0 * (video_tokens + preset.valid_tokens) ** 2 * hidden * layers


def self_cross_attention_flops(video_tokens: int, preset: "Preset", hidden: int, layers: int) -> float:
    """Wan's video self-attention plus cross-attention to every (unmasked) text token."""
    return 4.0 * (video_tokens**2 + video_tokens * preset.text_len) * hidden * layers


@dataclass(frozen=True)
class Family:
    """What the benchmark needs to know of a family beyond its ModelSpecification."""

    pipeline: str  # key of dreamrelation.models.FAMILIES
    text_dim_key: str  # the transformer config's text-width entry
    blocks: str  # the transformer's list of blocks
    text_layers: tuple[str, ...]  # Linear layers of a block (name prefixes) that text tokens pass through
    video_layers: tuple[str, ...]  # ... and video tokens (checked after text_layers)
    attention_flops: Callable[[int, "Preset", int, int], float]
    attention_formula: str


MOCHI = Family(
    pipeline="MochiPipeline",
    text_dim_key="text_embed_dim",
    blocks="transformer_blocks",  # joint attention: text has its own projections and feed-forward
    text_layers=("attn1.add_", "attn1.to_add_out", "ff_context."),
    video_layers=("attn1.to_", "ff."),
    attention_flops=joint_attention_flops,
    attention_formula="attention = 4*S^2*hidden*layers (S = video + valid text tokens)",
)
WAN = Family(
    pipeline="WanPipeline",
    text_dim_key="text_dim",
    blocks="blocks",  # text tokens meet only the cross-attention's keys and values
    text_layers=("attn2.to_k", "attn2.to_v"),
    video_layers=("attn1.to_", "attn2.to_", "ffn."),
    attention_flops=self_cross_attention_flops,
    attention_formula="attention = 4*(T_video^2 + T_video*T_text)*hidden*layers (self-attention, then "
    "cross-attention to every text token: Wan passes no mask)",
)


@dataclass(frozen=True)
class Preset:
    family: Family
    build: Callable[[argparse.Namespace], tuple[torch.nn.Module, object]]
    device: str  # default device; "cuda" presets run on the CPU only with --blocks
    frames: int
    height: int
    width: int
    text_len: int  # text tokens (L) the transformer gets
    valid_tokens: int  # caption tokens among them
    text_mask: bool  # the model reads a text mask (Mochi); else padding is zeros and every token is attended (Wan)
    checkpointing: bool
    cpu_alternative: str = "small"  # suggested when a CUDA preset is asked for on the CPU
    # A tiny-random model (dreamrelation.models.TINY_RANDOM) whose saved pipeline has this model's structure
    # (experts and boundary, VAE factors); None: the family's specification as registered.
    structure: str | None = None
    targets: str = ""  # the model's own targets beyond the ratio's, printed under a CUDA run's table

    @cached_property
    def spec(self):
        """The family's ModelSpecification, bound to `structure`'s pipeline (built once in the model cache) if set."""
        from dreamrelation.config import ModelConfig
        from dreamrelation.models import FAMILIES, resolve_folder

        spec = FAMILIES[self.family.pipeline]
        return spec if self.structure is None else spec.bind(resolve_folder(ModelConfig(name=self.structure)))


PRESETS = {
    "small": Preset(MOCHI, build_small, "cpu", frames=25, height=128, width=128, text_len=32, valid_tokens=12,
                    text_mask=True, checkpointing=False),
    "mochi-1": Preset(MOCHI, build_mochi1, "cuda", frames=61, height=480, width=848, text_len=256, valid_tokens=30,
                      text_mask=True, checkpointing=True, targets="Mochi-1 targets: < 3.35 s/step (the reference's "
                      "Mochi LoRA step on one H100) and <= 40 GB peak GPU."),
    # 32 tokens: what the tiny tokenizers read (tiny-random-wan included), as for "small".
    "small-wan": Preset(WAN, build_small_wan, "cpu", frames=25, height=128, width=128, text_len=32,
                        valid_tokens=12, text_mask=False, checkpointing=False),
    "small-wan22": Preset(WAN, build_small_wan, "cpu", frames=25, height=128, width=128, text_len=32,
                          valid_tokens=12, text_mask=False, checkpointing=False, structure="tiny-random-wan22"),
    "wan2.1-1.3b": Preset(WAN, full_size_wan(WAN_1_3B), "cuda", frames=81, height=480, width=832, text_len=512,
                          valid_tokens=30, text_mask=False, checkpointing=True, cpu_alternative="small-wan",
                          targets="Wan2.1-1.3B targets: <= 24 GB peak GPU and (b)/(a) s/step <= 1.10."),
    "wan2.2-5b": Preset(WAN, full_size_wan(WAN22_5B), "cuda", frames=121, height=704, width=1280, text_len=512,
                        valid_tokens=30, text_mask=False, checkpointing=True, cpu_alternative="small-wan",
                        structure="tiny-random-wan22-5b"),
    "wan2.2-a14b-high": Preset(WAN, full_size_wan(WAN_14B), "cuda", frames=81, height=480, width=832, text_len=512,
                               valid_tokens=30, text_mask=False, checkpointing=True, cpu_alternative="small-wan22",
                               structure="tiny-random-wan22"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; frames/height/width/device default to the preset's values."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="Model and data size.")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="Where to run (default: the preset's; cpu for "
                        "small, small-wan and small-wan22, cuda for the full-size ones).")
    parser.add_argument("--frames", type=int, help="Clip frames, 6k+1 for Mochi, 4k+1 for Wan (default: the "
                        "preset's; 25 small*, 61 mochi-1, 81 wan2.1-1.3b and wan2.2-a14b-high, 121 wan2.2-5b).")
    parser.add_argument("--height", type=int, help="Clip height in pixels, a multiple of 16 (32 for wan2.2-5b) "
                        "(default: the preset's; 128 / 480 / 704).")
    parser.add_argument("--width", type=int, help="Clip width in pixels, a multiple of 16 (32 for wan2.2-5b) "
                        "(default: the preset's; 128 / 848 / 832 / 1280).")
    parser.add_argument("--blocks", type=int, help="Build the transformer with this many blocks instead of its own "
                        "count (not for small); lets the full-size presets run on the CPU as a code-path check.")
    parser.add_argument("--memory", choices=("bf16", "fp8", "offload"), default="bf16",
                        help="Memory preset of the frozen base (dreamrelation.models.memory): bf16 as built, fp8 "
                        "layerwise casting, offload its frozen layers from CPU memory (default bf16).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps run first in each configuration.")
    parser.add_argument("--steps", type=int, default=50, help="Timed steps per configuration (default 50).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the weights, the data and every draw.")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="Accelerator peak for MFU (default 989: H100 bf16 dense)."
    )
    # Internal: run one configuration in this process and print its measurements as JSON.
    parser.add_argument("--only", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.device = args.device or preset.device
    for name in ("frames", "height", "width"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    spec = preset.spec
    group, side = spec.frame_group, spec.side_multiple
    if args.frames < 1 or (args.frames - 1) % group:
        examples = ", ".join(str(k * group + 1) for k in (2, 4, 10))
        parser.error(f"--frames must be {group}k+1 (e.g. {examples}), got {args.frames}")
    if args.height < side or args.width < side or args.height % side or args.width % side:
        parser.error(f"--height and --width must be multiples of {side}, got {args.height}x{args.width}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.blocks is not None and (args.blocks < 1 or preset.build is build_small):
        parser.error("--blocks must be >= 1" if args.blocks < 1 else "--blocks does not apply to --preset small "
                     "(the tiny-random pipeline's fixed size)")
    return args


def check_device(args: argparse.Namespace) -> None:
    """Exit with a one-line message when the preset cannot run on this machine."""
    preset = PRESETS[args.preset]
    if preset.device == "cuda" and args.device != "cuda" and args.blocks is None:
        sys.exit(f"train_step.py: --preset {args.preset} runs only on a CUDA GPU (--device cuda); use --preset "
                 f"{preset.cpu_alternative} on CPU (or add --blocks N for a reduced code-path check).")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"train_step.py: --preset {args.preset} --device cuda needs a CUDA GPU and none is visible here.")


def latent_shape(args: argparse.Namespace, transformer: torch.nn.Module) -> tuple[int, int, int, int]:
    """(C, F', H', W') of the family's VAE: the transformer's input channels; the spec's frame group in time
    (causal first frame) and its side multiple over the transformer's spatial patch in space (8 for both)."""
    spec, config = PRESETS[args.preset].spec, transformer.config
    space = spec.side_multiple // patch_sizes(config)[-1]
    return config.in_channels, (args.frames - 1) // spec.frame_group + 1, args.height // space, args.width // space


def blob_masks(shape: tuple[int, int, int, int], generator: torch.Generator) -> torch.Tensor:
    """(2, F', H', W') subject masks in [0, 1]: two Gaussian blobs, each moving on a straight line."""
    _, frames, height, width = shape
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    t = torch.linspace(0.0, 1.0, frames).view(frames, 1, 1)
    radius = 0.15 * min(height, width)
    masks = []
    for _ in range(2):
        start, end = torch.rand(2, 2, generator=generator) * torch.tensor([height, width])
        cy, cx = start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1])
        masks.append(torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius**2)))
    return torch.stack(masks)


def random_dataset(args: argparse.Namespace, shape: tuple[int, int, int, int], text_dim: int, seed: int):
    """A PreparedDataset of CLIPS random clips in the cache's format (fp32 on the CPU, as the trainer reads it).

    Text past the valid tokens is random for a family that masks it (Mochi) and zeros for one that reads every
    token (Wan, whose pipeline zero-pads); the mask is stored either way, as the cache stores it.
    """
    from dreamrelation.data.cache import PreparedDataset
    from dreamrelation.models.base import ClipShape

    preset = PRESETS[args.preset]
    length, valid = preset.text_len, preset.valid_tokens
    generator = torch.Generator().manual_seed(seed)

    def prompt(valid_tokens: int) -> dict[str, torch.Tensor]:
        mask = torch.zeros(length, dtype=torch.bool)
        mask[:valid_tokens] = True
        embeds = torch.randn(length, text_dim, generator=generator)
        if not preset.text_mask:
            embeds[valid_tokens:] = 0.0
        return {"prompt_embeds": embeds, "prompt_mask": mask}

    records = [
        {
            "latent_mean": torch.randn(shape, generator=generator),
            "latent_logvar": torch.full(shape, -10.0),
            **prompt(valid),
            "subject_masks": blob_masks(shape, generator),
        }
        for _ in range(CLIPS)
    ]
    return PreparedDataset(
        records=records,
        empty_prompt=prompt(1),  # the empty caption encodes to its end-of-sequence token alone
        captions=["A bear is shaking hands with a raccoon."] * CLIPS,
        shape=ClipShape(args.frames, args.height, args.width, preset.spec.defaults.fps),
        encoded=0,
    )


def step_flops(transformer: torch.nn.Module, args: argparse.Namespace, shape) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one training step; hardware adds the checkpointing recomputation.

    linear    = 2 * (N_video * T_video + N_text * T_text)            forward matmuls
    attention = the family's forward QK^T and PV (Mochi: 4 * S^2 * hidden * layers, S = T_video + valid text;
                Wan: 4 * (T_video^2 + T_video * T_text) * hidden * layers)
    model     = 2 * linear + 3 * attention   (backward: input grads only, the base is frozen, ~1x linear;
                                              2x attention; adapter weight grads negligible)
    hardware  = model + linear + attention   when gradient checkpointing recomputes every block's forward
    """
    config, preset = transformer.config, PRESETS[args.preset]
    _, frames, height, width = shape
    pt, ph, pw = patch_sizes(config)
    video_tokens = (frames // pt) * (height // ph) * (width // pw)
    hidden = config.num_attention_heads * config.attention_head_dim
    n_video, n_text = token_parameters(transformer, preset.family)
    linear = 2.0 * (n_video * video_tokens + n_text * preset.text_len)
    attention = preset.family.attention_flops(video_tokens, preset, hidden, config.num_layers)
    model = 2 * linear + 3 * attention
    return model, model + (linear + attention if preset.checkpointing else 0.0)


def measure(args: argparse.Namespace) -> dict:
    """Build the model and data, add configuration `args.only`'s adapters, run warm-up + timed steps.

    Returns seconds of every timed step (and per mode), the trainable parameter count, peak memory and FLOPs.
    """
    from dreamrelation.config import MethodConfig, TrainConfig
    from dreamrelation.train.trainer import advance, make_accelerator, prepare_training

    from dreamrelation.models import memory

    name, overrides = CONFIGS[args.only]
    method = MethodConfig(**overrides)
    cuda = args.device == "cuda"
    preset = PRESETS[args.preset]
    offload = args.memory == "offload"
    # Offloaded weights live in CPU memory: the model is built there and prepare_training places the rest.
    transformer, vae_config = preset.build(argparse.Namespace(**{**vars(args), "device": "cpu"}) if offload else args)
    shape = latent_shape(args, transformer)
    dataset = random_dataset(args, shape, getattr(transformer.config, preset.family.text_dim_key), args.seed)
    flops = step_flops(transformer, args, shape)
    dtype = transformer.dtype  # the base's compute dtype, read before the fp32 adapters are added
    base_parameters = sum(p.numel() for p in transformer.parameters())
    if args.memory == "fp8":
        memory.cast_to_fp8(transformer, dtype)

    # TrainConfig's defaults (lr, weight decay, caption dropout) are the recipe's; nothing is resumed.
    train = TrainConfig(
        steps=args.warmup + args.steps, seed=args.seed, gradient_checkpointing=preset.checkpointing, resume=False
    )
    training = prepare_training(
        train, method, spec=preset.spec, transformers={"transformer": transformer}, vae_config=vae_config, dtype=dtype,
        dataset=dataset, accelerator=make_accelerator(args.device), offload=offload,
    )
    adapters = list(transformer.peft_config)
    expert = training.ctx.experts[0]  # the one this transformer is: its noise levels are the steps' sigmas
    trainable = sum(p.numel() for p in transformer.parameters() if p.requires_grad)  # every adapter is active now
    estimate = estimated_peak(args, transformer, trainable, dtype)
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    seconds, per_mode = [], {mode.name: [] for mode in training.modes}
    for index in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        mode, _ = advance(training)  # ends in loss.item(), which waits for the device
        elapsed = time.perf_counter() - started
        if index >= args.warmup:
            seconds.append(elapsed)
            per_mode[mode.name].append(elapsed)

    result = {
        "config": args.only,
        "name": name,
        "memory": args.memory,
        "adapters": adapters,
        "trainable": trainable,
        "base_parameters": base_parameters,
        "dtype": str(dtype).removeprefix("torch."),
        "layers": transformer.config.num_layers,
        "expert": [expert.name, expert.sigma_low, expert.sigma_high],
        "latent_shape": list(shape),
        "seconds": seconds,
        "per_mode": {mode: values for mode, values in per_mode.items() if values},
        "setup_rss_mb": setup_rss,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_flops": flops[0],
        "hardware_flops": flops[1],
        "estimate_gb": estimate.total / memory.GB,
    }
    if cuda:  # a fresh process per configuration, so this peak is the configuration's own
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def estimated_peak(args: argparse.Namespace, transformer: torch.nn.Module, trainable: int, dtype: torch.dtype):
    """dreamrelation.models.memory's estimate of this step's peak (no encoders: the data is already cached), from the
    transformer with its adapters (frozen parameters are the base's); a MemoryEstimate."""
    from dreamrelation.models import memory

    preset = PRESETS[args.preset]
    blocks = transformer.get_submodule(preset.family.blocks)
    config = transformer.config
    size = memory.ModelSize(
        transformer=sum(p.numel() for p in transformer.parameters() if not p.requires_grad),
        largest_block=max(sum(p.numel() for p in b.parameters() if not p.requires_grad) for b in blocks),
        blocks=len(blocks), width=config.num_attention_heads * config.attention_head_dim, encoders=0,
    )
    space = preset.spec.side_multiple // patch_sizes(config)[-1]
    clip = memory.clip_tokens(config, space, preset.spec.frame_group, preset.text_len, args.frames, args.height, args.width)
    tokens = replace(clip, pixels=0)  # the clips are cached: no VAE runs in these steps
    return memory.estimate_memory(
        size, preset.spec.memory_profile, tokens, args.memory, training=True,
        gradient_checkpointing=preset.checkpointing or args.memory == "offload", adapter_parameters=trainable,
        compute_bytes=dtype.itemsize,
    )


def subprocess_environment() -> dict[str, str]:
    """os.environ with this checkout first on PYTHONPATH, so a child process imports the package wherever run from."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": REPO + (os.pathsep + path if path else "")}


def run_marked(command: list[str], marker: str, timeout: float | None = None) -> dict:
    """Run `command` in a fresh process (its own peak memory) and return the JSON object it printed after `marker`
    (its last such line) with "wall_s" added; {"error": one line, "wall_s"} when it failed, printed no such line
    or ran past `timeout` seconds (then it is killed). The protocol of every benchmark that measures in a child."""
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=subprocess_environment(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout:.0f} s (time budget)", "wall_s": time.perf_counter() - started}
    lines = [line for line in completed.stdout.splitlines() if line.startswith(marker)]
    if completed.returncode != 0 or not lines:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {completed.returncode}: {last[:300]}", "wall_s": time.perf_counter() - started}
    return {**json.loads(lines[-1][len(marker):]), "wall_s": time.perf_counter() - started}


def run_in_subprocess(argv: list[str], config: str) -> dict:
    """Re-run this script with `--only config` in a fresh interpreter and return what it measured."""
    result = run_marked([sys.executable, os.path.abspath(__file__), *argv, "--only", config], RESULT_MARKER)
    if "error" in result:
        sys.exit(f"train_step.py: configuration ({config}) failed: {result['error']}")
    return result


def typical_seconds(result: dict) -> float:
    """Expected seconds/step: the mean over modes (drawn uniformly) of each mode's median step time.

    Medians keep a step slowed by another process on the machine from skewing the result; a plain median of
    all steps would instead pick the most frequent (cheaper) modes of DreamRelation.
    """
    return statistics.mean(statistics.median(values) for values in result["per_mode"].values())


def table(args: argparse.Namespace, results: list[dict]) -> str:
    """The markdown report: one row per configuration, the (b)/(a) ratio and a footer of formulas and targets."""
    cuda = args.device == "cuda"
    header = ["config", "adapters", "trainable params", "s/step", "s/step (mean)", "per mode median s/step (steps)"]
    header += ["peak RSS MB", "RSS growth in steps MB"]
    header += ["peak GPU GB", "MFU", "HFU"] if cuda else ["model GFLOP/s"]
    rows = [header, ["---"] * len(header)]
    for r in results:
        typical, mean = typical_seconds(r), statistics.mean(r["seconds"])
        modes = ", ".join(f"{m} {statistics.median(v):.4f} ({len(v)})" for m, v in r["per_mode"].items())
        row = [f"({r['config']}) {r['name']}", "+".join(r["adapters"]), f"{r['trainable']:,}"]
        row += [f"{typical:.4f}", f"{mean:.4f}", modes]
        row += [f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] - r['setup_rss_mb']:.0f}"]
        if cuda:
            peak = args.peak_tflops * 1e12
            row += [f"{r['peak_gpu_gb']:.1f}", f"{r['model_flops'] / typical / peak:.1%}"]
            row += [f"{r['hardware_flops'] / typical / peak:.1%}"]
        else:
            row += [f"{r['model_flops'] / typical / 1e9:.1f}"]
        rows.append(row)

    a, b = results

    def ratio(value) -> str:
        return f"{value(b) / value(a):.3f}" if value(a) > 0 else "-"

    row = ["(b)/(a)", "", "", ratio(typical_seconds)]
    row += [ratio(lambda r: statistics.mean(r["seconds"])), "", ratio(lambda r: r["peak_rss_mb"])]
    row += [ratio(lambda r: r["peak_rss_mb"] - r["setup_rss_mb"])]
    row += [ratio(lambda r: r["peak_gpu_gb"]), "", ""] if cuda else [""]
    rows.append(row)
    lines = ["| " + " | ".join(row) + " |" for row in rows]

    c, f, h, w = a["latent_shape"]
    preset = PRESETS[args.preset]
    text = f"{preset.text_len} tokens, {preset.valid_tokens} valid"
    text += "" if preset.text_mask else ", zero-padded, no mask"
    name, low, high = a["expert"]
    expert = "" if len(preset.spec.experts) == 1 else (
        f" Trains the {name}-noise expert: sigma in [{low:g}, {high:g}] (as --experts {name})."
    )
    blocks = "" if args.blocks is None else (
        f" Built with --blocks {args.blocks} ({a['base_parameters']:,} base parameters, {a['dtype']}): a code-path "
        "check, not the preset's measurement."
    )
    lines += [
        "",
        f"Preset {args.preset} on {args.device} ({torch.get_num_threads()} CPU threads), {args.frames} frames at "
        f"{args.height}x{args.width} -> latents ({c}, {f}, {h}, {w}), text ({text}), gradient checkpointing "
        f"{'on' if preset.checkpointing else 'off'}; "
        f"{args.warmup} warm-up + {args.steps} timed steps per configuration, each in its own process."
        + expert + blocks,
        "Target: (b)/(a) s/step <= 1.10. s/step = mean over the uniformly drawn modes of each mode's median "
        "step time (robust to a step slowed by other processes); s/step (mean) = plain mean of the timed steps. "
        "Peak RSS is the process's ru_maxrss (Python, model and data "
        "included); RSS growth in steps is how far the steps pushed it above its level after setup.",
        f"Model FLOPs/step: {a['model_flops'] / 1e12:.4g} T (hardware, with recomputation: "
        f"{a['hardware_flops'] / 1e12:.4g} T) = 2*linear + 3*attention, linear = 2*(N_video*T_video + "
        f"N_text*T_text), {preset.family.attention_formula}; backward = input grads "
        "of the frozen base (~1x linear, 2x attention), adapter FLOPs left out; hardware adds one forward "
        "(linear + attention) when gradient checkpointing recomputes.",
    ]
    if cuda:
        lines += [
            f"MFU = model FLOPs / s/step / {args.peak_tflops:g} TFLOP/s (--peak-tflops); HFU counts the "
            "recomputation. Peak GPU = torch.cuda.max_memory_allocated.",
            *([preset.targets] if preset.targets else []),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure one configuration (--only) or both, each in a subprocess, and print the table."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    check_device(args)
    if args.only:
        print(RESULT_MARKER + json.dumps(measure(args)), flush=True)
        return
    print(table(args, [run_in_subprocess(argv, config) for config in CONFIGS]))


if __name__ == "__main__":
    main()
