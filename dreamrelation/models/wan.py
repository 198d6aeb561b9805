"""Wan text-to-video (diffusers `WanPipeline`): Wan 2.1, Wan 2.2 A14B (two experts) and Wan 2.2 TI2V-5B as
text-to-video. Loading, adapter placement, experts, latent grid and the training forward.

Facts this file relies on (diffusers 0.42; docs/method.md §1 and §4):
- Wan 2.2 A14B saves a second transformer (`transformer_2`) and a `boundary_ratio` in model_index.json: the
  pipeline denoises timesteps t >= boundary_ratio * 1000 with `transformer` (high noise) and the rest with
  `transformer_2`; with flow sigmas t = sigma * 1000, so the high-noise expert owns sigma >= boundary_ratio;
- Wan 2.2 TI2V-5B sets `expand_timesteps` and has a 48-channel VAE that compresses 16x in space (its config's
  `scale_factor_spatial`, patchifying inside the VAE); its transformer patch is still 2x2, so sides are multiples
  of 32. Text-to-video gives every token the same timestep, so the training forward passes one per clip, which
  the transformer computes identically to the pipeline's per-token copy;
- each block `blocks.i` has self-attention over the video tokens (`attn1`) and cross-attention from video
  queries to the text (`attn2`); the adapter roles sit on them as the method doc's table says;
- the VAE compresses `scale_factor_spatial` (8) in space and `scale_factor_temporal` (4) in time with a causal
  first frame, read from its config; latents are normalised with its `latents_mean` / `latents_std`;
- flow matching as Wan trains: `x_sigma = (1 - sigma) x0 + sigma noise`, the transformer gets `t = sigma * 1000`
  and predicts the velocity `noise - x0` (the scheduler's `flow_prediction`);
- the text is UMT5, zero-padded to `max_sequence_length` and given to the transformer without a mask.
"""

from __future__ import annotations

import json
import re

import torch

from dreamrelation.models.memory import MemoryProfile
from dreamrelation.models.base import ClipShape, Expert, GenerationDefaults, ModelSpecification

MAX_TEXT_TOKENS = 512  # WanPipeline's max_sequence_length
# The clips Wan 2.2 TI2V-5B was trained on (its model card: 720p, 121 frames at 24 fps; 704x1280 in diffusers'
# example); a pipeline that expands timesteps is that model.
TI2V_DEFAULTS = ClipShape(num_frames=121, height=704, width=1280, fps=24)

# A block's diffusers module -> its name in the original Wan checkpoints, which ComfyUI loads: the inverse of
# diffusers' `_convert_non_diffusers_wan_lora_to_diffusers` (loaders/lora_conversion_utils.py) for the layers
# LoRAs go on. Original keys are `diffusion_model.blocks.<i>.<name>.lora_{A,B}.weight` and `.alpha`.
ORIGINAL_LORA_NAMES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
_DIFFUSERS_LORA_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.lora_([AB])\.weight")


