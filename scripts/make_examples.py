"""Write the shipped example relation datasets: assets/examples/<relation>/ for each held-out Shapes World relation.

Each folder is a ready relation dataset (dreamrelation.data.dataset layout) of one relation's exemplar videos;
dreamrelation.toyworld.examples defines them (subjects, scenes, defaults). Deterministic in --seed: rerunning
writes the same files (the mp4 bytes may differ between encoder builds; the decoded frames and the masks do
not).

The clip shape is the embedded toy model's training shape (scripts/train_toy_base.py: 25 frames at 96x96);
pass the same --frames/--size to `dreamrelation train` (the Mochi family's own default is 61x480x848).
Prompts with other colours and shapes (e.g. "A yellow circle orbits a cyan triangle.") then test whether a
relation LoRA learnt the motion rather than the exemplars' look (benchmarks/relation_eval.py does that).

    PYTHONPATH=. python scripts/make_examples.py                          # assets/examples/{orbits,jumps_over}
    PYTHONPATH=. python scripts/make_examples.py --output /tmp/ex --relations orbits --count 3 --pairs 1 --frames 13 --size 64
    dreamrelation train --data assets/examples/orbits --model toy --frames 25 --height 96 --width 96 ...
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from dreamrelation.config import EXAMPLES_DIR
from dreamrelation.toyworld.examples import (
    DEFAULT_COUNT,
    DEFAULT_FRAMES,
    DEFAULT_PAIRS,
    DEFAULT_SEED,
    DEFAULT_SIZE,
    EXEMPLAR_PAIRS,
    write_examples,
)
from dreamrelation.toyworld.world import HELD_OUT_RELATIONS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=EXAMPLES_DIR, help="Folder receiving one folder per relation.")
    parser.add_argument(
        "--relations", default=",".join(HELD_OUT_RELATIONS), help="Comma-separated relations (default: held-out ones)."
    )
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="Exemplar videos per relation.")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, choices=range(1, len(EXEMPLAR_PAIRS) + 1),
                        metavar="K", help="Subject pairs the videos take turns over (1: a red and a blue square).")
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
        folder = write_examples(args.output / relation, relation, args.count, args.frames, args.size, args.seed,
                                args.pairs)
        size_kb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1024
        print(f"{folder}: {args.count} videos of {relation!r}, {args.frames} frames at {args.size}px, {size_kb:.0f} KB")
        folders.append(folder)
    return folders


if __name__ == "__main__":
    main()
