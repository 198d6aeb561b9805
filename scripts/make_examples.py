"""Write the shipped example relation datasets: assets/examples/<relation>/ for each held-out Shapes World relation.

Each folder is a ready relation dataset (dreamrelation.data.dataset layout): a few exemplar videos of ONE
relation, all with the same subject pair (EXEMPLAR_SUBJECTS: a red square acting on a blue square, medium
size, plain background), NAME.txt captions ("A red square orbits a blue square."), the generator's exact
ground-truth masks in masks/NAME/ and scenes.json (the scenes, to re-render or judge). Every clip differs
only in its scene seed (start position, direction, path). Deterministic in --seed: rerunning writes the same
files (the mp4 bytes may differ between encoder builds; the decoded frames and the masks do not).

The clip shape is the embedded toy model's training shape (scripts/train_toy_base.py: 25 frames at 96x96);
pass the same --frames/--size to `dreamrelation train` (the Mochi family's own default is 61x480x848).
Prompts with other colours and shapes (e.g. "A yellow circle orbits a cyan triangle.") then test whether a
relation LoRA learnt the motion rather than the exemplars' look (benchmarks/relation_eval.py does that).

    PYTHONPATH=. python scripts/make_examples.py                          # assets/examples/{orbits,jumps_over}
    PYTHONPATH=. python scripts/make_examples.py --output /tmp/ex --relations orbits --count 3 --frames 13 --size 64
    dreamrelation train --data assets/examples/orbits --model toy --frames 25 --height 96 --width 96 ...
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dreamrelation.toyworld.dataset import write_relation_dataset
from dreamrelation.toyworld.world import HELD_OUT_RELATIONS, RELATIONS, Scene, Subject

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "assets" / "examples"
# The toy model's clip shape (scripts/train_toy_base.py --frames/--size).
DEFAULT_FRAMES = 25
DEFAULT_SIZE = 96
DEFAULT_COUNT = 6
DEFAULT_SEED = 0
# One fixed pair for every exemplar video: the same shape for both, so two shapes (circle, triangle) and four
# colours stay unseen for the prompts that test generalisation.
EXEMPLAR_SUBJECTS = (Subject("square", "red", "medium"), Subject("square", "blue", "medium"))


def exemplar_scenes(relation: str, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> list[Scene]:
    """The exemplar scenes of one relation: `count` scenes of EXEMPLAR_SUBJECTS on a plain background.

    Scene seeds are drawn from a generator seeded by (seed, the relation's index in RELATIONS), so each
    relation gets its own deterministic paths and a larger `count` extends a smaller one. Raises
    ValueError for an unknown relation or a count under 1.
    """
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; use one of {', '.join(RELATIONS)}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = np.random.default_rng([seed, list(RELATIONS).index(relation)])
    first, second = EXEMPLAR_SUBJECTS
    return [Scene(first, second, relation, int(rng.integers(2**31)), "plain") for _ in range(count)]


def write_examples(
    root: str | Path,
    relation: str,
    count: int = DEFAULT_COUNT,
    num_frames: int = DEFAULT_FRAMES,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
) -> Path:
    """Write one relation's exemplar dataset into `root` (replaced whole if it exists); returns `root`.

    The folder is written beside `root` first and then moved into place, so an interrupted run never
    leaves a half-written dataset and no file of an older run survives.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-"))
    try:
        write_relation_dataset(staging, exemplar_scenes(relation, count, seed), num_frames, size, size)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Folder receiving one folder per relation.")
    parser.add_argument(
        "--relations", default=",".join(HELD_OUT_RELATIONS), help="Comma-separated relations (default: held-out ones)."
    )
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="Exemplar videos per relation.")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="Frames per video (6k+1).")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="Frame side in pixels (multiple of 16).")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="Seed of the exemplar scenes.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Write every requested relation's folder and print where; returns the folders."""
    args = parse_args(argv)
    relations = [name.strip() for name in args.relations.split(",") if name.strip()]
    folders = []
    for relation in relations:
        folder = write_examples(args.output / relation, relation, args.count, args.frames, args.size, args.seed)
        size_kb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1024
        print(f"{folder}: {args.count} videos of {relation!r}, {args.frames} frames at {args.size}px, {size_kb:.0f} KB")
        folders.append(folder)
    return folders


if __name__ == "__main__":
    main()