class WanSpecification(ModelSpecification):
    pipeline_class_name = "WanPipeline"
    defaults = ClipShape(num_frames=81, height=480, width=832, fps=16)
    generation = GenerationDefaults(steps=50, guidance_scale=5.0)  # WanPipeline.__call__'s
    max_num_frames = 81  # 5 s at 16 fps, the clip length Wan 2.1 was trained on
    frame_group = 4
    # Projections are relative to a block: its two attention modules each carry part of a role.
    projections = {
        "qk": ("attn1.to_q", "attn1.to_k", "attn2.to_q", "attn2.to_k"),
        "q": ("attn1.to_q", "attn2.to_q"),
        "v": ("attn1.to_v", "attn2.to_v"),
        "out": ("attn1.to_out.0", "attn2.to_out.0"),
        "qkvo": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    }

    block_lists = ("blocks",)
    # Not yet calibrated on a GPU (benchmarks/gpu_check.py): self-attention q, k, v with their norms and rotations,
    # cross-attention, and a GELU feed-forward of ~5.8x the width. The VAE runs causally on 4 frames at a time in
    # fp32 (96 channels), so per pixel of the whole clip it holds little; tiles of 4 frames of 256x256.
    memory_profile = MemoryProfile(training=27, inference=14, vae=80, vae_tile_pixels=4 * 256 * 256)

    separately_loaded = ("vae",)

    def load_component(self, source: str, name: str, dtype: torch.dtype) -> torch.nn.Module:
        # Wan's VAE runs in fp32 whatever the transformer's dtype, as diffusers' Wan examples load it.
        return super().load_component(source, name, torch.float32 if name == "vae" else dtype)

    def _bound_attributes(self, folder, index: dict) -> dict:
        vae = self.vae_config
        patch = json.loads((folder / "transformer" / "config.json").read_text())["patch_size"]
        attributes = {
            "side_multiple": vae.scale_factor_spatial * patch[1],
            "frame_group": vae.scale_factor_temporal,
        }
        boundary = index.get("boundary_ratio")
        if boundary is not None and (index.get("transformer_2") or [None])[0] is not None:
            attributes["experts"] = (Expert("transformer", "high", boundary, 1.0),
                                     Expert("transformer_2", "low", 0.0, boundary))
        if index.get("expand_timesteps"):
            attributes |= {"defaults": TI2V_DEFAULTS, "max_num_frames": TI2V_DEFAULTS.num_frames}
        return attributes

    def lora_load_kwargs(self, component: str) -> dict:
        # diffusers' WanLoraLoaderMixin puts a LoRA into the low-noise expert only when told.
        return {"load_into_transformer_2": True} if component == "transformer_2" else {}

    def attention_paths(self, transformer: torch.nn.Module) -> list[str]:
        return [f"blocks.{i}" for i in range(len(transformer.blocks))]

    def original_lora_state(self, state, alphas):
        original = {}
        for key, tensor in state.items():
            match = _DIFFUSERS_LORA_KEY.fullmatch(key)
            if match is None or match[2] not in ORIGINAL_LORA_NAMES:
                raise ValueError(f"{key}: this layer has no name in the ComfyUI format")
            module = f"diffusion_model.blocks.{match[1]}.{ORIGINAL_LORA_NAMES[match[2]]}"
            original[f"{module}.lora_{match[3]}.weight"] = tensor
            alpha = alphas[key.rpartition(".lora_")[0]]
            if match[3] == "A" and alpha != tensor.shape[0]:  # lora_A is (rank, in_features)
                original[f"{module}.alpha"] = torch.tensor(float(alpha))
        return original

    def max_text_length(self, pipe) -> int:
        return min(MAX_TEXT_TOKENS, pipe.tokenizer.model_max_length)

    def encode_prompts(self, pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.max_text_length(pipe)
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(
                prompts, do_classifier_free_guidance=False, max_sequence_length=length,
                device=pipe.text_encoder.device,
            )
        tokens = pipe.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                                return_attention_mask=True, return_tensors="pt")
        return embeds, tokens.attention_mask.bool().to(embeds.device)

    def normalize_latents(self, config, latents: torch.Tensor) -> torch.Tensor:
        # The pipeline decodes `x * std + mean`; training works in the space it denoises.
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents)
        std = torch.tensor(config.latents_std).view(shape).to(latents)
        return (latents - mean) / std

    def latent_factors(self) -> tuple[int, int]:
        return self.vae_config.scale_factor_spatial, self.vae_config.scale_factor_temporal

    def offload_after_encoding(self, pipe) -> list[torch.nn.Module]:
        return [pipe.text_encoder, pipe.vae]

    def training_forward(self, transformer, latents, noise, sigmas, prompt_embeds, prompt_mask, dtype):
        s = sigmas.view(-1, 1, 1, 1, 1).to(latents)
        noisy = (1.0 - s) * latents + s * noise
        pred = transformer(
            hidden_states=noisy.to(dtype),
            timestep=(sigmas * 1000.0).to(dtype),
            encoder_hidden_states=prompt_embeds.to(dtype),  # padding is zeros, as the pipeline gives it
            return_dict=False,
        )[0]
        return pred.float(), noise - latents
