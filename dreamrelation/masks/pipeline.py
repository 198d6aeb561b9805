"""Make the subject masks of a relation dataset folder: the one entry point for the app, the CLI and scripts.

Per video: decode every frame, name the two subjects (given, or read from the caption), segment them with
the chosen engine, and write into DATA/masks/NAME/: frame%05d.png + subjects.json (the trainer's format,
see dataset.write_subject_masks), masks.json (how the masks were made, and their quality flags) and
overlay.mp4 (the masks tinted over the video, subject 1 red and subject 2 green, to check by eye).

Engines: 'sam2' finds the subjects' boxes on the seed frame with a text-grounded detector and propagates
them through the video with SAM2; 'basic' is the offline segmenter for plain backgrounds; 'auto' is sam2
when its models load, else basic, and every result then carries a notice saying so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamrelation.config import MasksConfig
from dreamrelation.data.dataset import MIN_RELATION_FRAMES, VIDEO_EXTENSIONS, DatasetError, write_subject_masks
from dreamrelation.data.video import VideoError, probe_video, read_frames, write_video
from dreamrelation.masks.basic import order_by_colour_words, segment_basic
from dreamrelation.masks.prompts import SubjectPrompt
from dreamrelation.masks.quality import quality_flags
from dreamrelation.masks.subjects import SubjectError, subject_phrases

Progress = Callable[[float, str], None]  # (fraction done 0..1, what is happening); gradio's gr.Progress fits
Steps = Callable[[int, int], None]  # (model steps done, total) within one video

OVERLAY_COLOURS = ((255, 0, 0), (0, 255, 0))  # subject 1 red, subject 2 green
OVERLAY_ALPHA = 0.5
_MASK_FILE = re.compile(r"frame\d+\.png", re.IGNORECASE)


@dataclass
class VideoMasks:
    """What make_masks did for one video.

    engine and notice say how the masks were made (notice: why not with the engine asked for); subjects are
    the phrases in mask order (None when they could not be named); flags are problems for the user to look
    at. error is set when no masks were written for this video (it is also the first flag).
    """

    name: str
    engine: str
    notice: str | None
    subjects: tuple[str, str] | None
    flags: list[str]
    mask_dir: Path
    overlay: Path
    error: str | None = None


class _VideoFailure(Exception):
    """This video gets no masks; the message, one line, says why and how to fix it."""


class _BasicEngine:
    """The offline segmenter; ignores prompts."""

    name = "basic"

    def __init__(self, notice: str | None = None):
        self.notice = notice

    def segment(self, frames: np.ndarray, phrases: tuple[str, str], prompts: list[SubjectPrompt], steps: Steps | None):
        """uint8 (F, H, W, 3) frames -> (bool (2, F, H, W) masks, phrases, the order rule, extra flags).

        It takes well under a second per short clip, so it reports no steps.
        """
        flags = ["box/point corrections were ignored: the basic segmenter takes none; use the sam2 engine"]
        flags = flags if prompts else []
        masks, by_colour = order_by_colour_words(frames, segment_basic(frames), phrases)
        rule = "by the colours the caption names" if by_colour else "left-to-right on the first frame where both appear"
        return masks, phrases, rule, flags


class _Sam2Engine:
    """Detector boxes on the seed frame, then SAM2 propagation; both models are loaded once per run."""

    name = "sam2"
    notice = None

    def __init__(self, config: MasksConfig):
        from dreamrelation.masks.grounding import GroundingDetector
        from dreamrelation.masks.sam2 import Sam2VideoSegmenter
        from dreamrelation.runtime import resolve_device

        self.config = config
        device = resolve_device(config.device)
        input_size, self.frame_stride = config.sam2_settings(on_gpu=device.type == "cuda")
        # The segmenter first: a missing SAM2 model is the likelier failure, and it fails without a download.
        self.segmenter = Sam2VideoSegmenter(config.sam2_model, device, input_size)
        self.detector = GroundingDetector(config.detector, device, config.box_threshold, config.text_threshold)

    def _seed_prompts(self, frame: np.ndarray, phrases: tuple[str, str]) -> tuple[list[SubjectPrompt], tuple[str, str]]:
        """Detector boxes for both subjects on uint8 (H, W, 3) `frame`, left first; _VideoFailure if not both."""
        from dreamrelation.masks.grounding import pick_subject_boxes

        seed = self.config.seed_frame
        boxes = pick_subject_boxes(self.detector.detect(frame, list(dict.fromkeys(phrases))), phrases)
        if len(boxes) < 2:
            raise _VideoFailure(
                f"the detector found {len(boxes)} of the 2 subjects ({phrases[0]!r}, {phrases[1]!r}) on frame {seed}; "
                "lower box_threshold, pick another seed_frame, name the subjects differently, or click them"
            )
        # Boxes come left to right; keep each phrase with its box when the detector tells them apart.
        found = (boxes[0].phrase, boxes[1].phrase)
        ordered = found if sorted(found) == sorted(phrases) else phrases
        return [SubjectPrompt(subject, seed, box=box.box) for subject, box in enumerate(boxes[:2])], ordered

    def segment(self, frames: np.ndarray, phrases: tuple[str, str], prompts: list[SubjectPrompt], steps: Steps | None):
        """uint8 (F, H, W, 3) frames -> (bool (2, F, H, W) masks, phrases in mask order, the order rule, []).

        `steps(done, total)` follows SAM2's propagation.
        """
        seed = self.config.seed_frame
        if seed >= len(frames):
            raise _VideoFailure(
                f"seed_frame {seed} is past the last frame ({len(frames)} frames); use a smaller seed_frame"
            )
        outside = [p.frame for p in prompts if not 0 <= p.frame < len(frames)]
        if outside:
            raise _VideoFailure(f"a correction is on frame {outside[0]} but the video has {len(frames)} frames; fix it")
        try:
            seeds, ordered = self._seed_prompts(frames[seed], phrases)
            rule = "left-to-right on the seed frame"
        except _VideoFailure:
            # Corrections that place both subjects can stand in for the detector's boxes.
            if {p.subject for p in prompts} != {0, 1}:
                raise
            seeds, ordered, rule = [], phrases, "as the corrections number them"
        masks = self.segmenter.segment(frames, seeds + list(prompts), self.frame_stride, steps)
        return np.asarray(masks, bool), ordered, rule, []


def _unavailable_errors() -> tuple[type[Exception], ...]:
    """The errors meaning 'the sam2 engine cannot run here': its models are missing or its packages are."""
    try:
        from dreamrelation.masks.grounding import DetectorUnavailable
        from dreamrelation.masks.sam2 import SegmenterUnavailable
    except ImportError:
        return (ImportError,)
    return (DetectorUnavailable, SegmenterUnavailable, ImportError)


def _fallback(error: Exception) -> _BasicEngine:
    """The basic engine, with a notice quoting why sam2 could not run."""
    return _BasicEngine(notice=f"masks made with the basic segmenter: SAM2 weights unavailable ({error})")


def _open_engine(config: MasksConfig):
    """The engine the config asks for; 'auto' falls back to basic when sam2 cannot load."""
    if config.engine == "basic":
        return _BasicEngine()
    try:
        return _Sam2Engine(config)
    except _unavailable_errors() as error:
        if config.engine == "sam2":
            raise
        return _fallback(error)


def _find_videos(data_dir: Path, names: list[str] | None) -> dict[str, list[Path]]:
    """Map each video name (file stem) of the folder to its files, sorted; only `names` when given.

    Raises DatasetError for a missing folder, a folder without videos, or a name no video has.
    """
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: dataset folder not found; check the path")
    videos: dict[str, list[Path]] = {}
    for path in sorted(data_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            videos.setdefault(path.stem, []).append(path)
    if not videos:
        raise DatasetError(f"{data_dir}: no videos found; add NAME{'|'.join(VIDEO_EXTENSIONS)} files")
    if names is None:
        return videos
    unknown = [name for name in names if name not in videos]
    if unknown:
        raise DatasetError(f"{data_dir}: no video named {unknown[0]!r}; videos here: {', '.join(videos)}")
    return {name: videos[name] for name in dict.fromkeys(names)}


def _check_pair(pair) -> tuple[str, str]:
    """A (subject 1, subject 2) pair of non-empty names, stripped; SubjectError otherwise."""
    if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(p, str) and p.strip() for p in pair):
        raise SubjectError(f"subjects must be two non-empty names such as ('dog', 'cat'), got {pair!r}")
    return pair[0].strip(), pair[1].strip()


def _phrases(data_dir: Path, name: str, given) -> tuple[str, str]:
    """The video's two subject phrases: `given` (a pair, or a dict by name) else read from NAME.txt."""
    pair = given.get(name) if isinstance(given, dict) else given
    if pair is not None:
        return _check_pair(pair)
    caption = data_dir / f"{name}.txt"
    try:
        text = caption.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise _VideoFailure(f"{caption}: missing caption; write one naming both subjects, or pass them") from None
    except UnicodeDecodeError:
        raise _VideoFailure(f"{caption}: caption is not UTF-8 text; save it as UTF-8") from None
    return subject_phrases(text)


