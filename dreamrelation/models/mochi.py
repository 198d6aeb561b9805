"""Mochi-1 (diffusers `MochiPipeline`): loading, adapter placement, latent grid and the training forward.

Facts this file relies on (diffusers 0.42, see METHOD.md "Base model"):
- the VAE compresses 8x in space and 6x in time with a causal first frame (F' = (F - 1) / 6 + 1);
- the scheduler is `FlowMatchEulerDiscreteScheduler(invert_sigmas=True)`: the pipeline feeds the
  transformer `t = (1 - sigma) * 1000` and steps `x += (s_next - s) * output` with `s = 1 - sigma`,
  so the transformer predicts the velocity `z0 - noise` for `z_sigma = (1 - sigma) z0 + sigma noise`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dreamrelation.models.base import ClipDefaults, ModelSpecification


class MochiSpecification(ModelSpecification):
    pipeline_class_name = "MochiPipeline"
    defaults = ClipDefaults(num_frames=61, height=480, width=848, fps=30)
    max_num_frames = 163  # 5.4 s at 30 fps, the longest clip Mochi-1 was trained on
    spatial_factor = 8
    temporal_factor = 6
    projections = {
        "qk": ("to_q", "to_k", "add_q_proj", "add_k_proj"),
        "q": ("to_q", "add_q_proj"),
        "v": ("to_v", "add_v_proj"),
        "out": ("to_out.0", "to_add_out"),
        "qkvo": ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"),
    }

    def load_pipeline(self, source: str, dtype: torch.dtype, device: torch.device):
        from diffusers import MochiPipeline

        pipe = MochiPipeline.from_pretrained(source, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

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

    def encode_clip(self, pipe, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        vae = pipe.vae
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None]  # (1, 3, F, H, W)
        video = video.to(vae.device, vae.dtype) / 127.5 - 1.0
        with torch.no_grad():
            posterior = vae.encode(video).latent_dist
        return posterior.mean[0].float().cpu(), posterior.logvar[0].float().cpu()

    def normalize_latents(self, config, latents: torch.Tensor) -> torch.Tensor:
        # The pipeline decodes `x * std / scaling + mean`; training works in the space it denoises.
        channels = latents.shape[1]
        if config.latents_mean is not None and config.latents_std is not None:
            mean = torch.tensor(config.latents_mean).view(1, channels, 1, 1, 1)
            std = torch.tensor(config.latents_std).view(1, channels, 1, 1, 1)
        else:
            mean, std = torch.zeros(()), torch.ones(())
        return (latents - mean.to(latents)) * config.scaling_factor / std.to(latents)

    def masks_to_latent_grid(self, masks: torch.Tensor) -> torch.Tensor:
        """(S, F, H, W) -> (S, F', H/8, W/8): a cell is 1 where any subject pixel falls (max-pool in space);
        latent frame 0 takes mask frame 0 and latent frame k >= 1 the mean of frames 6(k-1)+1 .. 6k, as
        Mochi's causal VAE groups them."""
        num_frames = masks.shape[1]
        if (num_frames - 1) % self.temporal_factor:
            raise ValueError(f"masks need 6k+1 frames, got {num_frames}")
        pooled = F.max_pool2d(masks.float(), self.spatial_factor)  # (S, F, H/8, W/8), frames as channels
        first = pooled[:, :1]
        rest = pooled[:, 1:].unflatten(1, (-1, self.temporal_factor)).mean(dim=2)
        return torch.cat([first, rest], dim=1)

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
