"""SAM2 video propagation of two subjects' masks through transformers' port (Sam2VideoModel).

transformers' Sam2VideoProcessor needs torchvision, so the small pre/post-processing it does is redone here in
torch (`preprocess_frames`, `masks_to_video_size`, `_prompt_tensors`), and prompts go straight into the
Sam2VideoInferenceSession the way its `add_inputs_to_inference_session` puts them there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Sam2VideoConfig, Sam2VideoModel
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

from dreamrelation.masks.grounding import load_failure_message
from dreamrelation.masks.prompts import Box, SubjectPrompt
from dreamrelation.runtime import resolve_device

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_BOX_LABELS = (2, 3)  # SAM's point labels of a box's top-left and bottom-right corners
_PREPROCESS_CHUNK = 8  # frames resized at once: bounds the float copies of full-size frames


class SegmenterUnavailable(RuntimeError):
    """SAM2's weights cannot be loaded (offline and not cached, a bad folder)."""


def preprocess_frames(frames: np.ndarray, input_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Frames as SAM2's video processor makes them.

    uint8 (F, H, W, 3) -> float32 (F, 3, S, S) on `device`: bilinear (antialiased) resize to S x S, rounded to
    uint8 levels like the processor's uint8 resize, scaled to [0, 1], then ImageNet mean/std normalised.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
    pixels = F.interpolate(pixels, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    pixels = pixels.round().clamp(0, 255) / 255.0
    mean = torch.tensor(_IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def masks_to_video_size(mask_logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Low-resolution mask logits to video-size masks, as SAM2's post_process_masks does.

    float (N, 1, h, w) logits -> bool (N, height, width): bilinear interpolation of the logits, then > 0.
    """
    logits = F.interpolate(mask_logits.float(), size=(height, width), mode="bilinear", align_corners=False)
    return logits[:, 0] > 0


def _prompt_tensors(
    box: Box | None, points: list[tuple[float, float]], labels: list[int], height: int, width: int, input_size: int
) -> dict[str, torch.Tensor]:
    """One subject's prompts on one frame as the session stores them, coordinates scaled to the model's input.

    Returns point_coords float (1, 1, P, 2) in input pixels and point_labels int32 (1, 1, P); a box comes first
    as its two corners with labels 2 and 3 (SAM2 needs the box before any click).
    """
    coords, point_labels = list(points), list(labels)
    if box is not None:
        coords = [(box[0], box[1]), (box[2], box[3]), *coords]
        point_labels = [*_BOX_LABELS, *point_labels]
    scale = torch.tensor([input_size / width, input_size / height])
    point_coords = torch.tensor(coords, dtype=torch.float32).reshape(1, 1, -1, 2) * scale
    return {"point_coords": point_coords, "point_labels": torch.tensor(point_labels, dtype=torch.int32).view(1, 1, -1)}


@dataclass
class _FramePrompt:
    """All prompts of one subject on one frame, merged (the last box wins; points accumulate)."""

    box: Box | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def _merge_prompts(prompts: list[SubjectPrompt]) -> dict[tuple[int, int], _FramePrompt]:
    """Prompts keyed by (frame, subject)."""
    merged: dict[tuple[int, int], _FramePrompt] = {}
    for prompt in prompts:
        entry = merged.setdefault((prompt.frame, prompt.subject), _FramePrompt())
        entry.box = prompt.box if prompt.box is not None else entry.box
        entry.points += list(prompt.points)
        entry.labels += list(prompt.labels)
    return merged


def _keyframes(num_frames: int, stride: int, prompted: set[int]) -> list[int]:
    """Frames the model runs on: every stride-th frame, the prompted frames and the last frame, sorted."""
    return sorted(set(range(0, num_frames, stride)) | prompted | {num_frames - 1})


def _config_for_input_size(config: Sam2VideoConfig, size: int) -> Sam2VideoConfig:
    """The config with every size derived from the square input set for `size` (the weights do not change)."""
    vision = config.vision_config
    vision.backbone_config.image_size = [size, size]
    vision.backbone_feature_sizes = [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2]
    config.prompt_encoder_config.image_size = size
    config.memory_attention_rope_feat_sizes = [size // 16] * 2
    config.image_size = size
    return config


class Sam2VideoSegmenter:
    """Propagates two subjects' prompts (boxes, clicks) over a video with SAM2."""

    def __init__(self, model: str, device: torch.device | str, input_size: int = 1024):
        """Load SAM2 `model` (Hub id or folder) on `device` ('auto', 'cpu', 'cuda[:N]' or a torch.device) to run at
        `input_size`; SegmenterUnavailable when it cannot load."""
        device = resolve_device(device) if isinstance(device, str) else device
        if input_size % 32:
            # Hiera downsamples by 32 and the feature pyramid upsamples back by exact factors of 2.
            raise ValueError(f"the SAM2 input size must be a multiple of 32, got {input_size}")
        try:
            config = _config_for_input_size(Sam2VideoConfig.from_pretrained(model), input_size)
            self.model = Sam2VideoModel.from_pretrained(model, config=config).to(device).eval()
        except Exception as err:  # any loading failure means "no SAM2 here", whatever raised it
            message = load_failure_message("SAM2", model, err, "facebook/sam2.1-hiera-tiny", "a SAM2 video model")
            raise SegmenterUnavailable(message) from err
        self.device = device
        self.input_size = input_size

    @torch.inference_mode()
    def segment(
        self,
        frames: np.ndarray,
        prompts: list[SubjectPrompt],
        frame_stride: int = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Masks of both subjects on every frame.

        frames: uint8 (F, H, W, 3). prompts: at least one per subject, on any frames; each subject's earliest
        prompted frame starts its track, prompts on later frames correct it. Propagates forwards from the earliest
        prompted frame, then backwards to frame 0. With frame_stride > 1 the model runs on every stride-th frame
        (plus prompted frames and the last one) and the frames between get linearly interpolated mask
        probabilities. `progress(done, total)` is called after each model step. Returns bool (2, F, H, W).
        """
        num_frames, height, width = _check_inputs(frames, prompts, frame_stride)
        merged = _merge_prompts(prompts)
        keys = _keyframes(num_frames, frame_stride, {frame for frame, _ in merged})
        position = {frame: i for i, frame in enumerate(keys)}
        session = self._session(frames[keys], height, width)

        first = {s: min(f for f, subject in merged if subject == s) for s in (0, 1)}
        initial = {(position[f], s): merged[f, s] for f, s in merged if f == first[s]}
        corrections = {(position[f], s): merged[f, s] for f, s in merged if f != first[s]}
        start = min(p for p, _ in initial)
        steps = _steps_per_pass(len(keys), start) * (2 if corrections else 1)
        counter = _Progress(steps, progress)

        logits: dict[int, torch.Tensor] = {}
        self._add_prompts(session, initial, height, width, promote=False)
        self._propagate(session, start, logits, counter)
        if corrections:
            # Corrections are read against the first pass's memory, kept as conditioning frames, and then the
            # whole video is propagated again so that every frame sees them.
            self._add_prompts(session, corrections, height, width, promote=True)
            self._propagate(session, start, logits, counter)
        return _fill_frames(logits, keys, num_frames, height, width)

    def _session(self, frames: np.ndarray, height: int, width: int) -> Sam2VideoInferenceSession:
        """A session holding the preprocessed frames; frames and tracking state live on the CPU (long clips)."""
        session = Sam2VideoInferenceSession(
            video_height=height,
            video_width=width,
            inference_device=self.device,
            inference_state_device="cpu",
            video_storage_device="cpu",
            dtype=torch.float32,  # the session's default is the string "float32", which torch.Tensor.to rejects
        )
        for begin in range(0, len(frames), _PREPROCESS_CHUNK):
            chunk = preprocess_frames(frames[begin : begin + _PREPROCESS_CHUNK], self.input_size, self.device)
            for offset, pixels in enumerate(chunk):
                session.add_new_frame(pixels, begin + offset)
        return session

    def _add_prompts(
        self,
        session: Sam2VideoInferenceSession,
        prompts: dict[tuple[int, int], _FramePrompt],
        height: int,
        width: int,
        promote: bool,
    ) -> None:
        """Run the model on each prompted frame (session positions), frame by frame in time order.

        promote: the frame was already tracked, so the model stores its prompted result as an ordinary tracked
        frame, which the next propagation would overwrite; move it to the conditioning frames instead.
        """
        for frame in sorted({f for f, _ in prompts}):
            subjects = [s for f, s in sorted(prompts) if f == frame]
            for subject in subjects:
                entry = prompts[frame, subject]
                tensors = _prompt_tensors(entry.box, entry.points, entry.labels, height, width, self.input_size)
                obj_idx = session.obj_id_to_idx(subject)
                session.add_point_inputs(obj_idx, frame, tensors)
                session.remove_mask_inputs(obj_idx, frame)
            session.obj_with_new_inputs = list(subjects)
            self.model(inference_session=session, frame_idx=frame)
            if promote:
                for subject in subjects:
                    outputs = session.output_dict_per_obj[session.obj_id_to_idx(subject)]
                    outputs["cond_frame_outputs"][frame] = outputs["non_cond_frame_outputs"].pop(frame)

    def _propagate(
        self, session: Sam2VideoInferenceSession, start: int, logits: dict[int, torch.Tensor], counter: _Progress
    ) -> None:
        """Track forwards from `start` to the end, then backwards to 0; logits[position] = float (2, 1, h, w)."""
        directions = [False, True] if start > 0 else [False]
        for reverse in directions:
            for output in self.model.propagate_in_video_iterator(session, start_frame_idx=start, reverse=reverse):
                order = [output.object_ids.index(s) for s in (0, 1)]
                logits[output.frame_idx] = output.pred_masks[order].float().cpu()
                counter.step()


class _Progress:
    """Counts model steps and reports them to an optional progress(done, total) callback."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None):
        self.total, self.done, self.callback = total, 0, callback

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def _steps_per_pass(num_positions: int, start: int) -> int:
    """Frames one forward + backward pass yields (the backward pass repeats the start frame)."""
    return num_positions - start + (start + 1 if start > 0 else 0)


def _check_inputs(frames: np.ndarray, prompts: list[SubjectPrompt], frame_stride: int) -> tuple[int, int, int]:
    """(F, H, W) of the frames; ValueError on bad frames, a subject without prompts or a prompt off the video."""
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"SAM2 needs uint8 (F, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be at least 1, got {frame_stride}")
    num_frames, height, width = frames.shape[:3]
    for subject in (0, 1):
        if not any(p.subject == subject for p in prompts):
            raise ValueError(f"SAM2 needs a box or points for subject {subject + 1}")
    for prompt in prompts:
        if not 0 <= prompt.frame < num_frames:
            raise ValueError(f"a prompt is on frame {prompt.frame}, but the video has {num_frames} frames")
    return num_frames, height, width


def _centroids(probs: torch.Tensor) -> torch.Tensor:
    """float (N, 1, h, w) probabilities -> (N, 2) probability-weighted (x, y) centroids in grid pixels."""
    height, width = probs.shape[-2:]
    ys = torch.arange(height, dtype=probs.dtype)[:, None]
    xs = torch.arange(width, dtype=probs.dtype)[None, :]
    mass = probs.sum(dim=(1, 2, 3))
    x = (probs[:, 0] * xs).sum(dim=(1, 2)) / mass
    y = (probs[:, 0] * ys).sum(dim=(1, 2)) / mass
    return torch.stack([x, y], dim=1)


def _shifted(probs: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Translate float (N, 1, h, w) maps by (N, 2) (dx, dy) grid pixels (bilinear, zeros shifted in)."""
    height, width = probs.shape[-2:]
    theta = torch.zeros(len(probs), 2, 3, dtype=probs.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * offsets[:, 0] / width
    theta[:, 1, 2] = -2.0 * offsets[:, 1] / height
    grid = F.affine_grid(theta, list(probs.shape), align_corners=False)
    return F.grid_sample(probs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _fill_frames(
    logits: dict[int, torch.Tensor], keys: list[int], num_frames: int, height: int, width: int
) -> np.ndarray:
    """Video-size masks of every frame from the keyframes' logits (positions in `keys`) -> bool (2, F, H, W).

    Motion-compensated: a frame between keyframes a < t < b, w = (t - a)/(b - a), gets
    p = (1 - w)·shift(P_a, w·d) + w·shift(P_b, -(1 - w)·d), P = sigmoid(L) and d the move of the subject's
    centroid from a to b (0 unless it is on both: some p > 0.5), thresholded at 0.5 (as logit(p) > 0, through the
    same upsampling as the keyframes). Subjects moving steadily are placed where they are, not blended as
    two ghosts of half strength (which a plain cross-fade gives).
    """
    masks = np.zeros((2, num_frames, height, width), dtype=bool)
    for i, frame in enumerate(keys):
        masks[:, frame] = masks_to_video_size(logits[i], height, width).numpy()
        if i + 1 < len(keys):
            after = keys[i + 1]
            low, high = torch.sigmoid(logits[i].float()), torch.sigmoid(logits[i + 1].float())
            present = (low.amax(dim=(1, 2, 3)) > 0.5) & (high.amax(dim=(1, 2, 3)) > 0.5)
            move = torch.where(present[:, None], _centroids(high) - _centroids(low), 0.0)
            for between in range(frame + 1, after):
                weight = (between - frame) / (after - frame)
                probs = (1 - weight) * _shifted(low, weight * move) + weight * _shifted(high, -(1 - weight) * move)
                masks[:, between] = masks_to_video_size(torch.logit(probs, eps=1e-6), height, width).numpy()
    return masks
