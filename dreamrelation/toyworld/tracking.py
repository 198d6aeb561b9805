"""Find Shapes World subjects in decoded video by colour, and name their shapes.

Works on lossy, blurry frames (codec round trips, VAE decodes, generated video): each pixel takes the
nearest vocabulary colour or the background, and each colour keeps its largest 4-connected blob per frame.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from dreamrelation.toyworld.world import COLOURS

COLOUR_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in COLOUR_NAMES], np.float32)
# A pixel further than this (RGB distance) from every vocabulary colour is no subject's: generated video
# shifts colours, but a shift this large means the model drew some other colour.
_COLOUR_TOLERANCE = 100.0
# A blob smaller than this share of the squared shorter side is noise (a colour fringe where two subjects
# touch, a stray decode artefact); the smallest subject, a small triangle, covers about 0.016.
_MIN_AREA_SHARE = 0.004
# Shape cues that survive blur (a filled-box share does not: blur rounds a square's corners into a
# circle's fill). An upward triangle's centroid sits 1/6 of its height below its box's middle; circles and
# squares are centred. A square is sqrt(2) wider along the diagonals than along the axes; a circle is not.
# Cuts measured on rendered shapes blurred 4x (circle <= 0.03 offset, <= 1.05 ratio; triangle >= 0.065
# offset, square >= 1.15 ratio, 95% of frames).
_TRIANGLE_OFFSET = 0.05
_SQUARE_DIAGONAL_RATIO = 1.12
# 4-connected, as when the cuts above were measured: the judges' verdicts depend on it.
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


class Tracks(NamedTuple):
    """Two subjects' tracks: centres float64 (2, F, 2) (x, y) in pixels, NaN where absent; present bool (2, F)."""

    centres: np.ndarray
    present: np.ndarray


def classify_pixels(frames: np.ndarray) -> np.ndarray:
    """Label every pixel with its colour.

    Takes uint8 (F, H, W, 3) RGB frames. Returns int64 (F, H, W): an index into COLOUR_NAMES, or -1 where
    the pixel is nearer the frame's background (its median colour, as subjects cover well under half the
    frame) than any vocabulary colour, or further than the tolerance from them all.
    """
    pixels = frames.astype(np.float32).reshape(len(frames), -1, 3)
    background = np.median(pixels, axis=1, keepdims=True)
    # Squared distances; the palette's come from one matrix product (|p|^2 - 2 p.c + |c|^2).
    to_background = ((pixels - background) ** 2).sum(axis=-1)
    to_palette = (pixels**2).sum(axis=-1, keepdims=True) - 2 * pixels @ _PALETTE.T + (_PALETTE**2).sum(axis=-1)
    nearest = to_palette.argmin(axis=-1)
    best = np.take_along_axis(to_palette, nearest[..., None], axis=-1)[..., 0]
    labels = np.where((best < to_background) & (best < _COLOUR_TOLERANCE**2), nearest, -1)
    return labels.reshape(frames.shape[:3])


def largest_components(mask: np.ndarray) -> np.ndarray:
    """Keep each frame's largest 4-connected blob (of equal ones, the first in raster order).

    Takes bool (F, H, W). Returns bool (F, H, W), all False on frames with no foreground.
    """
    largest = np.zeros(mask.shape, bool)
    for kept, frame in zip(largest, mask):
        labels, count = ndimage.label(frame, _FOUR_CONNECTED)
        if count:
            # argmax takes the first of equal sizes, and labels count up in raster order.
            kept[...] = labels == np.bincount(labels.ravel())[1:].argmax() + 1
    return largest


def colour_blobs(labels: np.ndarray, colour: str) -> np.ndarray:
    """One colour's subject per frame: bool (F, H, W), its largest blob where that blob is big enough, else empty.

    Takes classify_pixels' int64 (F, H, W) labels and a COLOURS name.
    """
    blobs = largest_components(labels == COLOUR_NAMES.index(colour))
    big_enough = blobs.sum(axis=(1, 2)) >= _MIN_AREA_SHARE * min(labels.shape[1:]) ** 2
    return blobs & big_enough[:, None, None]


def blob_centres(blobs: np.ndarray) -> np.ndarray:
    """Centroids of bool (F, H, W) blobs: float64 (F, 2) (x, y) in pixels (pixel centres at +0.5), NaN if empty."""
    area = blobs.sum(axis=(1, 2)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (blobs.sum(axis=1) * (np.arange(blobs.shape[2]) + 0.5)).sum(axis=1) / area
        y = (blobs.sum(axis=2) * (np.arange(blobs.shape[1]) + 0.5)).sum(axis=1) / area
    return np.stack([x, y], axis=1)


def track_subjects(frames: np.ndarray, subject1_colour: str, subject2_colour: str) -> Tracks:
    """Track two subjects by colour.

    Takes uint8 (F, H, W, 3) RGB frames and each subject's COLOURS name. Returns Tracks: per frame the
    centroid of each colour's largest blob, and whether that blob is big enough to count as the subject.
    """
    labels = classify_pixels(frames)
    blobs = [colour_blobs(labels, colour) for colour in (subject1_colour, subject2_colour)]
    present = np.stack([b.any(axis=(1, 2)) for b in blobs])
    return Tracks(np.stack([blob_centres(b) for b in blobs]), present)


def blob_shape(blob: np.ndarray) -> str:
    """Name a non-empty bool (H, W) blob's shape (a SHAPES name), from its centroid's offset and diagonal extent."""
    ys, xs = np.nonzero(blob)
    height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
    if (ys.mean() - (ys.max() + ys.min()) / 2) / height > _TRIANGLE_OFFSET:
        return "triangle"
    # Extents along both diagonals over extents along both axes (+1 each: a pixel is 1 wide either way).
    diagonal = np.ptp(xs + ys) / np.sqrt(2) + np.ptp(xs - ys) / np.sqrt(2) + 2
    return "square" if diagonal / (height + width) > _SQUARE_DIAGONAL_RATIO else "circle"
