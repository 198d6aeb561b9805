"""SAM2 video segmenter on a tiny random-weight Sam2VideoModel saved like a Hub model (no downloads)."""

import numpy as np
import pytest
import torch

from dreamrelation.masks.prompts import SubjectPrompt
from dreamrelation.masks.sam2 import (
    Sam2VideoSegmenter,
    SegmenterUnavailable,
    _fill_frames,
    _prompt_tensors,
    masks_to_video_size,
    preprocess_frames,
)
from mask_models import SAM2_SIZE, save_tiny_sam2

SIZE = SAM2_SIZE  # the tiny model's square input


@pytest.fixture(scope="module")
def sam2_dir(tmp_path_factory):
    return save_tiny_sam2(tmp_path_factory.mktemp("sam2"))


@pytest.fixture(scope="module")
def segmenter(sam2_dir):
    return Sam2VideoSegmenter(str(sam2_dir), torch.device("cpu"), input_size=SIZE)


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, (7, 48, 64, 3), dtype=np.uint8)


def boxes_on(frame):
    return [SubjectPrompt(0, frame, box=(2, 2, 30, 40)), SubjectPrompt(1, frame, box=(32, 5, 60, 45))]


def test_preprocess_frames_matches_hand_computation():
    # A 2x2 frame upsampled to 4x4: bilinear (half-pixel centres) samples each row/column at -0.25, 0.25,
    # 0.75, 1.25 -> weights (1, 0), (.75, .25), (.25, .75), (0, 1); values are rounded to uint8 levels.
    frame = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    frame[0, :, 1, :] = 255
    frame[0, :, :, 1] = 100  # green constant: resizing keeps it
    out = preprocess_frames(frame, 4)
    assert out.shape == (1, 3, 4, 4) and out.dtype == torch.float32
    red_row = torch.tensor([0.0, 64.0, 191.0, 255.0]) / 255
    assert torch.allclose(out[0, 0], ((red_row - 0.485) / 0.229).expand(4, 4), atol=1e-6)
    assert torch.allclose(out[0, 1], torch.full((4, 4), (100 / 255 - 0.456) / 0.224), atol=1e-6)


def test_preprocess_frames_downsizes_constant_frames_exactly():
    frames = np.full((3, 30, 50, 3), (255, 0, 128), dtype=np.uint8)
    out = preprocess_frames(frames, 16)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    assert out.shape == (3, 3, 16, 16)
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-5)


def test_masks_to_video_size_interpolates_logits_then_thresholds_at_zero():
    # Logits (-3, 1) to width 4: samples at x = 0, .25, .75, 1 of the way -> -3, -2, 0, 1; only > 0 is on.
    logits = torch.tensor([[[[-3.0, 1.0]]]])
    masks = masks_to_video_size(logits, 2, 4)
    assert masks.dtype == torch.bool and masks.shape == (1, 2, 4)
    assert masks.tolist() == [[[False, False, False, True]] * 2]


def test_prompt_coordinates_are_scaled_to_the_input_and_the_box_comes_first():
    tensors = _prompt_tensors((10, 20, 30, 40), [(5, 8)], [0], height=80, width=40, input_size=160)
    assert tensors["point_coords"].tolist() == [[[[40.0, 40.0], [120.0, 80.0], [20.0, 16.0]]]]
    assert tensors["point_labels"].tolist() == [[[2, 3, 0]]]
    assert tensors["point_labels"].dtype == torch.int32


def test_between_frames_follow_the_subjects_motion():
    # A 1x12 grid, keyframes 0 and 4. Subject 1 is the pixel x=2 on frame 0 and x=6 on frame 4: it moves 1 px a
    # frame, so frame t must hold it at x = 2 + t (a plain cross-fade would give two half-strength ghosts,
    # p < 0.5, i.e. nothing). Subject 2 stays at x=9; a subject missing on a keyframe does not move.
    def row(*on):
        logits = torch.full((1, 1, 12), -10.0)
        logits[0, 0, list(on)] = 10.0
        return logits

    logits = {0: torch.stack([row(2), row(9)]), 1: torch.stack([row(6), row(9)])}
    masks = _fill_frames(logits, [0, 4], 5, 1, 12)
    assert masks.shape == (2, 5, 1, 12) and masks.dtype == bool
    assert [np.flatnonzero(masks[0, t, 0]).tolist() for t in range(5)] == [[2], [3], [4], [5], [6]]
    assert [np.flatnonzero(masks[1, t, 0]).tolist() for t in range(5)] == [[9]] * 5
    gone = _fill_frames({0: torch.stack([row(2), row(9)]), 1: torch.stack([row(), row(9)])}, [0, 3], 4, 1, 12)
    # (1 - w)·P_a alone, unshifted: p = 2/3 on frame 1 (on), 1/3 on frame 2 (off).
    assert [np.flatnonzero(gone[0, t, 0]).tolist() for t in range(4)] == [[2], [2], [], []]


