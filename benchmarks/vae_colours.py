"""Benchmark: does a Shapes World model's VAE keep the world's colours apart? (issue #25)

Two tables for --model (a saved pipeline folder, or 'toy'):
1. the round trip: per vocabulary colour, its rendered RGB, the mean RGB of a subject of that colour after the VAE
   (rendered scenes of every relation, encoded and decoded) and the judges' labels inside its masks: the colours
   a generated video can show at best;
2. the latents: for every two colours, scenes rendered twice, identical but for subject 1's colour, encoded to
   the VAE mean; the distance between the two latents (L2 over the whole clip, averaged over the scenes), and that
   distance over the median of all pairs. A pair far below 1 is one the transformer barely tells apart, so a
   relation LoRA that learned to paint one of them paints the other (docs/toy-model.md).

    PYTHONPATH=. python benchmarks/vae_colours.py --model toy
    PYTHONPATH=. python benchmarks/vae_colours.py --model /tmp/toy --scenes 2
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics

import numpy as np
import torch

from dreamrelation.config import ModelConfig
from dreamrelation.models import load_model
from dreamrelation.toyworld.render import render_scene
from dreamrelation.toyworld.tracking import COLOUR_NAMES, classify_pixels
from dreamrelation.toyworld.world import COLOURS, Scene, sample_scenes

FRAMES, SIZE = 25, 96  # the toy model's clip shape


def encode(loaded, frames: np.ndarray) -> torch.Tensor:
    """The VAE mean of uint8 (F, H, W, 3) frames: float (C, F', H', W')."""
    with torch.no_grad():
        return loaded.spec.encode_clip(loaded.pipe, frames)[0]


def decode(loaded, latents: torch.Tensor, num_frames: int) -> np.ndarray:
    """uint8 (F, H, W, 3) frames decoded from a VAE mean (C, F', H', W')."""
    with torch.no_grad():
        decoded = loaded.pipe.vae.decode(latents[None]).sample
    return ((decoded[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()[:num_frames]


def recoloured(count: int, colour: str, avoid: tuple[str, ...] = ()) -> list[Scene]:
    """`count` scenes of every relation (seed 11) with subject 1 in `colour` and subject 2 in a colour other than
    `colour` and `avoid`, taking turns over those."""
    others = [c for c in COLOURS if c != colour and c not in avoid]
    return [
        dataclasses.replace(scene, subject1=dataclasses.replace(scene.subject1, colour=colour),
                            subject2=dataclasses.replace(scene.subject2, colour=others[index % len(others)]))
        for index, scene in enumerate(sample_scenes(count, seed=11))
    ]


def round_trip_rows(loaded, scenes: int) -> list[str]:
    """Table rows, per colour over `scenes` scenes with subject 1 in it: colour | rendered RGB | mean RGB of subject
    1 after the VAE | the judges' labels inside its masks."""
    rows = []
    for name in COLOURS:
        colours, labels = [], []
        for scene in recoloured(scenes, name):
            frames, masks = render_scene(scene, FRAMES, SIZE, SIZE)
            decoded = decode(loaded, encode(loaded, frames), len(frames))
            colours.append(decoded[masks[0]].astype(float).mean(axis=0))
            labels.append(np.bincount(classify_pixels(decoded)[masks[0]] + 1, minlength=len(COLOUR_NAMES) + 1)
                          / masks[0].sum())
        mean = tuple(int(v) for v in np.mean(colours, axis=0).round())
        shares = ", ".join(f"{label} {share:.2f}" for label, share in zip(("none", *COLOUR_NAMES),
                                                                         np.mean(labels, axis=0)) if share >= 0.01)
        rows.append(f"| {name} | {COLOURS[name]} | {mean} | {shares} |")
    return rows


def latent_distances(loaded, scenes: int) -> dict[frozenset, float]:
    """{frozenset({colour a, colour b}): mean L2 distance between the VAE means of scenes identical but for
    subject 1's colour (a or b)}, over `scenes` scenes whose subject 2 has neither colour."""
    distances = {}
    for a, b in itertools.combinations(COLOURS, 2):
        values = []
        for scene in recoloured(scenes, a, avoid=(b,)):
            other = dataclasses.replace(scene, subject1=dataclasses.replace(scene.subject1, colour=b))
            latents = [encode(loaded, render_scene(s, FRAMES, SIZE, SIZE)[0]) for s in (scene, other)]
            values.append(float((latents[0] - latents[1]).norm()))
        distances[frozenset((a, b))] = statistics.fmean(values)
    return distances


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="'toy' or a folder holding a saved MochiPipeline.")
    parser.add_argument("--scenes", type=int, default=6, help="Scenes per colour (per colour pair for the latents).")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name=args.model, device="cpu"))
    print(f"VAE of {args.model}: round trip over {args.scenes} rendered scenes per colour\n")
    print("| colour | rendered RGB | after the VAE (mean RGB) | judge's labels inside its masks |\n|---|---|---|---|")
    print("\n".join(round_trip_rows(loaded, args.scenes)))
    distances = latent_distances(loaded, args.scenes)
    median = statistics.median(distances.values())
    print(f"\nlatent distance of scenes differing only in subject 1's colour ({args.scenes} scenes per pair), closest first\n")
    print("| colours | latent distance | / median pair |\n|---|---|---|")
    for pair, distance in sorted(distances.items(), key=lambda item: item[1]):
        print(f"| {' – '.join(sorted(pair))} | {distance:.1f} | {distance / median:.2f} |")


if __name__ == "__main__":
    main()
