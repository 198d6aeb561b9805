"""Mochi-1 (diffusers `MochiPipeline`): loading, adapter placement, latent grid and the training forward.

Facts this file relies on (diffusers 0.42, see docs/method.md §4):
- the VAE compresses 8x in space and 6x in time with a causal first frame (F' = (F - 1) / 6 + 1), as the
  pipeline's `vae_spatial_scale_factor` / `vae_temporal_scale_factor` say;
- the scheduler is `FlowMatchEulerDiscreteScheduler(invert_sigmas=True)`: the pipeline feeds the
  transformer `t = (1 - sigma) * 1000` and steps `x += (s_next - s) * output` with `s = 1 - sigma`,
  so the transformer predicts the velocity `z0 - noise` for `z_sigma = (1 - sigma) z0 + sigma noise`.

It also holds a batched attention processor: diffusers' `MochiAttnProcessor2_0` loops over the batch in
Python (each sample keeps only its valid text tokens); `MochiBatchedAttnProcessor` runs the whole batch in one
`scaled_dot_product_attention` call with a key mask and zeroes the outputs of padded text tokens as the stock
one pads them, so both give the same result (a test checks it to 1e-6). `use_batched_attention(transformer)`
installs it; it pays off at batch > 1 (the toy model's training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamrelation.models.memory import MemoryProfile
from dreamrelation.models.base import ClipShape, GenerationDefaults, ModelSpecification


class MochiSpecification(ModelSpecification):
    pipeline_class_name = "MochiPipeline"
    defaults = ClipShape(num_frames=61, height=480, width=848, fps=30)
    generation = GenerationDefaults(steps=64, guidance_scale=4.5)  # MochiPipeline.__call__'s
    max_num_frames = 163  # 5.4 s at 30 fps, the longest clip Mochi-1 was trained on
    frame_group = 6
    projections = {
        "qk": ("to_q", "to_k", "add_q_proj", "add_k_proj"),
        "q": ("to_q", "add_q_proj"),
        "v": ("to_v", "add_v_proj"),
        "out": ("to_out.0", "to_add_out"),
        "qkvo": ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"),
    }

    block_lists = ("transformer_blocks",)
    # Not yet calibrated on a GPU (benchmarks/gpu_check.py): a block keeps its modulated norm, q, k, v (and their
    # normed, rotated copies), the attention output and projection, and a SwiGLU of ~2.7x the width in and out.
    # The VAE: 128 channels at full resolution, a few tensors alive at once; tiles of 12 frames of 256x256.
    memory_profile = MemoryProfile(training=24, inference=10, vae=1024, vae_tile_pixels=12 * 256 * 256)

    def attention_paths(self, transformer: torch.nn.Module) -> list[str]:
        return [f"transformer_blocks.{i}.attn1" for i in range(len(transformer.transformer_blocks))]

    def unused_projections(self, attention: torch.nn.Module) -> set[str]:
        # The last block is context-pre-only: its text outputs are dropped, so its text queries are dead.
        return {"add_q_proj"} if attention.context_pre_only else set()

    def max_text_length(self, pipe) -> int:
        # Mochi's T5 takes 256 tokens; tiny tokenizers declare fewer.
        return min(256, pipe.tokenizer.model_max_length)

    def encode_prompts(self, pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            embeds, mask, _, _ = pipe.encode_prompt(
                prompts,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_text_length(pipe),
                device=pipe.text_encoder.device,
            )
        return embeds, mask

    def normalize_latents(self, config, latents: torch.Tensor) -> torch.Tensor:
        # The pipeline decodes `x * std / scaling + mean`; training works in the space it denoises.
        channels = latents.shape[1]
        if config.latents_mean is not None and config.latents_std is not None:
            mean = torch.tensor(config.latents_mean).view(1, channels, 1, 1, 1)
            std = torch.tensor(config.latents_std).view(1, channels, 1, 1, 1)
        else:
            mean, std = torch.zeros(()), torch.ones(())
        return (latents - mean.to(latents)) * config.scaling_factor / std.to(latents)

    def latent_factors(self) -> tuple[int, int]:
        return 8, 6  # MochiPipeline's vae_spatial_scale_factor and vae_temporal_scale_factor (fixed there)

    def offload_after_encoding(self, pipe) -> list[torch.nn.Module]:
        return [pipe.text_encoder, pipe.vae]  # T5-XXL and the VAE would sit in GPU memory for nothing

    def training_forward(self, transformer, latents, noise, sigmas, prompt_embeds, prompt_mask, dtype):
        s = sigmas.view(-1, 1, 1, 1, 1).to(latents)
        noisy = (1.0 - s) * latents + s * noise
        timestep = (1.0 - sigmas) * 1000.0
        pred = transformer(
            hidden_states=noisy.to(dtype),
            encoder_hidden_states=prompt_embeds.to(dtype),
            timestep=timestep.to(dtype),
            encoder_attention_mask=prompt_mask,
            return_dict=False,
        )[0]
        return pred.float(), latents - noise


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mochi's RoPE on interleaved (even, odd) channel pairs, computed in fp32; x (B, S, heads, dim)."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).to(x.dtype)


class MochiBatchedAttnProcessor:
    """Joint video-text attention for a whole batch at once (drop-in for MochiAttnProcessor2_0)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None):
        """hidden_states (B, N, D) video tokens, encoder_hidden_states (B, L, D_text), attention_mask (B, L)
        bool valid text tokens. Returns (video (B, N, D), text (B, L, D_text)), padded text outputs zero."""
        def heads(x):
            return x.unflatten(2, (attn.heads, -1))

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        query, key = attn.norm_q(query), attn.norm_k(key)
        text_query = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
        text_key = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
        text_value = heads(attn.add_v_proj(encoder_hidden_states))
        if image_rotary_emb is not None:
            query, key = _rotate(query, *image_rotary_emb), _rotate(key, *image_rotary_emb)

        video_tokens = query.shape[1]
        valid = torch.cat(
            [attention_mask.new_ones(attention_mask.shape[0], video_tokens), attention_mask.bool()], dim=1
        )  # (B, N + L)
        joint = [torch.cat(pair, dim=1).transpose(1, 2) for pair in ((query, text_query), (key, text_key), (value, text_value))]
        out = F.scaled_dot_product_attention(*joint, attn_mask=valid[:, None, None, :])
        out = out.transpose(1, 2).flatten(2, 3) * valid[..., None].to(out.dtype)

        video, text = out.split_with_sizes((video_tokens, out.shape[1] - video_tokens), dim=1)
        video = attn.to_out[1](attn.to_out[0](video))
        if hasattr(attn, "to_add_out"):
            text = attn.to_add_out(text)
        return video, text


def use_batched_attention(transformer: torch.nn.Module) -> int:
    """Install MochiBatchedAttnProcessor on every Mochi attention module (diffusers' MochiTransformer3DModel has
    no `set_attn_processor`); returns how many were replaced."""
    from diffusers.models.attention_processor import MochiAttention

    modules = [m for m in transformer.modules() if isinstance(m, MochiAttention)]
    for module in modules:
        module.processor = MochiBatchedAttnProcessor()
    return len(modules)
