"""The example relation datasets: exemplar scenes of one held-out relation each, written as ready datasets.

Each dataset is exemplar videos of ONE relation whose clips take turns over DEFAULT_PAIRS subject pairs of
EXEMPLAR_PAIRS (squares of red, blue, yellow and green, medium size, plain background; the paper's exemplars
show different actors, and a relation learned from one pair does not carry over: docs/toy-model.md), or with
`pairs` 1 all of EXEMPLAR_SUBJECTS (a red square acting on a blue square), in the layout of toyworld.dataset
(captions such as "A red square orbits a blue square.", exact masks, scenes.json). Every clip differs only in
its scene seed (start position, direction, path). Deterministic in the seed: writing again gives the same
decoded frames and masks (the mp4 bytes may differ between encoder builds).

The defaults are what assets/examples/ ships (scripts/make_examples.py writes it) and what
benchmarks/relation_eval.py trains on: the embedded toy model's training shape (scripts/train_toy_base.py:
25 frames at 96x96). Prompts with other colours and shapes then test whether a relation LoRA learnt the
motion rather than the exemplars' look.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dreamrelation.toyworld.dataset import write_relation_dataset
from dreamrelation.toyworld.captions import caption
from dreamrelation.toyworld.world import COLOURS, RELATIONS, SHAPES, Scene, Subject

# The toy model's clip shape (scripts/train_toy_base.py --frames/--size).
DEFAULT_FRAMES = 25
DEFAULT_SIZE = 96
DEFAULT_COUNT = 12
DEFAULT_PAIRS = 4
DEFAULT_SEED = 0
# One fixed pair for every exemplar video: the same shape for both, so two shapes (circle, triangle) and four
# colours stay unseen for the prompts that test generalisation.
EXEMPLAR_SUBJECTS = (Subject("square", "red", "medium"), Subject("square", "blue", "medium"))
# Exemplar variety (the paper's exemplars show different actors): squares of four colours, in an order whose
# first k pairs use the colours about evenly and give each colour both roles; cyan and magenta, circles and
# triangles stay unseen. The first pair is EXEMPLAR_SUBJECTS.
_VARIETY_COLOURS = (("red", "blue"), ("yellow", "green"), ("blue", "red"), ("green", "yellow"), ("red", "yellow"),
                    ("blue", "green"), ("yellow", "red"), ("green", "blue"), ("red", "green"), ("blue", "yellow"),
                    ("green", "red"), ("yellow", "blue"))
EXEMPLAR_PAIRS = tuple((Subject("square", a, "medium"), Subject("square", b, "medium")) for a, b in _VARIETY_COLOURS)


def exemplar_scenes(
    relation: str, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED, pairs: int = DEFAULT_PAIRS
) -> list[Scene]:
    """The exemplar scenes of one relation: `count` scenes on a plain background, scene i of subject pair
    EXEMPLAR_PAIRS[i % pairs] (pairs 1: every scene of EXEMPLAR_SUBJECTS).

    Scene seeds are drawn from a generator seeded by (seed, the relation's index in RELATIONS), so each
    relation gets its own deterministic paths and a larger `count` extends a smaller one. Raises
    ValueError for an unknown relation, a count under 1 or `pairs` outside 1..len(EXEMPLAR_PAIRS).
    """
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; use one of {', '.join(RELATIONS)}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not 1 <= pairs <= len(EXEMPLAR_PAIRS):
        raise ValueError(f"pairs must be between 1 and {len(EXEMPLAR_PAIRS)}, got {pairs}")
    rng = np.random.default_rng([seed, list(RELATIONS).index(relation)])
    return [Scene(*EXEMPLAR_PAIRS[i % pairs], relation, int(rng.integers(2**31)), "plain") for i in range(count)]


def write_examples(
    root: str | Path,
    relation: str,
    count: int = DEFAULT_COUNT,
    num_frames: int = DEFAULT_FRAMES,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    pairs: int = DEFAULT_PAIRS,
) -> Path:
    """Write one relation's exemplar dataset into `root` (replaced whole if it exists); returns `root`.

    Takes the folder, the relation, the number of videos, their frame count (6k+1), their side in pixels
    (a multiple of 16), the scene seed and the number of subject pairs (exemplar_scenes). The folder is written beside `root` first and then moved into
    place, so an interrupted run never leaves a half-written dataset and no file of an older run survives.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-"))
    try:
        write_relation_dataset(staging, exemplar_scenes(relation, count, seed, pairs), num_frames, size, size)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def unseen_prompts(
    relation: str, exemplar_subjects: Sequence[Subject], count: int, seed: int
) -> list[tuple[str, Subject, Subject]]:
    """Prompts of `relation` naming subjects whose colours and shapes all differ from the exemplars'.

    Draws `count` (colour, shape) pairs without repeats (cycling when there are fewer) from the colours and
    shapes the exemplar subjects do not use, deterministic in (seed, relation). Returns [(prompt, subject 1,
    subject 2)], e.g. ('A yellow circle orbits a cyan triangle.', ...). Raises ValueError when the exemplars
    leave fewer than two colours or no shape unused.
    """
    colours = [c for c in COLOURS if c not in {s.colour for s in exemplar_subjects}]
    shapes = [s for s in SHAPES if s not in {s.shape for s in exemplar_subjects}]
    if len(colours) < 2 or not shapes:
        raise ValueError("the exemplars use too many colours or shapes to leave an unseen pair")
    pairs = [
        (Subject(shape1, colour1), Subject(shape2, colour2))
        for colour1 in colours
        for colour2 in colours
        if colour1 != colour2
        for shape1 in shapes
        for shape2 in shapes
    ]
    order = np.random.default_rng([seed, list(RELATIONS).index(relation), 1]).permutation(len(pairs))
    chosen = [pairs[order[i % len(pairs)]] for i in range(count)]
    return [(caption(Scene(first, second, relation, 0)), first, second) for first, second in chosen]
