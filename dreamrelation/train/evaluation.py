"""The evaluation loss: nanoGPT's `estimate_loss` for flow matching.

The training loss of a step is one random clip at one random noise level in one random mode, which swings
by an order of magnitude from step to step and hides whether the run is going anywhere. The evaluation loss is
the same few (clip, posterior sample, noise, σ) points, drawn once per run from the cached latents with a
generator of their own (training draws nothing less or more because of them), scored without gradients in the
relation mode every `eval_every` steps: it moves only when the adapters do. Besides the plain flow-matching MSE
it reports the error inside the subjects' masks (their clipped union, where the relation lives) and outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers.utils.torch_utils import randn_tensor

from dreamrelation.method.adapters import TrainingMode, activate_adapters
from dreamrelation.method.losses import relation_mask
from dreamrelation.train.noise_levels import into_range, sample_sigmas

if TYPE_CHECKING:
    from dreamrelation.train.trainer import StepContext

# Offset of the evaluation points' generator from the run's seed: a stream no training draw shares.
EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class EvalPoint:
    """One fixed evaluation input: a cached record, its latents (posterior sample, normalised) (C, F', H', W'),
    the noise of the same shape, and σ with the expert (pipeline component) that denoises it."""

    record: int
    latents: torch.Tensor
    noise: torch.Tensor
    sigma: float
    component: str


def draw_eval_points(ctx: StepContext, count: int, seed: int) -> list[EvalPoint]:
    """`count` evaluation points over the run's clips and trained experts (round robin, so every clip and expert
    counts), σ drawn as training draws it within the point's expert's range, all from a generator seeded with
    `seed` + EVAL_SEED_OFFSET."""
    generator = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    records = ctx.dataset.records
    points = []
    for index in range(count):
        expert = ctx.experts[index % len(ctx.experts)]
        record = records[index % len(records)]
        mean, logvar = record["latent_mean"][None], record["latent_logvar"][None]
        posterior = randn_tensor(mean.shape, generator, mean.device, mean.dtype)
        latents = ctx.spec.normalize_latents(ctx.vae_config, mean + (0.5 * logvar).exp() * posterior)
        noise = randn_tensor(latents.shape, generator, latents.device, latents.dtype)
        # The expert is the point's, not looked up from σ: a σ on an expert's upper bound stays with it, as in training.
        sigma = float(into_range(sample_sigmas(ctx.train, 1, generator), expert.sigma_low, expert.sigma_high)[0])
        points.append(EvalPoint(index % len(records), latents[0], noise[0], sigma, expert.component))
    return points


@torch.no_grad()
def evaluation_loss(ctx: StepContext, points: list[EvalPoint], mode: TrainingMode) -> dict[str, float]:
    """The mean over `points` of the flow-matching MSE in `mode` (its adapters active), and of the error inside
    and outside the relation mask: {"eval": ..., "eval_inside": ..., "eval_outside": ...}. Runs the unwrapped
    transformers (no DDP: every rank computes the same numbers without a collective)."""
    device = ctx.accelerator.device
    totals = {"eval": 0.0, "eval_inside": 0.0, "eval_outside": 0.0}
    for point in points:
        transformer = ctx.transformers[point.component]
        activate_adapters(transformer, mode.adapters)
        record = ctx.dataset.records[point.record]
        sigmas = torch.tensor([point.sigma], device=device)
        pred, target = ctx.spec.training_forward(
            transformer, point.latents[None].to(device), point.noise[None].to(device), sigmas,
            record["prompt_embeds"][None].to(device), record["prompt_mask"][None].to(device), ctx.dtype,
        )
        error = ((pred - target) ** 2).mean(dim=1)  # (1, F', H', W'): the channels' mean per cell
        inside = relation_mask(record["subject_masks"][None].to(device)).float()
        totals["eval"] += float(error.mean())
        totals["eval_inside"] += float((error * inside).sum() / inside.sum().clamp(min=1e-6))
        totals["eval_outside"] += float((error * (1 - inside)).sum() / (1 - inside).sum().clamp(min=1e-6))
    return {name: value / len(points) for name, value in totals.items()}
