"""The relation dataset folder: scanning, mask files, subject colours and their order."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import write_two_subject_dataset
from PIL import Image

from dreamrelation.data.dataset import (
    DatasetError,
    check_captions,
    load_subject_masks,
    mask_frame_paths,
    scan_dataset,
    write_subject_masks,
)
from dreamrelation.data.video import load_clip

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _mask_frame(height: int = 8, width: int = 16, **squares: tuple[tuple[int, int, int], int]) -> np.ndarray:
    """A uint8 (height, width, 3) mask: for each name=(colour, x), a 4-wide full-height bar at column x."""
    image = np.zeros((height, width, 3), np.uint8)
    for colour, x in squares.values():
        image[:, x : x + 4] = colour
    return image


def _save(path, image: np.ndarray) -> None:
    """Save an RGB array as a PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _bar(x: int, height: int = 8, width: int = 16) -> np.ndarray:
    """The float32 (height, width) mask of a bar drawn by _mask_frame at column x."""
    mask = np.zeros((height, width), np.float32)
    mask[:, x : x + 4] = 1
    return mask


def test_mask_frames_sort_numerically(tmp_path):
    # Unpadded names: a text sort would put frame10 before frame2 and frame9.
    bars = {2: 0, 9: 4, 10: 8}
    for index, x in bars.items():
        _save(tmp_path / f"frame{index}.png", _mask_frame(red=(RED, x), blue=(BLUE, 12)))
    (tmp_path / "frame.png").touch()
    (tmp_path / "notes.txt").touch()
    paths = mask_frame_paths(tmp_path)
    assert list(paths) == [2, 9, 10]
    assert [p.name for p in paths.values()] == ["frame2.png", "frame9.png", "frame10.png"]
    masks = load_subject_masks(tmp_path, [2, 9, 10], 8, 16)
    assert masks.shape == (2, 3, 8, 16) and masks.dtype == np.float32
    for position, x in enumerate(bars.values()):
        assert (masks[0, position] == _bar(x)).all()
        assert (masks[1, position] == _bar(12)).all()


def test_png_extension_is_case_insensitive(tmp_path):
    _save(tmp_path / "frame7.PNG", _mask_frame(red=(RED, 0), blue=(BLUE, 8)))
    assert list(mask_frame_paths(tmp_path)) == [7]


def test_same_frame_twice_is_an_error(tmp_path):
    for name in ("frame2.png", "frame002.png"):
        _save(tmp_path / name, _mask_frame(red=(RED, 0)))
    with pytest.raises(DatasetError, match="same frame 2"):
        mask_frame_paths(tmp_path)


def test_subjects_are_ordered_left_to_right_in_the_first_frame_with_both(tmp_path):
    # Frame 0 shows only blue; frame 1 has red (B) left of blue (A); in frame 2 they have swapped.
    _save(tmp_path / "frame0.png", _mask_frame(blue=(BLUE, 6)))
    _save(tmp_path / "frame1.png", _mask_frame(red=(RED, 0), blue=(BLUE, 12)))
    _save(tmp_path / "frame2.png", _mask_frame(blue=(BLUE, 0), red=(RED, 12)))
    masks = load_subject_masks(tmp_path, [0, 1, 2], 8, 16)
    assert (masks[0, 0] == 0).all() and (masks[1, 0] == _bar(6)).all()
    assert (masks[0, 1] == _bar(0)).all() and (masks[1, 1] == _bar(12)).all()
    assert (masks[0, 2] == _bar(12)).all() and (masks[1, 2] == _bar(0)).all()


def test_subjects_json_overrides_the_order(tmp_path):
    _save(tmp_path / "frame0.png", _mask_frame(red=(RED, 0), blue=(BLUE, 12)))
    (tmp_path / "subjects.json").write_text(json.dumps({"colors": [list(BLUE), list(RED)]}))
    masks = load_subject_masks(tmp_path, [0], 8, 16)
    assert (masks[0, 0] == _bar(12)).all() and (masks[1, 0] == _bar(0)).all()


def test_subjects_json_with_unknown_colour(tmp_path):
    _save(tmp_path / "frame0.png", _mask_frame(red=(RED, 0), blue=(BLUE, 12)))
    (tmp_path / "subjects.json").write_text(json.dumps({"colors": [list(GREEN), list(RED)]}))
    with pytest.raises(DatasetError, match=r"subjects\.json: colours \(0, 255, 0\), \(255, 0, 0\) do not match"):
        load_subject_masks(tmp_path, [0], 8, 16)


