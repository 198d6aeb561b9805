"""Offline two-subject segmenter for plain (or lightly noisy / textured) backgrounds and a still camera.

How it works, per video:
1. Background: the per-pixel temporal median of the frames (subjects that move do not survive it). When
   the frame border is one plain colour, median pixels far from that colour are a subject that stayed put,
   so they are replaced by the border colour.
2. Foreground: RGB distance to the background above a threshold: Otsu's on all distances, but never below
   a floor set by the background's noise. Then a 3x3 opening (drops specks) and closing (fills pin holes).
3. Blobs: 8-connected components per frame; components under 0.2% of the frame are noise; the two
   largest are kept.
4. Identity: the first frame with two separate blobs fixes the subjects: subject 1 is the left one (centroid
   x), subject 2 the right one, each remembered by its mean colour. Every other frame (forward, then
   backward from there) gives its blobs to the subjects by colour and position. A single blob holding both
   colours (subjects touching or overlapping) is split pixel by pixel by colour; a single blob of two
   same-coloured subjects that both were just seen is split by their last centroids. A subject not found
   in a frame gets an empty mask there.

Limits: a moving camera, lighting changes or a cluttered scene break the background model; a subject
coloured like the background gets holes; a static object on a plain backdrop counts as a blob; subjects
should each be about one colour (textured subjects are split less reliably where they touch); a subject
hidden behind the other is lost for those frames. Use the SAM2 engine for real footage.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy import ndimage

# Distances are Euclidean in RGB (0..441).
_MAX_DISTANCE = float(np.sqrt(3) * 255)
# The foreground threshold is at least this, and at least _NOISE_FACTOR x the 25th percentile of all
# distances (the background's noise level: most pixels are background).
_MIN_THRESHOLD = 20.0
_NOISE_FACTOR = 4.0
# The border is "plain" when 90% of its median-background pixels are this close to its median colour.
_PLAIN_BORDER_SPREAD = 25.0
# Median-background pixels this far from a plain border colour are a subject that hardly moved.
_STATIC_SUBJECT_DISTANCE = 60.0
# Components smaller than this share of the frame (or _MIN_AREA pixels) are noise.
_MIN_AREA_SHARE = 0.002
_MIN_AREA = 8
# Subjects whose mean colours are further apart than this are told apart (and split) by colour.
_DISTINCT_COLOURS = 60.0
# A blob is two same-coloured subjects merged when it is this much larger than the larger of them.
_MERGED_GROWTH = 1.4
# Morphology works on each frame of an (F, H, W) stack: a 3x3 square in the frame's plane.
_SQUARE = np.zeros((3, 3, 3), bool)
_SQUARE[1] = True
_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


@dataclass
class _Part:
    """A candidate piece of a subject in one frame: its pixels, mean colour, centroid and area."""

    mask: np.ndarray  # bool (H, W)
    colour: np.ndarray  # float (3,) mean RGB
    centroid: np.ndarray  # float (2,) (x, y)
    area: int


@dataclass
class _Subject:
    """What the tracker remembers about a subject: its colour, and where and how large it was last seen."""

    colour: np.ndarray
    centroid: np.ndarray
    area: int


def _part(frame: np.ndarray, mask: np.ndarray) -> _Part:
    """Describe the pixels `mask` (bool (H, W), non-empty) of `frame` (uint8 (H, W, 3))."""
    ys, xs = np.nonzero(mask)
    return _Part(mask, frame[mask].mean(axis=0), np.array([xs.mean(), ys.mean()]), int(len(xs)))


def _distance(frames: np.ndarray, background: np.ndarray) -> np.ndarray:
    """RGB distance of uint8 (F, H, W, 3) frames to a (H, W, 3) background: float32 (F, H, W)."""
    background = background.astype(np.float32)
    # Frame by frame keeps the float copy at one frame's size.
    return np.stack([np.linalg.norm(frame.astype(np.float32) - background, axis=-1) for frame in frames])


def _background(frames: np.ndarray) -> np.ndarray:
    """Estimate the background of uint8 (F, H, W, 3) frames: float32 (H, W, 3) (see the module docstring)."""
    background = np.median(frames, axis=0).astype(np.float32)
    border = np.concatenate([background[:2].reshape(-1, 3), background[-2:].reshape(-1, 3),
                             background[:, :2].reshape(-1, 3), background[:, -2:].reshape(-1, 3)])
    colour = np.median(border, axis=0)
    if np.percentile(np.linalg.norm(border - colour, axis=1), 90) > _PLAIN_BORDER_SPREAD:
        return background
    static = np.linalg.norm(background - colour, axis=-1) > _STATIC_SUBJECT_DISTANCE
    background[static] = colour
    return background


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of non-negative distances (any shape): the cut that best separates two classes."""
    counts, edges = np.histogram(values, bins=256, range=(0.0, _MAX_DISTANCE))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = mass / weight
        mean_high = (total_mass - mass) / (total - weight)
        between = weight * (total - weight) * (mean_low - mean_high) ** 2
    # An empty class has no between-class variance; a single-valued image has no cut at all (the floor rules).
    between = np.nan_to_num(between, nan=0.0, posinf=0.0)
    return float(edges[1:][between.argmax()]) if between.max() > 0 else 0.0


