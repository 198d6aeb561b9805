"""Benchmark: is the appearance-leak judge right on what the model's VAE makes of a video? (issue #25, step 1)

relation_eval's leak column asks whether an exemplar subject shows up in a video prompted for other subjects.
Its false alarms are measured on the VAE round trip of ground-truth clips of the unseen-subject prompts (which
hold no exemplar subject), its misses on the same clips with a real one: a square of an exemplar colour pasted
in a corner, or one of the prompted subjects drawn in an exemplar colour. Each is judged by the judge
(`judge_appearance`: an exemplar colour as a blob the size of the smallest subject on a quarter of the frames)
and by the rule it replaced (any blob of the colour past the tracker's noise floor on a quarter of the frames).
Prints a markdown table of the share of clips judged leaky.

    PYTHONPATH=. python benchmarks/leak_judge.py                  # 24 clips per kind, about 1 min on 2 cores
    PYTHONPATH=. python benchmarks/leak_judge.py --model /tmp/toy --clips 6
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

from dreamrelation.config import ModelConfig
from dreamrelation.models import load_model
from dreamrelation.toyworld.examples import (
    DEFAULT_FRAMES,
    DEFAULT_PAIRS,
    DEFAULT_SEED,
    DEFAULT_SIZE,
    EXEMPLAR_PAIRS,
    exemplar_scenes,
    unseen_prompts,
)
from dreamrelation.toyworld.judges import LEAK_SHARE, judge_appearance
from dreamrelation.toyworld.render import render_scene
from dreamrelation.toyworld.tracking import classify_pixels, colour_blobs
from dreamrelation.toyworld.world import COLOURS, HELD_OUT_RELATIONS, Scene

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vae_colours import decode, encode  # noqa: E402  (the VAE round trip, as vae_colours measures it)

KINDS = ("ground truth (no exemplar subject)", "an exemplar-coloured square pasted in a corner",
         "subject 1 drawn in an exemplar colour", "subject 2 drawn in an exemplar colour")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="'toy' or a folder holding a saved MochiPipeline.")
    parser.add_argument("--clips", type=int, default=12, help="Unseen-subject prompts per held-out relation.")
    parser.add_argument("--exemplar-pairs", type=int, default=DEFAULT_PAIRS, help="Subject pairs of the exemplars.")
    return parser.parse_args(argv)


def any_blob_leak(frames: np.ndarray, colours) -> bool:
    """The rule the judge replaced: any of `colours` past the tracker's noise floor on a quarter of the frames."""
    labels = classify_pixels(frames)
    return any(colour_blobs(labels, colour).any(axis=(1, 2)).mean() >= LEAK_SHARE for colour in colours)


def clips(relation: str, count: int, pairs: int):
    """Yield (kind, frames, prompted subjects, exemplar subjects) for `count` unseen-subject prompts of `relation`."""
    exemplars = tuple(dict.fromkeys(s for scene in exemplar_scenes(relation, count, DEFAULT_SEED, pairs)
                                    for s in (scene.subject1, scene.subject2)))
    colours = sorted({s.colour for s in exemplars})
    for index, (_, first, second) in enumerate(unseen_prompts(relation, exemplars, count, DEFAULT_SEED)):
        colour = colours[index % len(colours)]
        scene = Scene(first, second, relation, 100 + index)
        truth = render_scene(scene, DEFAULT_FRAMES, DEFAULT_SIZE, DEFAULT_SIZE)[0]
        pasted = truth.copy()
        pasted[:, -22:-2, 2:22] = COLOURS[colour]
        recoloured = [render_scene(dataclasses.replace(scene, **{role: dataclasses.replace(subject, colour=colour)}),
                                   DEFAULT_FRAMES, DEFAULT_SIZE, DEFAULT_SIZE)[0]
                      for role, subject in (("subject1", first), ("subject2", second))]
        for kind, frames in zip(KINDS, (truth, pasted, *recoloured)):
            yield kind, frames, (first, second), exemplars


def main(argv=None) -> None:
    args = parse_args(argv)
    if not 1 <= args.exemplar_pairs <= len(EXEMPLAR_PAIRS):
        raise SystemExit(f"--exemplar-pairs must be 1..{len(EXEMPLAR_PAIRS)}")
    loaded = load_model(ModelConfig(name=args.model, device="cpu"))
    judged = {kind: [] for kind in KINDS}
    for relation in HELD_OUT_RELATIONS:
        for kind, frames, prompted, exemplars in clips(relation, args.clips, args.exemplar_pairs):
            decoded = decode(loaded, encode(loaded, frames), len(frames))
            unprompted = {s.colour for s in exemplars} - {s.colour for s in prompted}
            judged[kind].append((judge_appearance(decoded, prompted, exemplars)["leak"],
                                 any_blob_leak(decoded, unprompted)))
    print(f"**leak_judge** — model `{args.model}`; {args.clips} unseen-subject prompts per held-out relation "
          f"({', '.join(HELD_OUT_RELATIONS)}), exemplars over {args.exemplar_pairs} pairs; every clip through the "
          "VAE round trip. Share of clips judged leaky:\n")
    print("| clips | n | judge (subject-sized blob) | any blob (the rule until 2026-12-05) |")
    print("|---|---|---|---|")
    for kind, rows in judged.items():
        leaks = np.array(rows, float)
        print(f"| {kind} | {len(rows)} | {leaks[:, 0].mean():.2f} | {leaks[:, 1].mean():.2f} |")


if __name__ == "__main__":
    main()
