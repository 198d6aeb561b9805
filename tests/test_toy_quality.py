"""benchmarks/toy_quality.py --hand-over: generation takes over the scene's own clip at the asked noise level."""

import argparse

import numpy as np
import torch

from dreamrelation.config import GenerateConfig, ModelConfig
from dreamrelation.generate import render
from dreamrelation.models import load_model
from dreamrelation.toyworld.render import render_scene
from dreamrelation.toyworld.world import sample_scenes
from helpers import load_script

ARGS = argparse.Namespace(frames=7, size=96, steps=4, guidance=1.0)


def test_hand_over_at_zero_is_the_vae_round_trip_of_the_scene():
    script = load_script("benchmarks/toy_quality.py")
    loaded = load_model(ModelConfig(name="toy", device="cpu"))
    scene = sample_scenes(1, seed=3)[0]
    used: list[float] = []

    frames = render(loaded, GenerateConfig(
        prompt="A red circle approaches a blue square.", seed=0, steps=ARGS.steps, guidance_scale=ARGS.guidance,
        num_frames=ARGS.frames, height=ARGS.size, width=ARGS.size,
    ), script.hand_over_at(*script.noised_clip(loaded, scene, ARGS), 0.0, used))

    # By hand: the VAE mean of the rendered clip, decoded straight back.
    clip = torch.from_numpy(render_scene(scene, ARGS.frames, ARGS.size, ARGS.size)[0]).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        vae = loaded.pipe.vae
        video = vae.decode(vae.encode(clip.float() / 127.5 - 1.0).latent_dist.mean).sample
    expected = ((video[0].permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1) * 255).round().numpy()
    assert used == [0.0]
    assert np.abs(frames.astype(float) - expected).max() <= 1.0


def test_hand_over_happens_once_at_the_first_level_not_above_sigma():
    script = load_script("benchmarks/toy_quality.py")
    loaded = load_model(ModelConfig(name="toy", device="cpu"))
    scene = sample_scenes(1, seed=4)[0]
    used: list[float] = []
    callback = script.hand_over_at(*script.noised_clip(loaded, scene, ARGS), 0.7, used)
    loaded.pipe.scheduler.set_timesteps(sigmas=[1.0, 0.8, 0.5, 0.1])  # noise levels; 0 follows the last
    latents = torch.zeros(1, 12, 2, 12, 12)
    untouched = [callback(loaded.pipe, step, None, {"latents": latents})["latents"] for step in range(3)]

    assert used == [0.5]
    assert untouched[0] is latents and untouched[2] is latents
    assert not torch.equal(untouched[1], latents)