def _threshold(distance: np.ndarray) -> float:
    """The foreground threshold for float (F, H, W) distances: Otsu's, floored by the noise level."""
    floor = max(_MIN_THRESHOLD, _NOISE_FACTOR * float(np.percentile(distance, 25)))
    return max(_otsu(distance), floor)


def _open_close(mask: np.ndarray) -> np.ndarray:
    """Open then close each frame of bool (F, H, W) with a 3x3 square (drops specks, fills pin holes).

    The erosions count the outside as foreground, as if the edge pixels went on beyond the frame, so a
    subject cut by the frame edge keeps its edge pixels; scipy's binary_opening/closing take one border value
    for both of their halves, so they cannot do that. Returns bool (F, H, W).
    """
    opened = ndimage.binary_dilation(ndimage.binary_erosion(mask, _SQUARE, border_value=1), _SQUARE)
    return ndimage.binary_erosion(ndimage.binary_dilation(opened, _SQUARE), _SQUARE, border_value=1)


def _foreground(frames: np.ndarray) -> np.ndarray:
    """Foreground of uint8 (F, H, W, 3) frames: bool (F, H, W), opened then closed with a 3x3 square."""
    distance = _distance(frames, _background(frames))
    return _open_close(distance > _threshold(distance))


def _blobs(frame: np.ndarray, foreground: np.ndarray) -> list[_Part]:
    """The (up to) two largest components of bool (H, W) `foreground` above the noise size, largest first."""
    labels = ndimage.label(foreground, _EIGHT_CONNECTED)[0]
    areas = np.bincount(labels.ravel())
    minimum = max(_MIN_AREA, _MIN_AREA_SHARE * foreground.size)
    order = [label for label in np.argsort(-areas[1:], kind="stable") + 1 if areas[label] >= minimum]
    return [_part(frame, labels == label) for label in order[:2]]


def _split(frame: np.ndarray, blob: _Part, values: np.ndarray, references: np.ndarray) -> list[_Part]:
    """Split a blob's pixels by the nearer of two references.

    Takes the frame, the blob, one float value per blob pixel ((N, K), in np.nonzero order: colours or
    positions) and two (2, K) references. Returns the pieces above the noise size (0, 1 or 2 of them).
    """
    ys, xs = np.nonzero(blob.mask)
    nearest = np.linalg.norm(values[:, None] - references[None], axis=2).argmin(axis=1)
    pieces = []
    for index in (0, 1):
        if (nearest == index).sum() >= max(_MIN_AREA, _MIN_AREA_SHARE * blob.mask.size):
            mask = np.zeros_like(blob.mask)
            mask[ys[nearest == index], xs[nearest == index]] = True
            pieces.append(_part(frame, mask))
    return pieces