def test_segment_returns_both_subjects_on_every_frame_deterministically(segmenter, frames):
    steps = []
    masks = segmenter.segment(frames, boxes_on(0), progress=lambda done, total: steps.append((done, total)))
    assert masks.shape == (2, 7, 48, 64) and masks.dtype == bool
    assert masks.any(axis=(2, 3)).all()  # the boosted random model marks something on every frame
    assert steps == [(i, 7) for i in range(1, 8)]  # forwards only: the seed is frame 0
    np.testing.assert_array_equal(masks, segmenter.segment(frames, boxes_on(0)))


def test_middle_seed_frame_propagates_backwards(segmenter, frames):
    steps = []
    masks = segmenter.segment(frames, boxes_on(3), progress=lambda done, total: steps.append((done, total)))
    assert masks.shape == (2, 7, 48, 64)
    # forwards 3..6 (4 steps), then backwards 3..0 (4 steps)
    assert steps[-1] == (8, 8)
    assert masks[:, :3].any(axis=(2, 3)).all()


def test_subjects_may_start_on_different_frames(segmenter, frames):
    prompts = [SubjectPrompt(0, 1, box=(2, 2, 30, 40)), SubjectPrompt(1, 4, points=[(40.0, 20.0)], labels=[1])]
    masks = segmenter.segment(frames, prompts)
    assert masks.shape == (2, 7, 48, 64)


def test_a_correction_changes_its_subject_only(segmenter, frames):
    base = segmenter.segment(frames, boxes_on(0))
    correction = SubjectPrompt(0, 4, points=[(10.0, 10.0), (50.0, 30.0)], labels=[0, 1])
    corrected = segmenter.segment(frames, [*boxes_on(0), correction])
    assert (corrected[0] != base[0]).any()
    np.testing.assert_array_equal(corrected[1], base[1])
    np.testing.assert_array_equal(corrected[:, 0], base[:, 0])  # the seed frame keeps its own result


def test_frame_stride_runs_on_keyframes_and_fills_every_frame(segmenter, frames):
    steps = []
    masks = segmenter.segment(frames, boxes_on(0), frame_stride=4, progress=lambda d, t: steps.append((d, t)))
    assert masks.shape == (2, 7, 48, 64) and masks.dtype == bool
    assert steps[-1] == (3, 3)  # keyframes 0, 4 and the last frame 6
    full = segmenter.segment(frames, boxes_on(0))
    np.testing.assert_array_equal(masks[:, 0], full[:, 0])


def test_another_input_size_reuses_the_weights(sam2_dir, frames):
    small = Sam2VideoSegmenter(str(sam2_dir), torch.device("cpu"), input_size=64)
    masks = small.segment(frames[:3], boxes_on(0))
    assert masks.shape == (2, 3, 48, 64)


def test_bad_inputs_are_one_line_errors(segmenter, frames):
    with pytest.raises(ValueError, match="subject 2"):
        segmenter.segment(frames, boxes_on(0)[:1])
    with pytest.raises(ValueError, match="frame 9"):
        segmenter.segment(frames, [*boxes_on(0), SubjectPrompt(1, 9, box=(0, 0, 5, 5))])
    with pytest.raises(ValueError, match="multiple of 32"):
        Sam2VideoSegmenter("unused", torch.device("cpu"), input_size=100)


def test_missing_weights_raise_segmenter_unavailable(tmp_path):
    with pytest.raises(SegmenterUnavailable, match=r"facebook/sam2.1-hiera-tiny.*hf download"):
        Sam2VideoSegmenter("facebook/sam2.1-hiera-tiny", torch.device("cpu"))
    with pytest.raises(SegmenterUnavailable, match=r"from the folder .*sam2.1-hiera-tiny --local-dir"):
        Sam2VideoSegmenter(str(tmp_path), "cpu")
