"""The basic offline segmenter on synthetic videos whose true masks are known."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dreamrelation.data.video import read_frames, write_video
from dreamrelation.masks.basic import segment_basic
from dreamrelation.masks.quality import mask_iou as iou

SIZE, FRAMES = 96, 25
RED, BLUE, YELLOW = (220, 40, 40), (40, 80, 220), (230, 210, 40)


def _circle(cx: float, cy: float, radius: float) -> np.ndarray:
    """bool (SIZE, SIZE): a filled disc."""
    ys, xs = np.mgrid[:SIZE, :SIZE]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2


def _square(x0: float, y0: float, side: int) -> np.ndarray:
    """bool (SIZE, SIZE): a filled axis-aligned square with its top-left corner at (x0, y0), clipped to the frame."""
    mask = np.zeros((SIZE, SIZE), bool)
    x0, y0 = round(x0), round(y0)
    mask[max(y0, 0) : max(y0 + side, 0), max(x0, 0) : max(x0 + side, 0)] = True
    return mask


def _background(noisy: bool, rng: np.random.Generator) -> np.ndarray:
    """float (FRAMES, SIZE, SIZE, 3): plain grey, or grey with a faint static texture and per-frame noise."""
    frames = np.full((FRAMES, SIZE, SIZE, 3), 110.0)
    if noisy:
        ys, xs = np.mgrid[:SIZE, :SIZE]
        frames += (8 * np.sin(xs / 5.0) * np.cos(ys / 7.0))[None, :, :, None]
        frames += rng.normal(0, 6, frames.shape)
    return frames


def synthetic_video(case: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render a test video: a circle (subject 1, starts left) and a square (subject 2, starts right).

    Cases: 'apart' (approach, never touch), 'touching' (meet and stay in contact), 'noisy' (touching on a
    textured, noisy background), 'overlap' (the square slides over part of the circle), 'still' (the square
    never moves), 'enters' (the square enters from the right edge after a few frames), 'crossing' (the
    circle passes behind the square to its other side), 'twins' (as 'touching', both shapes red). Returns (uint8 (FRAMES, SIZE, SIZE, 3) frames,
    bool (2, FRAMES, SIZE, SIZE) visible-pixel masks, subject 1 first).
    """
    rng = np.random.default_rng(seed)
    frames = _background(case == "noisy", rng)
    t = np.linspace(0, 1, FRAMES)
    radius, side = 13, 24
    circle_x = {"crossing": 18 + 62 * t, "still": 18 + 30 * t}.get(case, 18 + 17 * t)
    square_x = {
        "apart": 70 - 16 * t,  # right edge of circle at 48, square's left at 54
        "touching": np.minimum(62 - 22 * t, 49),  # meets the circle (right edge 48) and stays there
        "twins": np.minimum(62 - 22 * t, 49),
        "noisy": np.minimum(62 - 22 * t, 49),
        "overlap": 62 - 25 * t,  # ends 11 px over the circle
        "still": np.full(FRAMES, 62.0),
        "enters": 100 - 40 * t,  # fully outside on the first frames
        "crossing": np.full(FRAMES, 40.0),
    }[case]
    circle_y = 48 + 6 * np.sin(2 * np.pi * t)
    colours = {"crossing": (RED, YELLOW), "twins": (RED, RED)}.get(case, (RED, BLUE))
    masks = np.zeros((2, FRAMES, SIZE, SIZE), bool)
    for index in range(FRAMES):
        circle = _circle(circle_x[index], circle_y[index], radius)
        square = _square(square_x[index], 36, side)
        # The square is in front: it hides what it covers of the circle.
        masks[0, index], masks[1, index] = circle & ~square, square
        frames[index][masks[0, index]] = colours[0]
        frames[index][masks[1, index]] = colours[1]
    return np.clip(frames, 0, 255).round().astype(np.uint8), masks


CASES = ("apart", "touching", "noisy", "overlap", "still", "enters", "crossing", "twins")


@pytest.mark.parametrize("case", CASES)
def test_basic_segmenter_recovers_synthetic_masks(case):
    frames, truth = synthetic_video(case)
    masks = segment_basic(frames)
    assert masks.shape == truth.shape and masks.dtype == bool
    scores = [iou(masks[s], truth[s]) for s in (0, 1)]
    assert min(scores) >= 0.9, scores


@pytest.mark.parametrize("case", CASES)
def test_basic_segmenter_survives_h264(tmp_path, case):
    # Compression blurs colour edges (4:2:0 chroma); the masks must still hold.
    frames, truth = synthetic_video(case)
    path = write_video(tmp_path / f"{case}.mp4", frames, fps=24)
    masks = segment_basic(read_frames(path, list(range(FRAMES))))
    assert min(iou(masks[s], truth[s]) for s in (0, 1)) >= 0.9