def _colours_of(frame: np.ndarray, blob: _Part) -> np.ndarray:
    """The blob's pixel colours, float (N, 3) in np.nonzero order."""
    return frame[blob.mask].astype(np.float64)


def _two_colours(frame: np.ndarray, blob: _Part) -> np.ndarray | None:
    """Two clearly different colours in one blob (2-means on its pixels), as float (2, 3), else None."""
    pixels = _colours_of(frame, blob)
    # Start from the two pixels farthest apart along the main colour axis, then refine.
    centred = pixels - pixels.mean(axis=0)
    projection = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    centres = pixels[[projection.argmin(), projection.argmax()]]
    for _ in range(10):
        nearest = np.linalg.norm(pixels[:, None] - centres[None], axis=2).argmin(axis=1)
        if nearest.min() == nearest.max():
            return None
        centres = np.stack([pixels[nearest == k].mean(axis=0) for k in (0, 1)])
    return centres if np.linalg.norm(centres[0] - centres[1]) > _DISTINCT_COLOURS else None


def _first_pair(frames: np.ndarray, blobs: list[list[_Part]]) -> tuple[int, list[_Part]] | None:
    """The first frame showing both subjects and their two parts, or None when no frame does.

    Prefers the first frame with two separate blobs; failing that (subjects touching throughout), the first
    single blob holding two distinct colours, split by colour.
    """
    for index, found in enumerate(blobs):
        if len(found) == 2:
            return index, found
    for index, found in enumerate(blobs):
        colours = _two_colours(frames[index], found[0]) if found else None
        if colours is not None:
            pieces = _split(frames[index], found[0], _colours_of(frames[index], found[0]), colours)
            if len(pieces) == 2:
                return index, pieces
    return None


def _cost(part: _Part, subject: _Subject, diagonal: float) -> float:
    """How unlike `subject` a part is: colour distance plus centroid distance, each on a 0..1 scale."""
    return (np.linalg.norm(part.colour - subject.colour) / _MAX_DISTANCE
            + np.linalg.norm(part.centroid - subject.centroid) / diagonal)


def _frame_parts(frame: np.ndarray, found: list[_Part], subjects: list[_Subject], both_seen: bool) -> list[_Part]:
    """Turn a frame's blobs into parts, splitting a single blob that holds both subjects."""
    if len(found) != 1:
        return found
    blob = found[0]
    colours = np.stack([subject.colour for subject in subjects])
    if np.linalg.norm(colours[0] - colours[1]) > _DISTINCT_COLOURS:
        pieces = _split(frame, blob, _colours_of(frame, blob), colours)
    elif both_seen and blob.area > _MERGED_GROWTH * max(subject.area for subject in subjects):
        # Same-coloured subjects touching: give each pixel to the nearer of their last centroids.
        ys, xs = np.nonzero(blob.mask)
        centroids = np.stack([subject.centroid for subject in subjects])
        pieces = _split(frame, blob, np.stack([xs, ys], axis=1).astype(np.float64), centroids)
    else:
        pieces = []
    return pieces if len(pieces) == 2 else found


def _assign(parts: list[_Part], subjects: list[_Subject], diagonal: float) -> tuple[int, ...]:
    """Give each part to subject 0 or 1 at the least total cost, both subjects used when there are 2+ parts."""
    labelings = [
        labeling for labeling in product((0, 1), repeat=len(parts)) if len(parts) < 2 or len(set(labeling)) == 2
    ]
    return min(labelings, key=lambda labeling: sum(
        _cost(part, subjects[s], diagonal) for part, s in zip(parts, labeling)))


