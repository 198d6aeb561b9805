"""Where on the noise axis a training step lands: the σ of flow matching's z_σ = (1 − σ) z0 + σ noise."""

from __future__ import annotations

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling

from dreamrelation.config import TrainConfig


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Map σ in [0, 1] to shift·σ / (1 + (shift − 1)·σ), the flow-shift of SD3 and Wan; shift > 1 moves σ towards
    noise (shift 3 turns the median 0.5 into 0.75). Takes and returns a tensor of any shape."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def sample_sigmas(train: TrainConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw `batch_size` noise levels (CPU, float32, shape (B,)) by `train.sigma_sampling` (docs/method.md §5):
    'uniform' in [0, 1]; 'logit-normal' sigmoid(N(sigma_logit_mean, sigma_logit_std)) (SD3's density, diffusers'
    `compute_density_for_timestep_sampling`); 'shifted' uniform, then `shift_sigmas` by sigma_shift."""
    if train.sigma_sampling == "logit-normal":
        return compute_density_for_timestep_sampling(
            "logit_normal", batch_size, train.sigma_logit_mean, train.sigma_logit_std, generator=generator
        )
    sigmas = compute_density_for_timestep_sampling("uniform", batch_size, generator=generator)
    return shift_sigmas(sigmas, train.sigma_shift) if train.sigma_sampling == "shifted" else sigmas


def into_range(sigmas: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map σ drawn in [0, 1] linearly onto [low, high] (an expert's noise levels), keeping the density's shape;
    [0, 1] returns them unchanged. Takes and returns a tensor of any shape."""
    return sigmas if (low, high) == (0.0, 1.0) else low + (high - low) * sigmas