def test_colour_noise_and_stray_pixels_are_tolerated(tmp_path):
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40, 3), np.int64)
    image[:, :10] = RED
    image[:, 30:] = GREEN
    image += rng.integers(-15, 16, size=image.shape)
    image[20, 20] = (255, 255, 0)  # one stray pixel: far under 0.5% of the foreground
    _save(tmp_path / "frame0.png", image.clip(0, 255).astype(np.uint8))
    masks = load_subject_masks(tmp_path, [0], 40, 40)
    assert masks[0, 0].sum() == 400 and masks[0, 0, :, :10].all()
    assert masks[1, 0].sum() == 400 and masks[1, 0, :, 30:].all()


def test_one_colour_is_an_error(tmp_path):
    _save(tmp_path / "frame0.png", _mask_frame(red=(RED, 0)))
    with pytest.raises(DatasetError, match=r"found 1 subject colour \(\(255, 0, 0\)\); masks need two flat colours"):
        load_subject_masks(tmp_path, [0], 8, 16)


def test_three_colours_is_an_error(tmp_path):
    _save(tmp_path / "frame0.png", _mask_frame(red=(RED, 0), green=(GREEN, 6), blue=(BLUE, 12)))
    with pytest.raises(DatasetError, match="found 3 subject colours"):
        load_subject_masks(tmp_path, [0], 8, 16)


def test_missing_mask_frame_is_named(tmp_path):
    for index in (0, 1):
        _save(tmp_path / f"frame{index}.png", _mask_frame(red=(RED, 0), blue=(BLUE, 12)))
    with pytest.raises(DatasetError, match=r"frame2\.png: missing mask for video frame 2"):
        load_subject_masks(tmp_path, [0, 1, 2], 8, 16)


def test_masks_get_the_video_crop(tmp_path):
    # A 16-wide mask cropped to a square keeps columns 4..11: red at 0..3 falls outside.
    _save(tmp_path / "frame0.png", _mask_frame(red=(RED, 0), green=(GREEN, 4), blue=(BLUE, 8)))
    masks = load_subject_masks(tmp_path, [0], 4, 4)
    assert (masks[0, 0] == [[1, 1, 0, 0]] * 4).all() and (masks[1, 0] == [[0, 0, 1, 1]] * 4).all()


def test_write_subject_masks_round_trip(tmp_path):
    masks = np.zeros((2, 3, 12, 20), bool)
    for frame in range(3):
        masks[0, frame, 2:6, 12 + frame : 16 + frame] = True  # subject 1 on the right
        masks[1, frame, 5:11, 1 : 4 + frame] = True
    write_subject_masks(tmp_path / "m", masks, first_index=5, colors=(BLUE, (255, 255, 0)))
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["frame00005.png", "frame00006.png", "frame00007.png", "subjects.json"]
    assert (load_subject_masks(tmp_path / "m", [5, 6, 7], 12, 20) == masks).all()


def test_write_subject_masks_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\(2, F, H, W\)"):
        write_subject_masks(tmp_path, np.zeros((3, 1, 4, 4), bool))
    with pytest.raises(ValueError, match="too close"):
        write_subject_masks(tmp_path, np.zeros((2, 1, 4, 4), bool), colors=(RED, (250, 10, 0)))


def test_helper_dataset_is_accepted(tmp_path):
    root = write_two_subject_dataset(tmp_path / "data", num_frames=7, height=16, width=32)
    samples = scan_dataset(root)
    assert [s.name for s in samples] == ["clip00", "clip01"]
    assert samples[0].caption == "A red square is approaching a green square."
    assert samples[0].video == root / "clip00.mp4" and samples[0].mask_dir == root / "masks" / "clip00"
    frames, indices = load_clip(samples[1].video, 7, 16, 16)
    masks = load_subject_masks(samples[1].mask_dir, indices, 16, 16).astype(bool)
    # Subject 1 is the red square and subject 2 the green one, in the video's own pixels.
    red, green = frames[masks[0]].mean(axis=0), frames[masks[1]].mean(axis=0)
    assert red[0] > 150 > red[1] and green[1] > 150 > green[0]
    again = write_two_subject_dataset(tmp_path / "again", num_frames=7, height=16, width=32)
    assert (again / "clip01.txt").read_text() == (root / "clip01.txt").read_text()
    assert (again / "masks/clip01/frame00003.png").read_bytes() == (root / "masks/clip01/frame00003.png").read_bytes()
    # x264 on frames this small is not byte-deterministic; the decoded pictures agree closely.
    assert np.abs(load_clip(again / "clip01.mp4", 7, 16, 16)[0].astype(int) - frames).mean() < 2


