"""make_masks end to end with the real sam2 engine: a tiny random-weight GroundingDINO finds the boxes and a tiny
random-weight SAM2 propagates them, both loaded from folders saved with save_pretrained (no fakes, no downloads)."""

import json

import numpy as np
import pytest
from PIL import Image
from helpers import write_two_subject_dataset
from mask_models import SAM2_SIZE, WORDS, save_tiny_grounding_dino, save_tiny_sam2

from dreamrelation.config import MasksConfig
from dreamrelation.masks.pipeline import make_masks
from dreamrelation.masks.prompts import SubjectPrompt

NAME, FRAMES, HEIGHT, WIDTH = "clip00", 7, 96, 144  # not square: a tiny GroundingDINO's GroupNorm needs it


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    # A detector label names the phrase sharing most words with the caption tokens that pass text_threshold; at 0.0
    # every token passes, the phrases tie and the first always wins, so a random detector never finds subject 2.
    # With this vocabulary order and 0.5 (the same from 0.4 to 0.7) one box is read as each subject.
    words = [*WORDS, "red", "square", "green"]
    detector = save_tiny_grounding_dino(tmp_path_factory.mktemp("grounding-dino"), words)
    sam2 = save_tiny_sam2(tmp_path_factory.mktemp("sam2"))
    return MasksConfig(
        engine="sam2", detector=str(detector), sam2_model=str(sam2), sam2_input_size=SAM2_SIZE, frame_stride=1,
        box_threshold=0.0, text_threshold=0.5, device="cpu",
    )  # fmt: skip


def dataset(root):
    """One clip of two squares with its caption and no masks yet."""
    write_two_subject_dataset(root, num_videos=1, num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    for path in (root / "masks" / NAME).iterdir():
        path.unlink()
    return root


def written_masks(data_dir):
    """The written mask frames as uint8 (F, H, W, 3) RGB (subject 1 red, subject 2 green, subject 2 on top).

    Not through load_subject_masks: the random SAM2 marks nearly the same pixels for both subjects, so subject 2
    covers subject 1 and the reader finds one colour (an artefact of random weights, not of the pipeline).
    """
    return np.stack([np.asarray(Image.open(data_dir / "masks" / NAME / f"frame{i:05d}.png").convert("RGB"))
                     for i in range(FRAMES)])


def test_sam2_engine_writes_masks_record_and_overlay(config, tmp_path):
    data_dir = dataset(tmp_path / "data")
    (result,) = make_masks(data_dir, config)
    assert result.name == NAME and result.engine == "sam2"
    assert result.error is None and result.notice is None
    assert result.subjects is not None and sorted(result.subjects) == ["green square", "red square"]
    mask_dir = data_dir / "masks" / NAME
    assert result.mask_dir == mask_dir
    assert sorted(p.name for p in mask_dir.glob("frame*.png")) == [f"frame{i:05d}.png" for i in range(FRAMES)]
    masks = written_masks(data_dir)
    assert masks.shape == (FRAMES, HEIGHT, WIDTH, 3) and masks.any()
    record = json.loads((mask_dir / "masks.json").read_text(encoding="utf-8"))
    assert record["engine"] == "sam2" and record["notice"] is None
    assert record["subjects"] == list(result.subjects) and record["num_frames"] == FRAMES
    assert record["flags"] == result.flags
    assert result.overlay == mask_dir / "overlay.mp4" and result.overlay.stat().st_size > 0


def test_a_correction_changes_its_subjects_masks(config, tmp_path):
    plain_dir, corrected_dir = dataset(tmp_path / "plain"), dataset(tmp_path / "corrected")
    (plain,) = make_masks(plain_dir, config)
    before = written_masks(plain_dir)
    # A click where subject 1 is not marked (or is) on frame 3, labelled to flip it there.
    on = before[3, :, :, 0] > 0
    ys, xs = np.nonzero(~on if (~on).any() else on)
    label = 1 if (~on).any() else 0
    correction = SubjectPrompt(subject=0, frame=3, points=[(float(xs[0]), float(ys[0]))], labels=[label])
    (corrected,) = make_masks(corrected_dir, config, corrections={NAME: [correction]})
    assert corrected.error is None and corrected.engine == "sam2"
    after = written_masks(corrected_dir)
    assert after.shape == before.shape
    assert (after != before).any()
