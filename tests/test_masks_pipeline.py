"""make_masks end to end (basic engine, the auto fallback, the sam2 plumbing with fake models) and quality flags."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from PIL import Image
from test_masks_basic import FRAMES, SIZE, iou, synthetic_video

from dreamrelation.config import MasksConfig
from dreamrelation.data.dataset import DatasetError, check_captions, load_subject_masks
from dreamrelation.data.video import probe_video, read_frames, write_video
from dreamrelation.masks.pipeline import make_masks, overlay_frames
from dreamrelation.masks.prompts import Detection, SubjectPrompt
from dreamrelation.masks.quality import mask_iou, quality_flags

CAPTION = "A red circle is bumping into a blue square."


def _write_dataset(root, cases: dict[str, str], captions: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Write NAME.mp4 + NAME.txt for each name -> synthetic case; returns each video's true masks."""
    truth = {}
    for name, case in cases.items():
        frames, truth[name] = synthetic_video(case)
        write_video(root / f"{name}.mp4", frames, fps=24)
        (root / f"{name}.txt").write_text((captions or {}).get(name, CAPTION) + "\n", encoding="utf-8")
    return truth


def test_basic_engine_writes_masks_the_trainer_reads(tmp_path):
    truth = _write_dataset(tmp_path, {"apart": "apart", "touching": "touching", "noisy": "noisy"})
    # Stale files of an earlier run: frame7 names the same frame as frame00007, frame00099 is past the end.
    stale = tmp_path / "masks" / "touching"
    stale.mkdir(parents=True)
    for name in ("frame7.png", "frame00099.png"):
        Image.new("RGB", (SIZE, SIZE)).save(stale / name)
    progress = []

    results = make_masks(tmp_path, MasksConfig(engine="basic"), progress=lambda f, m: progress.append(f))

    assert [r.name for r in results] == ["apart", "noisy", "touching"]
    assert progress[0] == 0 and progress[-1] == 1.0
    for result in results:
        assert (result.engine, result.notice, result.error) == ("basic", None, None)
        assert result.subjects == ("red circle", "blue square")
        assert result.mask_dir == tmp_path / "masks" / result.name
        names = sorted(p.name for p in result.mask_dir.glob("frame*.png"))
        assert names == [f"frame{i:05d}.png" for i in range(FRAMES)]
        masks = load_subject_masks(result.mask_dir, list(range(FRAMES)), SIZE, SIZE).astype(bool)
        # Through H.264 and back: colour edges blur by about a pixel.
        assert min(iou(masks[s], truth[result.name][s]) for s in (0, 1)) >= 0.9
        record = json.loads((result.mask_dir / "masks.json").read_text())
        assert record == {
            "engine": "basic", "notice": None, "subjects": ["red circle", "blue square"],
            "order": "by the colours the caption names", "flags": result.flags,
            "num_frames": FRAMES,
        }
        assert result.overlay == result.mask_dir / "overlay.mp4"
        assert probe_video(result.overlay).num_frames == FRAMES
    assert not list(tmp_path.glob("*.json")) and sorted(p.name for p in (tmp_path / "masks").iterdir()) == [
        "apart", "noisy", "touching"]


def test_overlay_tints_subject_one_red_and_two_green(tmp_path):
    _write_dataset(tmp_path, {"clip": "apart"})
    [result] = make_masks(tmp_path, MasksConfig(engine="basic"), names=["clip"])
    frame = read_frames(result.overlay, [0])[0].astype(int)
    masks = load_subject_masks(result.mask_dir, [0], SIZE, SIZE)[:, 0].astype(bool)
    background = frame[~(masks[0] | masks[1])].mean(axis=0)
    # Grey background untouched; the red circle stays red, the blue square turns green-blue.
    assert np.abs(background - 110).max() < 8
    assert frame[masks[0]].mean(axis=0)[0] > 200 and frame[masks[1]].mean(axis=0)[1] > 140