def _mask_dir(data_dir: Path, name: str) -> Path:
    """DATA/masks/NAME, refused (_VideoFailure) when it would lie outside the dataset folder."""
    if name in (".", ".."):
        raise _VideoFailure(f"video name {name!r} cannot name a mask folder; rename the video")
    mask_dir = data_dir / "masks" / name
    # A symlinked masks/ or masks/NAME could point anywhere; only ever write inside the dataset folder.
    if not mask_dir.resolve().is_relative_to(data_dir.resolve()):
        raise _VideoFailure(f"{mask_dir}: points outside the dataset folder; replace the link with a real folder")
    return mask_dir


def _decode(videos: list[Path]) -> tuple[np.ndarray, float]:
    """Every frame of a name's one video, uint8 (F, H, W, 3), and its frame rate (0.0 if unknown);
    _VideoFailure for a video of fewer than MIN_RELATION_FRAMES frames (a still image)."""
    if len(videos) > 1:
        raise _VideoFailure(f"{', '.join(v.name for v in videos)} share one name; keep one video per name")
    info = probe_video(videos[0])
    if info.num_frames < MIN_RELATION_FRAMES:
        raise _VideoFailure(
            f"the video has {info.num_frames} frame{'' if info.num_frames == 1 else 's'}; a relation clip needs at "
            f"least {MIN_RELATION_FRAMES} (and training takes the model's num_frames): use a video, not a still image"
        )
    return read_frames(videos[0], list(range(info.num_frames))), info.fps


