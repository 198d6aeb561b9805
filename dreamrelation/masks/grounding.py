"""Text-grounded box detection (GroundingDINO or OWLv2 through transformers) and the choice of two subject boxes."""

from __future__ import annotations

import os
import re

import numpy as np
import torch
from transformers import AutoConfig, AutoProcessor, GroundingDinoForObjectDetection, Owlv2ForObjectDetection
from transformers.utils import is_scipy_available, is_torchvision_available

from dreamrelation.masks.prompts import Box, Detection
from dreamrelation.runtime import resolve_device

_GROUNDING_DINO = "grounding-dino"
_OWLV2 = "owlv2"
_MODEL_CLASSES = {_GROUNDING_DINO: GroundingDinoForObjectDetection, _OWLV2: Owlv2ForObjectDetection}
# Articles say nothing about which phrase a GroundingDINO label came from ("a dog" vs "a cat").
_STOPWORDS = {"a", "an", "the"}


class DetectorUnavailable(RuntimeError):
    """The detector's weights cannot be loaded (offline and not cached, a bad folder, a missing dependency)."""


def load_failure_message(what: str, model: str, err: Exception, example_id: str, holds: str) -> str:
    """One line naming the model that failed to load, why, and the fix (download it, or fix the folder)."""
    cause = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    looks_like_folder = os.path.exists(model) or model.startswith((".", "~", os.sep)) or model.count("/") > 1
    if looks_like_folder:
        return (
            f"cannot load {what} from the folder {model!r} ({cause}); it must hold {holds} saved with "
            f"save_pretrained, e.g. `hf download {example_id} --local-dir {model}`"
        )
    return f"cannot load {what} {model!r} ({cause}); download it with `hf download {model}` or pass a local folder"


def _unavailable(model: str, err: Exception) -> DetectorUnavailable:
    """DetectorUnavailable with the one-line message for `model`."""
    example, holds = "IDEA-Research/grounding-dino-tiny", "a GroundingDINO or OWLv2 model"
    return DetectorUnavailable(load_failure_message("the detector", model, err, example, holds))


