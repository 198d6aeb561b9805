"""Text-grounded detector on tiny random-weight GroundingDINO / OWLv2 models saved like Hub models, and the choice
of two subject boxes."""

import numpy as np
import pytest
import torch
from transformers import BertConfig
from transformers.utils import is_scipy_available, is_torchvision_available

from dreamrelation.masks.grounding import DetectorUnavailable, GroundingDetector, _phrase_of_label, pick_subject_boxes
from dreamrelation.masks.prompts import Detection
from mask_models import save_tiny_grounding_dino, save_tiny_owlv2


@pytest.fixture(scope="module")
def grounding_dino_dir(tmp_path_factory):
    return save_tiny_grounding_dino(tmp_path_factory.mktemp("grounding-dino"))


@pytest.fixture(scope="module")
def owlv2_dir(tmp_path_factory):
    return save_tiny_owlv2(tmp_path_factory.mktemp("owlv2"))


def test_grounding_dino_boxes_are_in_image_pixels(grounding_dino_dir):
    detector = GroundingDetector(str(grounding_dino_dir), torch.device("cpu"), box_threshold=0.0, text_threshold=0.0)
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    detections = detector.detect(image, ["a dog", "a cat"])
    assert detections and all(isinstance(d, Detection) for d in detections)
    assert {d.phrase for d in detections} <= {"a dog", "a cat"}
    # The same boxes by hand: the model's (cx, cy, w, h) in [0, 1] times (W, H), clipped to the image.
    inputs = detector.processor(images=image, text="a dog. a cat.", return_tensors="pt")
    with torch.inference_mode():
        cx, cy, w, h = detector.model(**inputs).pred_boxes[0].unbind(-1)
    expected = torch.stack([(cx - w / 2) * 90, (cy - h / 2) * 60, (cx + w / 2) * 90, (cy + h / 2) * 60], -1)
    expected = torch.minimum(expected.clamp(min=0), torch.tensor([90.0, 60.0, 90.0, 60.0]))
    found = torch.tensor(sorted(d.box for d in detections))
    assert torch.allclose(found, torch.tensor(sorted(map(tuple, expected.tolist()))), atol=1e-3)
    assert detections == detector.detect(image, ["a dog", "a cat"])


def test_a_high_threshold_finds_nothing(grounding_dino_dir):
    detector = GroundingDetector(str(grounding_dino_dir), "cpu", box_threshold=1.0)
    assert detector.detect(np.zeros((60, 90, 3), np.uint8), ["a dog", "a cat"]) == []


def test_labels_map_to_the_phrase_sharing_most_words():
    phrases = ["a dog", "a black cat"]
    assert _phrase_of_label("dog", phrases) == "a dog"
    assert _phrase_of_label("a black cat", phrases) == "a black cat"
    assert _phrase_of_label("a", phrases) is None  # an article alone names no subject
    assert _phrase_of_label("dog cat", phrases) == "a dog"  # a tie goes to the earlier phrase


@pytest.mark.skipif(is_scipy_available() or is_torchvision_available(), reason="OWLv2's processor can run here")
def test_owlv2_without_scipy_is_unavailable(owlv2_dir):
    with pytest.raises(DetectorUnavailable, match="pip install scipy"):
        GroundingDetector(str(owlv2_dir), "cpu")


@pytest.mark.skipif(not (is_scipy_available() or is_torchvision_available()), reason="OWLv2 resizes with scipy")
def test_owlv2_boxes_are_in_image_pixels(owlv2_dir):
    detector = GroundingDetector(str(owlv2_dir), "cpu", box_threshold=0.0)
    detections = detector.detect(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8), ["dog", "cat"])
    assert detections and {d.phrase for d in detections} <= {"dog", "cat"}
    assert all(0 <= d.box[0] <= d.box[2] <= 60 and 0 <= d.box[1] <= d.box[3] <= 40 for d in detections)


def test_missing_or_wrong_models_are_explained(tmp_path):
    with pytest.raises(DetectorUnavailable, match=r"'IDEA-Research/grounding-dino-tiny'.*hf download IDEA-Research"):
        GroundingDetector("IDEA-Research/grounding-dino-tiny", "cpu")
    with pytest.raises(DetectorUnavailable, match="from the folder .*--local-dir"):
        GroundingDetector(str(tmp_path), "cpu")
    BertConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'bert' model; the detector must be GroundingDINO or OWLv2"):
        GroundingDetector(str(tmp_path), "cpu")


def det(box, score, phrase):
    return Detection(box, score, phrase)


def test_pick_suppresses_overlaps_across_phrases_and_orders_left_to_right():
    detections = [
        det((60, 0, 100, 40), 0.9, "dog"),  # the dog, on the right
        det((62, 2, 100, 40), 0.8, "cat"),  # the same animal as a cat: suppressed
        det((0, 0, 40, 40), 0.5, "cat"),  # the cat, on the left
        det((5, 0, 45, 40), 0.4, "cat"),  # a duplicate of the cat
    ]
    picked = pick_subject_boxes(detections, ("dog", "cat"))
    assert [(d.phrase, d.score) for d in picked] == [("cat", 0.5), ("dog", 0.9)]


def test_pick_takes_the_two_best_distinct_boxes_of_a_repeated_phrase():
    detections = [
        det((50, 0, 90, 40), 0.9, "dog"),
        det((52, 0, 90, 40), 0.85, "dog"),  # overlaps the best one
        det((0, 10, 30, 40), 0.6, "dog"),
        det((100, 0, 120, 20), 0.3, "dog"),
    ]
    picked = pick_subject_boxes(detections, ("dog", "dog"))
    assert [d.score for d in picked] == [0.6, 0.9]


def test_pick_returns_what_it_finds():
    assert pick_subject_boxes([], ("dog", "cat")) == []
    only_dogs = [det((0, 0, 10, 10), 0.9, "dog"), det((20, 0, 30, 10), 0.8, "dog")]
    assert pick_subject_boxes(only_dogs, ("dog", "cat")) == [only_dogs[0]]
    assert pick_subject_boxes([det((0, 0, 10, 10), 0.9, "horse")], ("dog", "cat")) == []


def test_pick_iou_threshold_decides_what_counts_as_the_same_object():
    # IoU of these two boxes is 1/3.
    overlapping = [det((0, 0, 20, 10), 0.9, "dog"), det((10, 0, 30, 10), 0.8, "cat")]
    assert len(pick_subject_boxes(overlapping, ("dog", "cat"), iou_threshold=0.5)) == 2
    assert len(pick_subject_boxes(overlapping, ("dog", "cat"), iou_threshold=0.3)) == 1
