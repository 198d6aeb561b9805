"""Rasterise Shapes World scenes into frames and exact subject masks.

Masks come first and the frames are painted from them, with no anti-aliasing, so every pixel of a subject's
colour is in its mask and nowhere else. Subject 1 (the actor) is drawn on top: where the two overlap, the
pixel belongs to subject 1 alone.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dreamrelation.toyworld.world import COLOURS, Scene, half_side, trajectories

BACKGROUND_GREY = 128
# The textured background: smooth blotches up to this far from the grey, plus a per-pixel grain. Both stay
# far below the ~150 that separates the grey from any subject colour.
_BLOTCH_AMPLITUDE = 18
_BLOTCH_CELLS = 5
_GRAIN_AMPLITUDE = 5


def shape_mask(shape: str, centre: np.ndarray, half: float, height: int, width: int) -> np.ndarray:
    """Rasterise one shape: bool (height, width), True where a pixel's centre lies inside it.

    Takes a SHAPES name, its centre (x, y) in pixels, the half-side of its bounding square in pixels and the
    frame size. A circle fills the square's inscribed disc; a triangle points up, apex at the top middle of
    the square, base along its bottom edge.
    """
    dx = np.arange(width)[None, :] + 0.5 - centre[0]
    dy = np.arange(height)[:, None] + 0.5 - centre[1]
    if shape == "circle":
        return dx**2 + dy**2 <= half**2
    inside_square = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "square":
        return inside_square
    if shape == "triangle":
        return inside_square & (np.abs(dx) <= (dy + half) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def _background(scene: Scene, height: int, width: int) -> np.ndarray:
    """The scene's still background: uint8 (height, width, 3), plain grey or grey with seeded light texture."""
    grey = np.full((height, width, 3), float(BACKGROUND_GREY))
    if scene.background == "plain":
        return grey.astype(np.uint8)
    # A stream apart from the trajectory's, so the texture does not change where the subjects go.
    rng = np.random.default_rng([scene.seed, 1])
    cells = rng.uniform(-_BLOTCH_AMPLITUDE, _BLOTCH_AMPLITUDE, (_BLOTCH_CELLS, _BLOTCH_CELLS)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BILINEAR))
    grain = rng.uniform(-_GRAIN_AMPLITUDE, _GRAIN_AMPLITUDE, (height, width, 3))
    return np.clip(grey + blotches[..., None] + grain, 0, 255).round().astype(np.uint8)


def render_scene(scene: Scene, num_frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene as a video and its subjects' masks.

    Takes a scene, the frame count and the frame size in pixels; the background is the scene's. Returns
    (frames uint8 (num_frames, height, width, 3) RGB, masks bool (2, num_frames, height, width)), masks in
    the scene's subject order. The two masks never overlap (subject 1 occludes subject 2), and a pixel has
    subject i's colour exactly where mask i is set. Deterministic in the scene.
    """
    centres = trajectories(scene, num_frames, height, width)
    subjects = (scene.subject1, scene.subject2)
    masks = np.stack(
        [
            [shape_mask(subject.shape, centre, half_side(subject, height, width), height, width) for centre in path]
            for subject, path in zip(subjects, centres)
        ]
    )
    masks[1] &= ~masks[0]
    frames = np.repeat(_background(scene, height, width)[None], num_frames, axis=0)
    for subject, mask in zip(subjects, masks):
        frames[mask] = COLOURS[subject.colour]
    return frames, masks