def test_scan_lists_every_problem(tmp_path):
    root = write_two_subject_dataset(tmp_path, num_videos=3, num_frames=1, height=16, width=16)
    (root / "clip00.txt").unlink()
    (root / "clip01.txt").write_text("  \n")
    shutil.rmtree(root / "masks" / "clip02")
    with pytest.raises(DatasetError) as caught:
        scan_dataset(root)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("3 problem(s)")
    problems = message.split(": ", 1)[1].split(" | ")
    assert "clip00.txt: missing caption" in problems[0]
    assert "clip01.txt: caption is empty" in problems[1]
    assert "clip02: mask folder not found" in problems[2]


def test_a_caption_naming_one_subject_is_refused_unless_its_masks_were_made_for_two_named_ones(tmp_path):
    root = write_two_subject_dataset(tmp_path / "data", num_videos=3, num_frames=1, height=16, width=16)
    (root / "clip01.txt").write_text("A red square moves.\n")
    with pytest.raises(DatasetError) as caught:
        scan_dataset(root)
    assert str(caught.value) == (
        f"1 problem(s) in dataset {root}: {root}/clip01.txt: caption names one subject; name both subjects in it, "
        "e.g. 'A dog is chasing a cat.'"
    )
    # What a run checks before it loads anything (train.planning): the same, files named inside the folder.
    with pytest.raises(DatasetError) as caught:
        check_captions(root)
    assert str(caught.value) == (
        "1 problem(s) in dataset data: clip01.txt: caption names one subject; name both subjects in it, "
        "e.g. 'A dog is chasing a cat.'"
    )
    # A video without masks is left out of a run (the app moves it aside): only the full scan names it.
    (root / "clip02.txt").write_text("Two people high-five.\n")
    shutil.rmtree(root / "masks" / "clip02")
    with pytest.raises(DatasetError, match=r"^1 problem\(s\) in dataset data: clip01\.txt: caption names one"):
        check_captions(root)
    with pytest.raises(DatasetError, match=r"^3 problem\(s\) .*clip02\.txt: caption names one subject; .*"
                                            r"clip02: mask folder not found"):
        scan_dataset(root)
    (root / "clip02.mp4").unlink()
    # Masks made for two subjects the user named (`masks --subjects`, recorded in masks.json) take the caption.
    (root / "masks" / "clip01" / "masks.json").write_text(json.dumps({"subjects": ["red square", "green square"]}))
    assert [sample.name for sample in scan_dataset(root)] == ["clip00", "clip01"]
    check_captions(root)
    (root / "masks" / "clip01" / "masks.json").write_text(json.dumps({"subjects": ["red square", ""]}))
    with pytest.raises(DatasetError, match="clip01.txt: caption names one subject"):
        check_captions(root)


def test_scan_masks_dir_layout(tmp_path):
    root = write_two_subject_dataset(tmp_path / "data", num_frames=1, height=16, width=16)
    reference_masks = tmp_path / "reference_masks"
    (root / "masks").rename(reference_masks)
    with pytest.raises(DatasetError, match="masks folder not found"):
        scan_dataset(root)
    samples = scan_dataset(root, masks_dir=reference_masks)
    assert [s.mask_dir for s in samples] == [reference_masks / "clip00", reference_masks / "clip01"]
    assert load_subject_masks(samples[0].mask_dir, [0], 16, 16).shape == (2, 1, 16, 16)


def test_scan_bad_folders(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        scan_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"no videos found; add NAME\.mp4\|\.mov\|\.webm files"):
        scan_dataset(tmp_path)


def test_a_run_on_a_caption_naming_one_subject_is_refused_when_planned_before_any_model_loads(tmp_path, monkeypatch):
    from dreamrelation.config import DataConfig, RunConfig
    from dreamrelation.train import planning

    root = write_two_subject_dataset(tmp_path / "data", num_videos=2, num_frames=1, height=16, width=16)
    (root / "clip00.txt").write_text("Two people high-five.\n")
    monkeypatch.setattr(planning, "resolve_model", lambda *args: pytest.fail("a model was resolved"))
    with pytest.raises(DatasetError) as caught:
        planning.plan_training(RunConfig(data=DataConfig(data_dir=root)))
    assert str(caught.value) == (
        "1 problem(s) in dataset data: clip00.txt: caption names one subject; name both subjects in it, "
        "e.g. 'A dog is chasing a cat.'"
    )
