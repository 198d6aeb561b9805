"""Quality flags for a video's two subject masks: what a user should look at before training on them."""

from __future__ import annotations

import numpy as np

# A subject may be absent on at most this share of the frames (occlusion, leaving the frame).
MAX_MISSING_SHARE = 0.10
# Overlap is measured as intersection over the SMALLER mask (IoU would hide a small subject swallowed by
# a large one); above this share, one subject's mask has likely grown into the other.
MAX_OVERLAP_SHARE = 0.30
# A mask covering more of the frame than this has likely taken in the background.
MAX_COVERAGE_SHARE = 0.60


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks of one subject (bool or 0/1 arrays of one shape, any number of
    frames); 1.0 when both are empty."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _frames_text(frames: np.ndarray, total: int) -> str:
    """'4 of 25 frames (16%)' for a bool (F,) selection."""
    count = int(frames.sum())
    return f"{count} of {total} frames ({count / total:.0%})"


def quality_flags(masks: np.ndarray) -> list[str]:
    """Return human-readable problems with two subjects' masks, or [] when they look usable.

    Takes bool or 0/1 masks (2, F, H, W). Flags: a subject empty in every frame (fewer than two subjects
    found); a subject missing on more than MAX_MISSING_SHARE of the frames; the masks overlapping by more
    than MAX_OVERLAP_SHARE of the smaller one; a mask covering more than MAX_COVERAGE_SHARE of the frame.
    Frame numbers in the messages count from 0.
    """
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 4 or masks.shape[0] != 2:
        raise ValueError(f"masks must be (2, F, H, W), got shape {masks.shape}")
    total, pixels = masks.shape[1], masks.shape[2] * masks.shape[3]
    areas = masks.sum(axis=(2, 3))  # (2, F)
    flags = []
    for subject in (0, 1):
        name = f"subject {subject + 1}"
        missing = areas[subject] == 0
        if missing.all():
            flags.append(f"{name} was not found in any frame: fewer than two subjects; check the video")
            continue
        if missing.mean() > MAX_MISSING_SHARE:
            first = int(np.flatnonzero(missing)[0])
            flags.append(f"{name} is missing on {_frames_text(missing, total)}, more than "
                         f"{MAX_MISSING_SHARE:.0%}; first at frame {first}")
        coverage = areas[subject] / pixels
        large = coverage > MAX_COVERAGE_SHARE
        if large.any():
            worst = int(coverage.argmax())
            flags.append(f"{name} covers more than {MAX_COVERAGE_SHARE:.0%} of the frame on "
                         f"{_frames_text(large, total)}; worst {coverage[worst]:.0%} at frame {worst} "
                         "(background taken in?)")
    smaller = areas.min(axis=0)
    overlap = np.where(smaller > 0, (masks[0] & masks[1]).sum(axis=(1, 2)) / np.maximum(smaller, 1), 0.0)
    overlapping = overlap > MAX_OVERLAP_SHARE
    if overlapping.any():
        worst = int(overlap.argmax())
        flags.append(f"the subjects overlap by more than {MAX_OVERLAP_SHARE:.0%} of the smaller mask on "
                     f"{_frames_text(overlapping, total)}; worst {overlap[worst]:.0%} at frame {worst}")
    return flags