def _track(frames: np.ndarray, blobs: list[list[_Part]], subjects: list[_Subject], order: range, masks: np.ndarray):
    """Fill masks (bool (2, F, H, W)) for the frames in `order`, following `subjects` from where last seen."""
    subjects = [_Subject(s.colour, s.centroid.copy(), s.area) for s in subjects]
    diagonal = float(np.hypot(*frames.shape[1:3]))
    both_seen = True  # where the subjects were taken from
    for index in order:
        parts = _frame_parts(frames[index], blobs[index], subjects, both_seen)
        seen = set()
        for part, s in zip(parts, _assign(parts, subjects, diagonal)):
            masks[s, index] |= part.mask
            seen.add(s)
        for s in seen:
            ys, xs = np.nonzero(masks[s, index])
            subjects[s].centroid = np.array([xs.mean(), ys.mean()])
            subjects[s].area = len(xs)
        both_seen = len(seen) == 2


def segment_basic(frames: np.ndarray) -> np.ndarray:
    """Segment two subjects in a video with a still camera and a plain background.

    Takes uint8 (F, H, W, 3) RGB frames. Returns bool (2, F, H, W): subject 1 is the left one on the first
    frame where both appear; a subject not found in a frame is empty there (both are empty when nothing
    moves against the background). See the module docstring for the method and its limits.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be uint8 (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
    foreground = _foreground(frames)
    blobs = [_blobs(frame, mask) for frame, mask in zip(frames, foreground)]
    masks = np.zeros((2, *foreground.shape), bool)
    pair = _first_pair(frames, blobs)
    if pair is None:
        # At most one subject: it becomes subject 1 wherever a blob shows up.
        for index, found in enumerate(blobs):
            if found:
                masks[0, index] = found[0].mask
        return masks
    start, parts = pair
    left_first = sorted(parts, key=lambda part: part.centroid[0])
    subjects = [_Subject(part.colour, part.centroid, part.area) for part in left_first]
    _track(frames, blobs, subjects, range(start, len(frames)), masks)
    _track(frames, blobs, subjects, range(start - 1, -1, -1), masks)
    return masks


# Typical RGB of the colour words captions use; only which of two masks is nearer matters, so rough values do.
COLOUR_WORDS = {
    "red": (220, 30, 30), "orange": (245, 140, 30), "yellow": (235, 215, 30), "green": (20, 140, 40),
    "cyan": (40, 220, 235), "blue": (40, 70, 230), "purple": (130, 50, 180), "magenta": (245, 110, 245),
    "pink": (245, 150, 190), "brown": (130, 80, 40), "white": (245, 245, 245), "black": (20, 20, 20),
    "gray": (128, 128, 128), "grey": (128, 128, 128),
}


def _named_colour(phrase: str) -> np.ndarray | None:
    words = [COLOUR_WORDS[w] for w in phrase.lower().replace("-", " ").split() if w in COLOUR_WORDS]
    return np.asarray(words[0], np.float32) if len(words) == 1 else None


def order_by_colour_words(frames: np.ndarray, masks: np.ndarray, phrases: tuple[str, str]) -> tuple[np.ndarray, bool]:
    """Put two masks in phrase order when the phrases name two different colours ("red circle", "blue square").

    Takes uint8 (F, H, W, 3) frames, bool (2, F, H, W) masks and the two subject phrases. Returns (the masks,
    swapped when the second mask's mean colour fits the first phrase better; True when the colours decided
    the order, False when they could not (no single colour word per phrase, the same colour twice, or an
    empty mask), the masks then unchanged).
    """
    named = [_named_colour(phrase) for phrase in phrases]
    if any(c is None for c in named) or np.array_equal(named[0], named[1]) or not all(m.any() for m in masks):
        return masks, False
    means = [frames[mask].astype(np.float32).mean(axis=0) for mask in masks]
    kept = np.linalg.norm(means[0] - named[0]) + np.linalg.norm(means[1] - named[1])
    swapped = np.linalg.norm(means[0] - named[1]) + np.linalg.norm(means[1] - named[0])
    return (masks[::-1].copy() if swapped < kept else masks), True