class GroundingDetector:
    """Finds boxes for text phrases on one image with GroundingDINO or OWLv2 (chosen by the saved model_type)."""

    def __init__(
        self, model: str, device: torch.device | str, box_threshold: float = 0.25, text_threshold: float = 0.25
    ):
        """Load the processor and weights of `model` (Hub id or folder) on `device` ('auto', 'cpu', 'cuda[:N]' or a
        torch.device); DetectorUnavailable when they cannot load."""
        device = resolve_device(device) if isinstance(device, str) else device
        try:
            model_type = AutoConfig.from_pretrained(model).model_type
        except Exception as err:  # any loading failure means "no detector here", whatever raised it
            raise _unavailable(model, err) from err
        if model_type not in _MODEL_CLASSES:
            raise ValueError(f"{model!r} is a {model_type!r} model; the detector must be GroundingDINO or OWLv2")
        if model_type == _OWLV2 and not (is_scipy_available() or is_torchvision_available()):
            raise DetectorUnavailable(
                f"the OWLv2 detector {model!r} needs scipy to resize images (`pip install scipy`); "
                "or use a GroundingDINO model such as IDEA-Research/grounding-dino-tiny"
            )
        try:
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = _MODEL_CLASSES[model_type].from_pretrained(model).to(device).eval()
        except Exception as err:
            raise _unavailable(model, err) from err
        self.model_type = model_type
        self.device = device
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold

    @torch.inference_mode()
    def detect(self, image: np.ndarray, phrases: list[str]) -> list[Detection]:
        """Boxes for `phrases` on `image`.

        image: uint8 (H, W, 3). Returns Detections with boxes (x0, y0, x1, y1) in that image's pixels (clipped to
        it), each labelled with one of `phrases` (exactly as given).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"the detector needs a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        queries = list(dict.fromkeys(phrases))
        height, width = image.shape[:2]
        if self.model_type == _GROUNDING_DINO:
            found = self._detect_grounding_dino(image, queries)
        else:
            found = self._detect_owlv2(image, queries)
        return [Detection(_clip_box(box, width, height), score, phrase) for box, score, phrase in found]

    def _detect_grounding_dino(self, image: np.ndarray, queries: list[str]) -> list[tuple[Box, float, str]]:
        """GroundingDINO reads one lowercase caption of period-terminated phrases and labels boxes with its tokens."""
        text = " ".join(f"{q.strip().lower().rstrip('.')}." for q in queries)
        inputs = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        (result,) = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[image.shape[:2]],
        )
        found = []
        for box, score, label in zip(result["boxes"].tolist(), result["scores"].tolist(), result["text_labels"]):
            phrase = _phrase_of_label(label, queries)
            if phrase is not None:  # no phrase word passed the text threshold: the box matches no subject
                found.append((tuple(box), score, phrase))
        return found

    def _detect_owlv2(self, image: np.ndarray, queries: list[str]) -> list[tuple[Box, float, str]]:
        """OWLv2 scores every box against each query; its label is the query's index."""
        inputs = self.processor(text=[queries], images=image, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        # OWLv2 pads images to a square; its post-processing scales boxes back to (H, W) pixels itself.
        (result,) = self.processor.image_processor.post_process_object_detection(
            outputs, threshold=self.box_threshold, target_sizes=[image.shape[:2]]
        )
        return [
            (tuple(box), score, queries[label])
            for box, score, label in zip(result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist())
        ]


def _words(text: str) -> list[str]:
    """Lowercase words of `text` (letters and digits)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _phrase_of_label(label: str, phrases: list[str]) -> str | None:
    """The phrase sharing most content words with a GroundingDINO label (ties: the earlier phrase); None if none."""
    label_words = set(_words(label))
    best, best_overlap = None, 0
    for phrase in phrases:
        words = set(_words(phrase))
        content = (words - _STOPWORDS) or words
        overlap = len(content & label_words)
        if overlap > best_overlap:
            best, best_overlap = phrase, overlap
    return best


def _clip_box(box: Box, width: int, height: int) -> Box:
    """The box clipped to the image (detector boxes may reach past its border)."""
    x0, y0, x1, y1 = box
    return (
        min(max(x0, 0.0), width),
        min(max(y0, 0.0), height),
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
    )


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: float (A, 4) x (B, 4) boxes (x0, y0, x1, y1) -> float (A, B)."""
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]).clamp(min=0) * (boxes_a[:, 3] - boxes_a[:, 1]).clamp(min=0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]).clamp(min=0) * (boxes_b[:, 3] - boxes_b[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: float (N, 4) boxes, (N,) scores -> long indices kept, best score first."""
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes, boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for index in order.tolist():
        if suppressed[index]:
            continue
        keep.append(index)
        suppressed |= iou[index] > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def pick_subject_boxes(
    detections: list[Detection], phrases: tuple[str, str], iou_threshold: float = 0.5
) -> list[Detection]:
    """Two distinct subjects' boxes, ordered left to right by box centre x.

    Class-agnostic NMS first (one object detected as both phrases keeps its best label), then the best box of
    phrase 1 and the best remaining box of phrase 2; when both phrases are the same, its two best boxes.
    Returns fewer than two Detections when fewer subjects are found.
    """
    if not detections:
        return []
    boxes = torch.tensor([d.box for d in detections], dtype=torch.float64)
    scores = torch.tensor([d.score for d in detections], dtype=torch.float64)
    kept = [detections[i] for i in nms(boxes, scores, iou_threshold).tolist()]  # best score first
    if phrases[0] == phrases[1]:
        chosen = [d for d in kept if d.phrase == phrases[0]][:2]
    else:
        # After NMS no kept box overlaps another, so each phrase's best box is a distinct subject.
        best = (next((d for d in kept if d.phrase == phrase), None) for phrase in phrases)
        chosen = [d for d in best if d is not None]
    return sorted(chosen, key=lambda d: (d.box[0] + d.box[2]) / 2)
