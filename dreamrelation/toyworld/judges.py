"""Judges for Shapes World video, generated or rendered: which relation it shows, with whom in which role,
and whether the prompted subjects (and only they) appear.

A judge sees decoded frames only. The relation judge tracks the two prompted colours and reads the
relation off their centre paths, measured in shares of the frame's shorter side so any resolution works.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from dreamrelation.toyworld.tracking import (
    COLOUR_NAMES,
    Tracks,
    blob_shape,
    classify_pixels,
    colour_blobs,
    track_subjects,
)
from dreamrelation.toyworld.world import RELATIONS, SIZES

# track_subjects lives in tracking but belongs to the judges' interface.
__all__ = [
    "LEAK_SHARE",
    "NONE",
    "Verdict",
    "colours_seen_as_subjects",
    "confusion_matrix",
    "format_confusion",
    "judge_appearance",
    "judge_relation",
    "judge_tracks",
    "track_subjects",
]

NONE = "none"
# A subject must be found on at least this share of frames to be judged (or to count as present).
_PRESENT_SHARE = 0.5
# An exemplar subject seen on this share of frames has leaked into the video; seen means its colour forms a blob at
# least as large as the smallest subject the world draws (a small triangle). Smaller blobs are fringes and decode
# artefacts: the toy VAE paints them on 0.42 of ground-truth clips of unseen-subject prompts, and at this size on
# 0.08, while a real exemplar subject passes it on every clip (benchmarks/leak_judge.py).
LEAK_SHARE = 0.25
_LEAK_AREA_SHARE = min(SIZES.values()) ** 2 / 2
# All distances below are shares of the frame's shorter side.
_MOVES = 0.1  # a subject whose centre strays further than this from its start moves
_STARTED = 0.05  # ... and has started moving once it is this far from its start
_CHANGE = 0.1  # a distance change this large is deliberate, not jitter
_TRAVEL = 0.15  # net change in distance that makes an approach or a departure
_SWAP_REACH = 0.2  # a swapper ends this close to the other's start
# Angle swept around the still subject, in turns: an orbit goes (nearly) all the way round, a jump half.
_ORBIT_TURNS = 0.75
_JUMP_TURNS = 0.3
_ABOVE = 0.1  # a jumper passes at least this far above the other's centre
_SAME_WAY = 0.7  # cosine between two paths that head the same way (pushing, following)
_LATER = 0.25  # share of the clip by which a pushed subject starts after its pusher


class SubjectLike(Protocol):
    """Anything naming a subject's look: a world Subject or a captions PromptSubject."""

    @property
    def colour(self) -> str: ...

    @property
    def shape(self) -> str: ...


class Verdict(NamedTuple):
    """A relation judgement.

    relation: a RELATIONS name or NONE. roles_match: the prompt's first subject plays the actor (always
    True for symmetric relations, False for NONE). confidence: 0 to 1, how far the deciding measurements
    clear their thresholds (0 for NONE).
    """

    relation: str
    roles_match: bool
    confidence: float

    @property
    def label(self) -> str:
        """The verdict as one class name: the relation, with ' (roles swapped)' when the roles are reversed."""
        return self.relation if self.roles_match or self.relation == NONE else f"{self.relation} (roles swapped)"


_UNDECIDED = Verdict(NONE, False, 0.0)


def _margin(value: float, threshold: float, scale: float) -> float:
    """How far `value` clears `threshold` upward, in units of `scale`, clipped to [0, 1].

    For an upper bound pass both negated: _margin(-x, -limit, scale).
    """
    return float(np.clip((value - threshold) / scale, 0, 1))