def overlay_frames(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Tint masks over a video: subject 1 red, subject 2 green, at OVERLAY_ALPHA.

    Takes uint8 (F, H, W, 3) frames and bool (2, F, H, W) masks. Returns uint8 (F, H', W', 3), cropped by
    a row/column where needed so that H' and W' are even (H.264 needs it).
    """
    tinted = frames.astype(np.float32)
    for mask, colour in zip(masks, OVERLAY_COLOURS):
        tinted[mask] = (1 - OVERLAY_ALPHA) * tinted[mask] + OVERLAY_ALPHA * np.asarray(colour, np.float32)
    height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    return np.ascontiguousarray(tinted.round().astype(np.uint8)[:, :height, :width])


def _write(mask_dir: Path, frames: np.ndarray, fps: float, masks: np.ndarray, record: dict) -> Path:
    """Write a video's mask frames, masks.json and overlay.mp4 into `mask_dir`; returns the overlay's path."""
    mask_dir.mkdir(parents=True, exist_ok=True)
    # Frames of an earlier, longer run would otherwise be read as this video's masks.
    for path in mask_dir.iterdir():
        if _MASK_FILE.fullmatch(path.name):
            path.unlink()
    write_subject_masks(mask_dir, masks)
    (mask_dir / "masks.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return write_video(mask_dir / "overlay.mp4", overlay_frames(frames, masks), fps=max(1, round(fps)) if fps else 24)


def _video_steps(progress: Progress | None, position: int, count: int, name: str) -> Steps | None:
    """Turn one video's (done, total) model steps into the run's progress, or None without a callback."""
    if progress is None:
        return None
    return lambda done, total: progress((position + done / max(total, 1)) / count, f"masks for {name}: {done}/{total}")


def make_masks(
    data_dir: str | Path,
    config: MasksConfig,
    subjects: dict[str, tuple[str, str]] | tuple[str, str] | None = None,
    corrections: dict[str, list[SubjectPrompt]] | None = None,
    names: list[str] | None = None,
    progress: Progress | None = None,
) -> list[VideoMasks]:
    """Make the two subject masks of every video in a relation dataset folder (or of `names`).

    Takes the folder, the MasksConfig, the subject phrases (one pair for all videos, a dict by video name,
    or None: from each NAME.txt caption), box/point corrections by video name (sam2 engine only), the
    video names to do, and a progress callback (fraction, message). Writes DATA/masks/NAME/ for each video
    that could be segmented, flags included. Returns one VideoMasks per video, in name order; a video that
    fails (unreadable, a single frame, no second subject in its caption, subjects not detected) carries the
    error and the others are still done. Raises DatasetError for a missing folder or unknown names,
    SubjectError for a malformed `subjects` pair, and the sam2 engine's errors when engine='sam2' cannot load.
    """
    data_dir = Path(data_dir)
    if subjects is not None and not isinstance(subjects, dict):
        subjects = _check_pair(subjects)
    corrections = corrections or {}
    videos = _find_videos(data_dir, names)
    engine = _open_engine(config)
    results = []
    for position, (name, paths) in enumerate(videos.items()):
        if progress:
            progress(position / len(videos), f"masks for {name} ({position + 1}/{len(videos)})")
        mask_dir = data_dir / "masks" / name
        try:
            mask_dir = _mask_dir(data_dir, name)
            phrases = _phrases(data_dir, name, subjects)
            frames, fps = _decode(paths)
            prompts, steps = corrections.get(name, []), _video_steps(progress, position, len(videos), name)
            try:
                masks, ordered, rule, flags = engine.segment(frames, phrases, prompts, steps)
            except _unavailable_errors() as error:
                # 'auto' whose models fail only when first used: this and the remaining videos go basic.
                if config.engine == "sam2":
                    raise
                engine = _fallback(error)
                masks, ordered, rule, flags = engine.segment(frames, phrases, prompts, steps)
        except (_VideoFailure, SubjectError, VideoError) as error:
            message = f"no masks: {error}"
            results.append(VideoMasks(name, engine.name, engine.notice, None, [message], mask_dir,
                                      mask_dir / "overlay.mp4", error=str(error)))
            continue
        flags = quality_flags(masks) + flags
        record = {"engine": engine.name, "notice": engine.notice, "subjects": list(ordered), "order": rule,
                  "flags": flags, "num_frames": int(masks.shape[1])}
        overlay = _write(mask_dir, frames, fps, masks, record)
        results.append(VideoMasks(name, engine.name, engine.notice, ordered, flags, mask_dir, overlay))
    if progress:
        progress(1.0, f"masks done for {len(videos)} video(s)")
    return results
