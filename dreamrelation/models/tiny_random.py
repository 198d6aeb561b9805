"""Tiny random pipelines built in code: the `tiny-random` (Mochi), `tiny-random-wan` (Wan 2.1),
`tiny-random-wan22` (Wan 2.2 A14B's two experts) and `tiny-random-wan22-5b` (Wan 2.2 TI2V-5B's 48-channel,
16x VAE) models of tests and CPU benchmarks.

They are real diffusers components (T5/UMT5 encoders, AutoencoderKLMochi/Wan, MochiTransformer3DModel /
WanTransformer3DModel, the families' schedulers) with small configs, saved once with `save_pretrained` and
then loaded with `from_pretrained` exactly like a Hub model, so every code path is the one Mochi-1 or Wan 2.1
takes.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from dreamrelation.models.base import ClipShape, write_clip_defaults

# Words of relation captions; anything else tokenises to <unk>. A word-level vocabulary keeps the tiny text
# encoder able to tell "dog" from "cat" (a T5 tokenizer without its sentencepiece model cannot).
VOCABULARY = """
a an the is are and with of to on in at over under behind beside near from into onto around toward towards
away each other its their his her one two left right up down front back top bottom side
person man woman child boy girl people dog cat bear raccoon panda monkey horse cow sheep bird duck fox wolf
tiger lion rabbit mouse elephant giraffe robot astronaut teddy toy ball box cube circle square triangle star
shape hand hands arm arms head
red green blue yellow orange purple pink white black gray grey brown cyan magenta small big large tiny
shaking high-fiving high five hugging hug chasing chases orbiting orbits approaching approaches moving moves
jumping jumps swapping swaps places bouncing bounces off pushing pushes pulling pulls following follows
leading leads kicking kicks punching punches walking walks running runs dancing dances fighting fights
holding holds touching touches passing passes throwing throws catching catches greeting greets waving waves
pointing points sitting sits standing stands next past through across
. , !
""".split()

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]

SIZES = {
    # 0.06M-parameter transformer: fast unit tests of code paths.
    "tiny": dict(layers=2, heads=2, head_dim=8, text_dim=32, pooled_dim=16, vae_channels=32, t5_layers=2),
    # A few million parameters: enough capacity to overfit a clip through LoRAs alone (tests of learning)
    # and CPU benchmarks where per-step overheads should not dominate.
    "small": dict(layers=4, heads=4, head_dim=32, text_dim=64, pooled_dim=64, vae_channels=32, t5_layers=2),
    # The Shapes World base model's architecture (trained by scripts/train_toy_base.py).
    "toy": dict(layers=6, heads=4, head_dim=32, text_dim=64, pooled_dim=64, vae_channels=32, t5_layers=2),
}
# What the tiny models generate unless told otherwise (written beside them; Mochi-1's 61x480x848 would take
# minutes per step on a CPU). The toy model's is written by scripts/train_toy_base.py.
TINY_CLIP_DEFAULTS = ClipShape(num_frames=13, height=64, width=64, fps=24)
TINY_WAN_CLIP_DEFAULTS = ClipShape(num_frames=13, height=64, width=64, fps=16)  # 13 = 4k+1
WAN_LATENT_CHANNELS = 4
WAN22_BOUNDARY_RATIO = 0.875  # Wan2.2-T2V-A14B-Diffusers' model_index.json
# Wan 2.2 TI2V-5B's VAE: 48 latent channels, a 2x2 patchify inside the VAE before 8x of downsampling (16x).
TI2V_LATENT_CHANNELS = 48
TINY_TI2V_CLIP_DEFAULTS = ClipShape(num_frames=13, height=64, width=64, fps=24)  # sides: multiples of 32
# Sinusoidal channels of the timestep (Mochi's default): with few, the phases of timesteps 0..1000 wrap around
# and the model cannot tell noise levels apart.
TIMESTEP_CHANNELS = 256
# RoPE angular frequencies per position unit. MochiRoPE spans a frame's side with 192 units whatever the token
# count, and counts latent frames one unit apart: space from a whole frame down to a few tokens per turn, time
# from the whole clip down to about a frame.
SPACE_FREQUENCIES = (0.005, 0.1)
TIME_FREQUENCIES = (0.05, 1.5)


def axial_rope_frequencies(heads: int, pairs: int) -> torch.Tensor:
    """Initial `pos_frequencies` (3, heads, pairs) of a MochiTransformer3DModel, axial like common 3D RoPE.

    Mochi's are learned and zero-initialised, which would leave a model trained from scratch without positions
    (and random ones scatter neighbouring tokens' phases). Rotary pair p turns along axis p % 3 (time, height,
    width) only, at frequencies log-spaced over that axis' range, the same in every head.
    """
    frequencies = torch.zeros(3, heads, pairs)
    for axis, (low, high) in enumerate((TIME_FREQUENCIES, SPACE_FREQUENCIES, SPACE_FREQUENCIES)):
        on_axis = list(range(axis, pairs, 3))
        if on_axis:
            frequencies[axis, :, on_axis] = torch.logspace(math.log10(high), math.log10(low), len(on_axis))
    return frequencies


def build_tokenizer(max_length: int = 32):
    """A word-level `PreTrainedTokenizerFast` over VOCABULARY (lower-cased, punctuation split, `</s>` appended)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + VOCABULARY)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def build_tiny_pipeline(seed: int = 0, size: str = "tiny"):
    """A MochiPipeline with random weights, deterministic in `seed`; `size` is a key of SIZES."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    s = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=s["text_dim"],
            d_kv=s["text_dim"] // 4,
            d_ff=2 * s["text_dim"],
            num_layers=s["t5_layers"],
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    channels = (s["vae_channels"],) * 4
    vae = AutoencoderKLMochi(
        latent_channels=12,
        out_channels=3,
        encoder_block_out_channels=channels,
        decoder_block_out_channels=channels,
        layers_per_block=(1, 1, 1, 1, 1),
    )
    transformer = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=s["heads"],
        attention_head_dim=s["head_dim"],
        num_layers=s["layers"],
        pooled_projection_dim=s["pooled_dim"],
        in_channels=12,
        text_embed_dim=s["text_dim"],
        time_embed_dim=TIMESTEP_CHANNELS,
        max_sequence_length=tokenizer.model_max_length,
    )
    with torch.no_grad():
        transformer.pos_frequencies.copy_(axial_rope_frequencies(s["heads"], s["head_dim"] // 2))
        # A trained VAE's posterior is narrow; a random one's has std ~1 and would drown every clip in fresh noise.
        # The encoder's last layer has no bias: negative logvar rows over its post-SiLU (mostly positive)
        # features give logvar around -10.
        vae.encoder.proj_out.weight[12:].fill_(-1.0)
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    return MochiPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def _tiny_wan_transformer(channels: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=channels,
        out_channels=channels, text_dim=32, freq_dim=TIMESTEP_CHANNELS, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )


def build_tiny_wan_pipeline(seed: int = 0, variant: str = "wan"):
    """A WanPipeline with random weights, deterministic in `seed` (two blocks, width 24). `variant`: 'wan' (Wan
    2.1: 4 latent channels), 'wan22' (Wan 2.2 A14B: two experts with a boundary) or 'wan22-5b' (Wan 2.2 TI2V-5B:
    48 latent channels, a 16x VAE, expanded timesteps)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    ))
    channels = TI2V_LATENT_CHANNELS if variant == "wan22-5b" else WAN_LATENT_CHANNELS
    ti2v = dict(is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16)
    vae = AutoencoderKLWan(
        base_dim=16, z_dim=channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * channels, latents_std=[1.0] * channels, **(ti2v if variant == "wan22-5b" else {}),
    )
    with torch.no_grad():
        # A random posterior has std ~1 and would drown every clip in fresh noise; a trained one is narrow.
        vae.quant_conv.weight[channels:].zero_()
        vae.quant_conv.bias[channels:].fill_(-10.0)
    experts = dict(transformer=_tiny_wan_transformer(channels))
    if variant == "wan22":
        experts |= dict(transformer_2=_tiny_wan_transformer(channels), boundary_ratio=WAN22_BOUNDARY_RATIO)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       expand_timesteps=variant == "wan22-5b", **experts)


def materialize_tiny_pipeline(cache_dir: Path, seed: int = 0, size: str = "tiny") -> Path:
    """Build and `save_pretrained` a tiny pipeline once under `cache_dir`; returns its folder. `size` is a key
    of SIZES (Mochi) or a variant of build_tiny_wan_pipeline ('wan', 'wan22', 'wan22-5b').

    Written to a temporary folder and renamed, so concurrent processes never see a half-written model.
    """
    target = Path(cache_dir) / "models" / f"tiny-random-{size}-seed{seed}-v6"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        if size.startswith("wan"):
            build_tiny_wan_pipeline(seed, size).save_pretrained(staging)
            write_clip_defaults(staging, TINY_TI2V_CLIP_DEFAULTS if size == "wan22-5b" else TINY_WAN_CLIP_DEFAULTS)
        else:
            build_tiny_pipeline(seed, size).save_pretrained(staging)
            write_clip_defaults(staging, TINY_CLIP_DEFAULTS)
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race; its copy is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