def test_subject_missing_on_some_frames_is_empty_there():
    frames, truth = synthetic_video("enters")
    masks = segment_basic(frames)
    absent = ~truth[1].any(axis=(1, 2))
    assert absent.any() and not masks[1, absent].any()
    assert masks[0].any(axis=(1, 2)).all()


def test_order_is_left_to_right_on_first_frame_with_both():
    # Mirror the video: the square now starts left, so it becomes subject 1.
    frames, truth = synthetic_video("apart")
    masks = segment_basic(np.ascontiguousarray(frames[:, :, ::-1]))
    assert iou(masks[0], truth[1][:, :, ::-1]) >= 0.9 and iou(masks[1], truth[0][:, :, ::-1]) >= 0.9


def test_empty_and_single_subject_videos():
    frames = np.full((5, 32, 32, 3), 90, np.uint8)
    assert not segment_basic(frames).any()
    for index in range(5):
        frames[index, 8:20, 4 + 3 * index : 16 + 3 * index] = RED
    masks = segment_basic(frames)
    assert masks[0].any(axis=(1, 2)).all() and not masks[1].any()


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        segment_basic(np.zeros((3, 8, 8), np.uint8))


def test_colour_words_put_the_masks_in_caption_order():
    from dreamrelation.masks.basic import order_by_colour_words

    frames = np.full((2, 8, 8, 3), 110, np.uint8)
    left, right = np.zeros((2, 8, 8), bool), np.zeros((2, 8, 8), bool)
    left[:, 2:5, 0:3], right[:, 2:5, 5:8] = True, True
    frames[left], frames[right] = BLUE, RED
    masks = np.stack([left, right])  # the left-to-right order: the blue one first
    ordered, decided = order_by_colour_words(frames, masks, ("red circle", "blue square"))
    assert decided and np.array_equal(ordered[0], right) and np.array_equal(ordered[1], left)
    kept, decided = order_by_colour_words(frames, masks, ("blue square", "red circle"))
    assert decided and np.array_equal(kept, masks)
    for phrases in (("person", "person"), ("red circle", "red square"), ("dog", "red ball")):
        unchanged, decided = order_by_colour_words(frames, masks, phrases)
        assert not decided and np.array_equal(unchanged, masks)


def test_basic_engine_masks_follow_the_caption_when_its_first_subject_starts_on_the_right(tmp_path):
    from dreamrelation.config import MasksConfig
    from dreamrelation.data.dataset import load_subject_masks
    from dreamrelation.masks.pipeline import make_masks
    from PIL import Image

    from dreamrelation.data.video import read_frames, write_video
    from dreamrelation.toyworld.dataset import write_relation_dataset
    from dreamrelation.toyworld.world import sample_scenes

    # Shapes World's subject 1 always starts on the left: mirror a rendered video and its masks.
    write_relation_dataset(tmp_path, sample_scenes(1, seed=7, relations=("approaches",)), 13, 64, 64)
    (video,) = tmp_path.glob("*.mp4")
    write_video(video, np.ascontiguousarray(read_frames(video, list(range(13)))[:, :, ::-1]))
    for png in (tmp_path / "masks").rglob("*.png"):
        Image.open(png).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(png)
    truth = {p.name: load_subject_masks(p, list(range(13)), 64, 64) > 0.5 for p in (tmp_path / "masks").iterdir()}
    shutil.rmtree(tmp_path / "masks")
    (result,) = make_masks(tmp_path, MasksConfig(engine="basic"))
    made = load_subject_masks(result.mask_dir, list(range(13)), 64, 64) > 0.5
    expected = truth[result.name]
    for subject in range(2):
        assert iou(made[subject], expected[subject]) > 0.8 > iou(made[subject], expected[1 - subject])


def test_open_close_drops_specks_fills_pin_holes_and_keeps_a_subject_cut_by_the_edge():
    from dreamrelation.masks.basic import _open_close

    mask = np.zeros((1, 20, 20), bool)
    mask[0, :10, :10] = True  # a subject in the top-left corner...
    mask[0, 5, 5] = False  # ...with a pin hole
    mask[0, 15, 15] = True  # a speck
    mask[0, 15:17, 2:4] = True  # a 2x2 speck
    expected = np.zeros_like(mask)
    expected[0, :10, :10] = True
    np.testing.assert_array_equal(_open_close(mask), expected)


def test_blobs_are_8_connected_and_largest_first():
    from dreamrelation.masks.basic import _blobs

    frame = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = mask[6:10, 6:10] = True  # two 4x4 squares meeting at a corner: one blob of 32
    mask[12:17, 12:17] = True  # 25 pixels
    mask[0, 19] = True  # 1 pixel: under the noise size
    assert [blob.area for blob in _blobs(frame, mask)] == [32, 25]
