"""Benchmark: how well a Shapes World base model draws relations, colours and shapes (issue #4's quality bar).

Generates videos for fresh Shapes World captions (seeds the training never used) of every relation and scores
them with the programmatic judges: relation accuracy with roles, colour accuracy and shape accuracy, in three
groups: trained relations with seen subject pairs, trained relations with unseen pairs (the colour pairs
world.HELD_OUT_COLOUR_PAIRS that training left out), and held-out relations (the base model should be poor on
those: that is what relation customisation is for). Prints a markdown table.

With --hand-over it measures instead where the model loses relations: the same generation of trained relations
(seen pairs), except that when the sampler first reaches noise level σ0 its latents are replaced by the scene's
own rendered clip, VAE-encoded and noised to that level: (1 - σ) z0 + σ ε. From there on the model only has to
keep the subjects' paths. σ0 = 0 is the VAE round trip (the most the judge can see), σ0 = 1 plain generation.

    PYTHONPATH=. python benchmarks/toy_quality.py --model toy
    PYTHONPATH=. python benchmarks/toy_quality.py --model /tmp/toy --per-relation 4 --steps 20
    PYTHONPATH=. python benchmarks/toy_quality.py --model toy --hand-over 0 0.5 0.7 0.85 0.95 1
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from dreamrelation.config import GenerateConfig, ModelConfig
from dreamrelation.generate import render
from dreamrelation.models import load_model
from dreamrelation.toyworld.captions import caption, prompt_subjects
from dreamrelation.toyworld.judges import judge_appearance, judge_relation
from dreamrelation.toyworld.render import render_scene
from dreamrelation.toyworld.world import HELD_OUT_RELATIONS, TRAINED_RELATIONS, is_held_out_pair, sample_scenes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="'toy' or a folder holding a saved MochiPipeline.")
    parser.add_argument("--per-relation", type=int, default=10, help="Videos per relation.")
    parser.add_argument("--seed", type=int, default=12345, help="Seed of the evaluation scenes (not training's).")
    parser.add_argument("--steps", type=int, help="Denoising steps (default: the model's).")
    parser.add_argument("--guidance", type=float, help="Classifier-free guidance scale (default: the model's).")
    parser.add_argument("--frames", type=int, default=25, help="Frames (6k+1).")
    parser.add_argument("--size", type=int, default=96, help="Frame side in pixels.")
    parser.add_argument("--hand-over", type=float, nargs="+", metavar="SIGMA",
                        help="Noise levels σ0 at which generation takes over the scene's own noised clip.")
    return parser.parse_args(argv)


def noised_clip(loaded, scene, args) -> tuple[torch.Tensor, torch.Tensor]:
    """The scene's rendered clip as the pipeline's normalised latents z0 (1, C, F', H', W') and its seeded noise ε."""
    frames = render_scene(scene, args.frames, args.size, args.size)[0]
    clean = loaded.spec.normalize_latents(loaded.pipe.vae.config, loaded.spec.encode_clip(loaded.pipe, frames)[0][None])
    return clean, torch.randn(clean.shape, generator=torch.Generator().manual_seed(scene.seed))


def hand_over_at(clean: torch.Tensor, noise: torch.Tensor, sigma: float, used: list[float]):
    """A `callback_on_step_end` that, after the first step whose next noise level is <= `sigma`, swaps the
    latents for (1 - level) * clean + level * noise; appends the level to `used`."""

    def callback(pipe, step, timestep, tensors):
        next_sigma = float(pipe.scheduler.sigmas[step + 1])
        level = 1.0 - next_sigma if pipe.scheduler.config.invert_sigmas else next_sigma  # Mochi's are inverted
        if used or level > sigma:
            return tensors
        used.append(level)
        latents = tensors["latents"]
        return {"latents": ((1.0 - level) * clean + level * noise).to(latents)}

    return callback


def score(loaded, scene, args, callback=None) -> dict[str, bool]:
    """Generate the scene's caption (handing over to `callback` after each step, when given) and judge the
    video: relation (with roles), colours, shapes."""
    prompt = caption(scene)
    request = GenerateConfig(
        prompt=prompt, seed=scene.seed, steps=args.steps, guidance_scale=args.guidance,
        num_frames=args.frames, height=args.size, width=args.size,
    )
    frames = render(loaded, request, callback)
    first, second = prompt_subjects(prompt)
    verdict = judge_relation(frames, first, second)
    appearance = judge_appearance(frames, (first, second))
    return {
        "relation": verdict.relation == scene.relation and verdict.roles_match,
        "relation_any_roles": verdict.relation == scene.relation,
        "colour": bool(appearance["colour_ok"]),
        "shape": bool(appearance["shape_ok"]),
    }


def evaluation_scenes(relation: str, count: int, unseen: bool, seed: int) -> list:
    """`count` fresh scenes of `relation` whose colour pair is (unseen=True) or is not one of the held-out pairs."""
    pool = sample_scenes(40 * count, seed=seed, relations=(relation,))
    picked = [s for s in pool if is_held_out_pair(s.subject1.colour, s.subject2.colour) == unseen]
    return picked[:count]


def hand_over_table(loaded, args) -> None:
    """Print relation, colour and shape accuracy on trained relations (seen pairs) for each hand-over level σ0
    (σ0 = 0: the VAE round trip of the scenes' own clips)."""
    scenes = [s for index, relation in enumerate(TRAINED_RELATIONS)
              for s in evaluation_scenes(relation, args.per_relation, False, args.seed + index)]
    print(f"\nmodel {args.model}: trained relations, seen pairs, {args.per_relation} videos per relation, "
          f"{args.steps} steps, CFG {args.guidance}; the scene's own clip noised to σ replaces the latents once the "
          f"sampler reaches σ0\n")
    print("| hand-over σ0 | σ at hand-over (mean) | relation acc. (roles) | colour acc. | shape acc. | videos |")
    print("|---|---|---|---|---|---|")
    clips = [noised_clip(loaded, scene, args) for scene in scenes]  # encoded once, used at every level
    for sigma in args.hand_over:
        levels: list[float] = []
        rows = []
        for scene, (clean, noise) in zip(scenes, clips):
            used: list[float] = []
            rows.append(score(loaded, scene, args, hand_over_at(clean, noise, sigma, used) if sigma < 1 else None))
            levels += used
        level = f"{sum(levels) / len(levels):.3f}" if levels else "- (plain generation)"
        means = [sum(r[k] for r in rows) / len(rows) for k in ("relation", "colour", "shape")]
        print(f"| {sigma:g} | {level} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {len(rows)} |")


def main(argv=None) -> None:
    args = parse_args(argv)
    name = args.model if args.model == "toy" else str(Path(args.model))
    loaded = load_model(ModelConfig(name=name, device="auto"))
    # Resolved once, so that the tables print the values every video was made with.
    generation = loaded.generation.resolve(args.steps, args.guidance)
    args.steps, args.guidance = generation.steps, generation.guidance_scale
    if args.hand_over:
        hand_over_table(loaded, args)
        return
    groups = [(r, "seen pairs", False) for r in TRAINED_RELATIONS] + [(r, "unseen pairs", True) for r in TRAINED_RELATIONS]
    groups += [(r, "held-out relation", False) for r in HELD_OUT_RELATIONS]
    results: dict[tuple[str, str], list[dict[str, bool]]] = defaultdict(list)
    for index, (relation, group, unseen) in enumerate(groups):
        for scene in evaluation_scenes(relation, args.per_relation, unseen, args.seed + index):
            results[(relation, group)].append(score(loaded, scene, args))
    print(f"\nmodel {args.model}: {args.per_relation} videos per relation and group, {args.frames} frames at "
          f"{args.size}px, {args.steps} steps, CFG {args.guidance}; unseen pairs = colour pairs never trained on\n")
    columns = ("relation", "relation_any_roles", "colour", "shape")
    print("| relation | group | relation acc. (roles) | relation acc. (ignoring roles) | colour acc. | shape acc. |\n"
          "|---|---|---|---|---|---|")
    for (relation, group), rows in results.items():
        means = [sum(r[k] for r in rows) / len(rows) for k in columns]
        print(f"| {relation} | {group} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    for wanted in ("seen pairs", "unseen pairs", "held-out relation"):
        rows = [row for (_, group), rs in results.items() if group == wanted for row in rs]
        means = [sum(r[k] for r in rows) / len(rows) for k in columns]
        print(f"| **all** | **{wanted}** ({len(rows)} videos) | " + " | ".join(f"{m:.2f}" for m in means) + " |")


if __name__ == "__main__":
    main()