def _fill_and_smooth(centres: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Fill a float (F, 2) path's absent frames by linear interpolation, then take a 3-frame running median.

    The median removes a single-frame glitch (a blob lost or misplaced on one decoded frame) without
    lagging the motion.
    """
    frames = np.arange(len(centres))
    filled = np.stack([np.interp(frames, frames[present], centres[present, axis]) for axis in (0, 1)], axis=1)
    padded = np.concatenate([filled[:1], filled, filled[-1:]])
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)


def _one_mover(mover: np.ndarray, still: np.ndarray, actor_is_first: bool, confidence: float) -> Verdict:
    """Judge a clip where only `mover` (float (F, 2), side units) moves around `still`."""
    offset = mover - np.median(still, axis=0)
    distance = np.linalg.norm(offset, axis=1)
    angle = np.unwrap(np.arctan2(offset[:, 1], offset[:, 0]))
    turns = abs(angle[-1] - angle[0]) / (2 * np.pi)
    if turns >= _JUMP_TURNS:
        if turns >= _ORBIT_TURNS:
            return Verdict("orbits", actor_is_first, min(confidence, _margin(turns, _ORBIT_TURNS, 0.25)))
        crossing = np.argmin(np.abs(offset[:, 0]))
        if np.sign(offset[0, 0]) == np.sign(offset[-1, 0]) or offset[crossing, 1] > -_ABOVE:
            return _UNDECIDED  # a half turn that is no jump over the other (passing under it, say)
        margins = (_margin(turns, _JUMP_TURNS, 0.1), _margin(-offset[crossing, 1], _ABOVE, _ABOVE), confidence)
        return Verdict("jumps_over", actor_is_first, min(margins))
    drop, rise = distance[0] - distance.min(), distance[-1] - distance.min()
    if drop > _CHANGE and rise > _CHANGE:
        return Verdict("bounces_off", actor_is_first, min(confidence, _margin(min(drop, rise), _CHANGE, _CHANGE)))
    change = distance[-1] - distance[0]
    if abs(change) > _TRAVEL:
        relation = "approaches" if change < 0 else "moves_away_from"
        return Verdict(relation, actor_is_first, min(confidence, _margin(abs(change), _TRAVEL, _TRAVEL)))
    return _UNDECIDED


def _both_move(paths: np.ndarray, started: np.ndarray) -> Verdict:
    """Judge a clip where both subjects move: paths float (2, F, 2) in side units, started float (2,) onsets."""
    first, second = paths
    misses = np.linalg.norm(first[-1] - second[0]), np.linalg.norm(second[-1] - first[0])
    if max(misses) < _SWAP_REACH:
        return Verdict("swaps_places_with", True, _margin(-max(misses), -_SWAP_REACH, _SWAP_REACH / 2))
    heading = paths[:, -1] - paths[:, 0]
    cosine = heading[0] @ heading[1] / (np.linalg.norm(heading, axis=1).prod() + 1e-9)
    if cosine < _SAME_WAY:
        return _UNDECIDED
    same_way = _margin(cosine, _SAME_WAY, 1 - _SAME_WAY)
    delay = started[1] - started[0]  # positive when subject 1 starts first
    if abs(delay) >= _LATER:
        return Verdict("pushes", bool(delay > 0), min(same_way, _margin(abs(delay), _LATER, _LATER)))
    # The follower is behind: the other's offset from it points the way both travel.
    ahead = np.mean((second - first) @ (heading.sum(axis=0) / np.linalg.norm(heading.sum(axis=0))))
    return Verdict("follows", bool(ahead > 0), min(same_way, _margin(-abs(delay), -_LATER, _LATER)))


def judge_tracks(tracks: Tracks, side: float) -> Verdict:
    """Classify the relation shown by two subjects' tracks.

    Takes Tracks (centres float (2, F, 2) in pixels, present bool (2, F)), subject 1 being the prompt's
    first subject, and the frame's shorter side in pixels. Returns a Verdict; NONE when a subject is
    missing on over half the frames, nothing moves, or the motion fits no relation.
    """
    present = tracks.present
    if (present.mean(axis=1) < _PRESENT_SHARE).any():
        return _UNDECIDED
    paths = np.stack([_fill_and_smooth(c, p) for c, p in zip(tracks.centres, present)]) / side
    strayed = np.linalg.norm(paths - paths[:, :1], axis=2)  # (2, F)
    reach = strayed.max(axis=1)
    moving = reach > _MOVES
    if moving.all():
        onsets = (strayed > _STARTED).argmax(axis=1) / (paths.shape[1] - 1)
        return _both_move(paths, onsets)
    if not moving.any():
        return _UNDECIDED
    mover = int(np.argmax(reach))
    # How clearly one subject moves and the other stays caps every one-mover verdict's confidence.
    clarity = min(_margin(reach[mover], _MOVES, _MOVES), _margin(-reach[1 - mover], -_MOVES, _MOVES))
    return _one_mover(paths[mover], paths[1 - mover], mover == 0, clarity)


def judge_relation(frames: np.ndarray, subject1: SubjectLike, subject2: SubjectLike) -> Verdict:
    """Judge which relation a video shows between the prompt's two subjects, roles included.

    Takes uint8 (F, H, W, 3) RGB frames and the prompt's subjects in prompt order (only their colours are
    used). Returns a Verdict: e.g. Verdict('orbits', True, c) when subject1 orbits subject2, and roles_match
    False when subject2 orbits subject1.
    """
    tracks = track_subjects(frames, subject1.colour, subject2.colour)
    return judge_tracks(tracks, min(frames.shape[1:3]))


def judge_appearance(
    frames: np.ndarray, prompt_subjects: Sequence[SubjectLike], exemplar_subjects: Sequence[SubjectLike] = ()
) -> dict:
    """Check that a video shows the prompted subjects and nothing of the exemplar videos' subjects.

    Takes uint8 (F, H, W, 3) RGB frames, the prompt's subjects and, optionally, the subjects of the
    exemplar videos a relation was learned from. Returns a dict:
      colour_ok: bool, every prompted colour is on at least half the frames;
      shape_ok: bool, each prompted colour's blob most often has the prompted shape;
      shapes: {prompted colour: its most frequent shape, or None when the colour is missing};
      leaked: ['colour shape', ...] exemplar subjects seen: an unprompted exemplar colour as a blob the size of
        a subject (at least the smallest one's area) on a quarter of the frames, or a prompted colour wearing the
        exemplar's shape instead of the prompted one;
      leak: bool, leaked is not empty.
    """
    labels = classify_pixels(frames)
    colours = {subject.colour for subject in (*prompt_subjects, *exemplar_subjects)}
    blobs = {colour: colour_blobs(labels, colour) for colour in colours}
    seen = {colour: blobs[colour].any(axis=(1, 2)).mean() for colour in colours}
    as_subject = {colour: _subject_sized(blobs[colour]).mean() for colour in colours}
    shapes = {}
    for subject in prompt_subjects:
        found = [blob_shape(blob) for blob in blobs[subject.colour] if blob.any()]
        shapes[subject.colour] = Counter(found).most_common(1)[0][0] if found else None
    prompted = {subject.colour: subject.shape for subject in prompt_subjects}
    leaked = [
        f"{subject.colour} {subject.shape}"
        for subject in exemplar_subjects
        if (subject.colour not in prompted and as_subject[subject.colour] >= LEAK_SHARE)
        or (prompted.get(subject.colour) not in (None, subject.shape) and shapes[subject.colour] == subject.shape)
    ]
    return {
        "colour_ok": all(seen[subject.colour] >= _PRESENT_SHARE for subject in prompt_subjects),
        "shape_ok": all(shapes[subject.colour] == subject.shape for subject in prompt_subjects),
        "shapes": shapes,
        "leaked": leaked,
        "leak": bool(leaked),
    }


def _subject_sized(blobs: np.ndarray) -> np.ndarray:
    """bool (F,): the frames on which one colour's bool (F, H, W) blob is as large as the smallest subject."""
    return blobs.sum(axis=(1, 2)) >= _LEAK_AREA_SHARE * min(blobs.shape[1:3]) ** 2


def colours_seen_as_subjects(frames: np.ndarray) -> set[str]:
    """The vocabulary colours that show as a subject, by the leak rule: a blob the size of the smallest subject on a
    quarter of the frames. Takes uint8 (F, H, W, 3) RGB frames; returns COLOURS names."""
    labels = classify_pixels(frames)
    return {name for name in COLOUR_NAMES if _subject_sized(colour_blobs(labels, name)).mean() >= LEAK_SHARE}


def confusion_matrix(labels: Sequence[str], predictions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Count true labels against predicted ones.

    Takes equal-length sequences of class names (e.g. Verdict.label values). Returns (names, int64 (N, N)
    matrix), matrix[i, j] = how often true names[i] was predicted names[j]; names are the RELATIONS present
    in registry order, then any other names sorted.
    """
    order = list(RELATIONS)
    names = sorted(set(labels) | set(predictions), key=lambda n: (order.index(n) if n in order else len(order), n))
    matrix = np.zeros((len(names), len(names)), np.int64)
    for label, prediction in zip(labels, predictions, strict=True):
        matrix[names.index(label), names.index(prediction)] += 1
    return names, matrix


def format_confusion(names: Sequence[str], matrix: np.ndarray) -> str:
    """Lay out a confusion matrix as text: one row per true class, columns numbered as the rows are."""
    width = max(len(name) for name in names)
    header = " " * (width + 6) + " ".join(f"{j:>3}" for j in range(len(names)))
    rows = [
        f"{i:>3} {name:<{width}}  " + " ".join(f"{count:>3}" for count in row)
        for i, (name, row) in enumerate(zip(names, matrix))
    ]
    return "\n".join([header, *rows])