def test_overlay_frames_blend_half_and_crop_to_even_sizes():
    frames = np.full((2, 5, 7, 3), 100, np.uint8)
    masks = np.zeros((2, 2, 5, 7), bool)
    masks[0, :, 0, 0] = masks[1, :, 0, 1] = True
    out = overlay_frames(frames, masks)
    assert out.shape == (2, 4, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [178, 50, 50] and out[0, 0, 1].tolist() == [50, 178, 50]
    assert out[0, 1, 1].tolist() == [100, 100, 100]


def test_auto_falls_back_to_basic_when_sam2_weights_are_missing(tmp_path):
    _write_dataset(tmp_path, {"clip": "touching"})
    config = MasksConfig(engine="auto", sam2_model=str(tmp_path / "no-such-sam2"))
    [result] = make_masks(tmp_path, config)
    assert result.engine == "basic" and result.error is None
    assert result.notice.startswith("masks made with the basic segmenter: SAM2 weights unavailable (")
    assert json.loads((result.mask_dir / "masks.json").read_text())["notice"] == result.notice


def test_a_bad_video_gets_an_error_and_the_others_still_get_masks(tmp_path):
    _write_dataset(tmp_path, {"a": "apart", "b": "touching", "c": "noisy"}, captions={"b": "Two people high-five."})
    (tmp_path / "d.mp4").write_bytes(b"not a video")
    (tmp_path / "d.txt").write_text(CAPTION)
    write_video(tmp_path / "e.mp4", synthetic_video("apart")[0][:1], fps=24)  # a still image
    (tmp_path / "e.txt").write_text(CAPTION)
    results = {r.name: r for r in make_masks(tmp_path, MasksConfig(engine="basic"))}
    assert results["b"].error.startswith("caption names one subject")
    assert results["b"].flags == [f"no masks: {results['b'].error}"] and results["b"].subjects is None
    assert "not a readable video" in results["d"].error
    assert results["e"].error == ("the video has 1 frame; a relation clip needs at least 2 (and training takes the "
                                  "model's num_frames): use a video, not a still image")
    for name in ("b", "d", "e"):
        assert not (tmp_path / "masks" / name).exists()
    for name in ("a", "c"):
        assert results[name].error is None and (results[name].mask_dir / "frame00024.png").is_file()


def test_subjects_override_and_names(tmp_path):
    _write_dataset(tmp_path, {"a": "apart", "b": "apart"}, captions={"a": "Two people high-five."})
    [result] = make_masks(tmp_path, MasksConfig(engine="basic"), subjects={"a": ("circle", "square")}, names=["a"])
    assert result.subjects == ("circle", "square") and result.error is None
    assert not (tmp_path / "masks" / "b").exists()
    # Training takes the caption the heuristic cannot read: its masks were made for the two subjects named.
    check_captions(tmp_path)
    with pytest.raises(DatasetError, match="no video named '../a'"):
        make_masks(tmp_path, MasksConfig(engine="basic"), names=["../a"])
    with pytest.raises(ValueError, match="two non-empty names"):
        make_masks(tmp_path, MasksConfig(engine="basic"), subjects=("circle", ""))


def test_nothing_is_written_outside_the_dataset_folder(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    _write_dataset(data, {"clip": "apart", ".": "apart"})  # "..mp4": its stem "." would name masks/ itself
    (data / "masks").mkdir()
    (data / "masks" / "clip").symlink_to(outside, target_is_directory=True)
    results = {r.name: r for r in make_masks(data, MasksConfig(engine="basic"))}
    assert "points outside the dataset folder" in results["clip"].error
    assert "cannot name a mask folder" in results["."].error
    assert not list(outside.iterdir()) and [p.name for p in (data / "masks").iterdir()] == ["clip"]


def test_corrections_are_flagged_as_ignored_by_the_basic_engine(tmp_path):
    _write_dataset(tmp_path, {"clip": "apart"})
    corrections = {"clip": [SubjectPrompt(0, 3, points=[(20.0, 48.0)], labels=[1])]}
    [result] = make_masks(tmp_path, MasksConfig(engine="basic"), corrections=corrections)
    assert any("corrections were ignored" in flag for flag in result.flags)


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) around a bool (H, W) mask."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


@pytest.fixture()
def fake_sam2(monkeypatch):
    """Fake grounding and sam2 modules: the detector finds both shapes (only the circle on a video with a black
    top-left corner), the segmenter fills each subject's first prompt box on every frame. Records calls."""
    calls = {"detectors": 0, "segmenters": 0, "prompts": [], "strides": []}
    grounding, sam2 = types.ModuleType("grounding"), types.ModuleType("sam2")

    class DetectorUnavailable(RuntimeError):
        pass

    class SegmenterUnavailable(RuntimeError):
        pass

    class GroundingDetector:
        def __init__(self, model, device, box_threshold, text_threshold):
            calls["detectors"] += 1

        def detect(self, image, phrases):
            # The circle is red, the square blue; the detector labels them "dog" and "cat" (phrases order).
            red = (image[..., 0] > 150) & (image[..., 2] < 100)
            blue = (image[..., 2] > 150) & (image[..., 0] < 100)
            found = [Detection(_box(red), 0.9, "dog")]
            if image[:4, :4].mean() > 60:
                found.append(Detection(_box(blue), 0.8, "cat"))
            return found

    def pick_subject_boxes(detections, phrases):
        return sorted(detections, key=lambda d: d.box[0] + d.box[2])

    class Sam2VideoSegmenter:
        def __init__(self, model, device, input_size):
            calls["segmenters"] += 1

        def segment(self, frames, prompts, frame_stride=1, progress=None):
            calls["prompts"].append(prompts)
            calls["strides"].append(frame_stride)
            masks = np.zeros((2, *frames.shape[:3]), bool)
            for subject in (0, 1):
                x0, y0, x1, y1 = (round(v) for v in next(p for p in prompts if p.subject == subject).box)
                masks[subject, :, y0:y1, x0:x1] = True
            if progress:
                progress(1, 1)
            return masks

    grounding.__dict__.update(DetectorUnavailable=DetectorUnavailable, GroundingDetector=GroundingDetector,
                              pick_subject_boxes=pick_subject_boxes)
    sam2.__dict__.update(SegmenterUnavailable=SegmenterUnavailable, Sam2VideoSegmenter=Sam2VideoSegmenter)
    monkeypatch.setitem(sys.modules, "dreamrelation.masks.grounding", grounding)
    monkeypatch.setitem(sys.modules, "dreamrelation.masks.sam2", sam2)
    calls["classes"] = (Sam2VideoSegmenter, SegmenterUnavailable)
    return calls


def test_sam2_engine_plumbing(tmp_path, fake_sam2):
    _write_dataset(tmp_path, {"mirrored": "apart", "plain": "apart", "undetected": "apart"},
                   captions={name: "A cat is bumping into a dog." for name in ("mirrored", "plain", "undetected")})
    # Mirror one video so the "cat" (square) is on the left, and mark one so the detector finds only the circle.
    frames, _ = synthetic_video("apart")
    write_video(tmp_path / "mirrored.mp4", np.ascontiguousarray(frames[:, :, ::-1]), fps=24)
    frames[:, :8, :8] = 0
    write_video(tmp_path / "undetected.mp4", frames, fps=24)
    correction = SubjectPrompt(1, 5, points=[(70.0, 48.0)], labels=[1])
    config = MasksConfig(engine="sam2", seed_frame=2, frame_stride=3, device="cpu")

    messages = []
    results = make_masks(
        tmp_path, config, corrections={"plain": [correction]}, progress=lambda fraction, m: messages.append(m)
    )
    results = {r.name: r for r in results}

    assert (fake_sam2["detectors"], fake_sam2["segmenters"]) == (1, 1)  # models built once per run
    assert results["undetected"].error == (
        "the detector found 1 of the 2 subjects ('cat', 'dog') on frame 2; lower box_threshold, pick another "
        "seed_frame, name the subjects differently, or click them"
    )
    mirrored, plain = fake_sam2["prompts"]  # in name order
    assert [(p.subject, p.frame) for p in plain] == [(0, 2), (1, 2), (1, 5)] and plain[2] is correction
    assert plain[0].box[2] < 60 < plain[1].box[0]  # subject 1 is the left box
    assert fake_sam2["strides"] == [3, 3] and "masks for plain: 1/1" in messages
    # The phrases follow their boxes: left to right.
    assert results["plain"].subjects == ("dog", "cat") and results["mirrored"].subjects == ("cat", "dog")
    record = json.loads((results["plain"].mask_dir / "masks.json").read_text())
    assert (record["engine"], record["order"]) == ("sam2", "left-to-right on the seed frame")
    masks = load_subject_masks(results["plain"].mask_dir, [0], SIZE, SIZE)
    assert masks[0, 0, 48, 20] == 1 and masks[1, 0, 48, 70] == 1


def test_sam2_failing_at_first_use_falls_back_under_auto_only(tmp_path, fake_sam2, monkeypatch):
    segmenter, unavailable = fake_sam2["classes"]

    def broken(self, *args, **kwargs):
        raise unavailable("cannot load SAM2 'x' (offline)")

    monkeypatch.setattr(segmenter, "segment", broken)
    _write_dataset(tmp_path, {"clip": "apart"})
    [result] = make_masks(tmp_path, MasksConfig(engine="auto", device="cpu"))
    assert result.engine == "basic" and "(cannot load SAM2 'x' (offline))" in result.notice
    with pytest.raises(unavailable):
        make_masks(tmp_path, MasksConfig(engine="sam2", device="cpu"))


def _masks(frames: int = 20, size: int = 20) -> np.ndarray:
    """bool (2, frames, size, size): subject 1 in the left quarter, subject 2 in the right, apart."""
    masks = np.zeros((2, frames, size, size), bool)
    masks[0, :, 5:10, 2:6] = True
    masks[1, :, 5:10, 12:16] = True
    return masks


def test_quality_flags_clean_masks_have_none():
    assert quality_flags(_masks()) == []


def test_quality_flags_missing_frames():
    masks = _masks()
    masks[1, 3:5] = False  # 2 of 20 frames: 10%, allowed
    assert quality_flags(masks) == []
    masks[1, 10] = False
    assert quality_flags(masks) == ["subject 2 is missing on 3 of 20 frames (15%), more than 10%; first at frame 3"]


def test_quality_flags_overlap_over_the_smaller_mask():
    masks = _masks()
    masks[1, 7, :, :] = False
    masks[1, 7, 5:10, 4:6] = True  # all of subject 2 lies on subject 1 in frame 7
    assert quality_flags(masks) == [
        "the subjects overlap by more than 30% of the smaller mask on 1 of 20 frames (5%); worst 100% at frame 7"
    ]


def test_quality_flags_large_mask_and_empty_subject():
    masks = _masks()
    masks[0, 4, :15] = True  # 75% of the frame
    masks[1] = False
    assert quality_flags(masks) == [
        "subject 1 covers more than 60% of the frame on 1 of 20 frames (5%); worst 75% at frame 4 "
        "(background taken in?)",
        "subject 2 was not found in any frame: fewer than two subjects; check the video",
    ]


def test_mask_iou_is_the_shared_area_over_the_joint_area():
    a, b = np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool)
    a[:, :2, :2] = True  # 8 pixels over both frames
    b[:, 1:3, :2] = True  # 8 pixels, 4 of them shared with a
    assert mask_iou(a, b) == 4 / 12
    assert mask_iou(a, np.zeros_like(a)) == 0.0 and mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
