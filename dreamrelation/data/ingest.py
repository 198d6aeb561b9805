"""Turn raw uploads (a video and a caption each) into samples of a relation dataset folder.

Each upload becomes `NAME.mp4` (the normalised clip: resampled to the target frame rate by timestamp,
num_frames frames, centre-cropped and resized, H.264), `NAME.txt` (the caption), `previews/NAME.png` (the
clip's first frame) and `meta/NAME.json` (where the clip came from). Everything is checked before anything
is written, and files are written under temporary names then renamed, so a rejected or failed upload leaves
nothing behind. Source files are only read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dreamrelation.config import IngestConfig
from dreamrelation.data.dataset import MIN_RELATION_FRAMES
from dreamrelation.data.video import (
    VideoError,
    VideoInfo,
    crop_box,
    frame_indices_at_fps,
    probe_video,
    read_frames,
    write_video,
)

if TYPE_CHECKING:
    # Only the type: importing the models package would load torch, which ingesting does not need.
    from dreamrelation.models.base import ClipShape

# Folders of the dataset whose entries are named after samples: a new name must be free in all of them, so
# a new clip never picks up an old clip's masks or metadata.
_NAMED_FOLDERS = ("", "previews", "meta", "masks")
# Device names Windows reserves whatever the extension.
_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
# Leaves room for "-N" and an extension within every file system's 255-byte limit.
_MAX_NAME_LENGTH = 80
# Timestamps are rounded to their container's clock; this absorbs that when checking a clip is long enough.
_DURATION_TOLERANCE_S = 1e-3
_CAPTION_EXAMPLE = "'A person is shaking hands with a person.'"


class IngestError(ValueError):
    """An upload that cannot be ingested; one line naming the upload (its original file name) and the fix."""


@dataclass
class IngestedClip:
    """One ingested upload: its dataset name, the files written, and notes on what was changed."""

    name: str
    video: Path
    caption_file: Path
    preview: Path
    metadata: Path
    notes: list[str] = field(default_factory=list)


def _file_stem(original_name: str) -> str:
    """The name's last path component (either separator) without its extension; '' stays ''."""
    name = PureWindowsPath(original_name).name
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def _clean_stem(text: str) -> str:
    """Reduce text to ASCII letters, digits, '-' and '_': accents dropped (é -> e), other runs become '_'."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    # Dots go too, so no '..' and no second extension; leading '-' would read as an option on a command line.
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", plain).strip("_-")[:_MAX_NAME_LENGTH].strip("_-") or "video"
    return f"{stem}_" if stem.lower() in _RESERVED_NAMES else stem


def _unique(stem: str, taken: set[str]) -> str:
    """Return stem, or stem-2, stem-3, ..., the first not in `taken`, ignoring case (macOS and Windows do)."""
    folded = {name.casefold() for name in taken}
    candidate, number = stem, 1
    while candidate.casefold() in folded:
        number += 1
        candidate = f"{stem}-{number}"
    return candidate


def safe_name(original_name: str, taken: set[str]) -> str:
    """A dataset name for an upload, safe as a file stem on every OS.

    Takes the upload's original file name (any path prefix and the extension are dropped) and the names
    already used. Returns ASCII letters, digits, '-' and '_' only (accented letters lose their accents,
    other characters become '_'), at most 80 characters plus any '-N' suffix, never empty ('video') nor a
    Windows device name, and not in `taken` ignoring case (else suffixed -2, -3, ...).
    """
    return _unique(_clean_stem(_file_stem(original_name)), taken)


def _taken_names(data_dir: Path) -> set[str]:
    """Stems of everything in the dataset folder and its previews/, meta/ and masks/ folders."""
    taken = set()
    for folder in (data_dir / sub for sub in _NAMED_FOLDERS):
        if folder.is_dir():
            taken.update(_file_stem(entry) for entry in os.listdir(folder))
    return taken


def check_caption(caption: str, max_words: int = 256) -> str:
    """Check a caption and return it tidied.

    Takes the caption and the word limit (whitespace-separated words; the model's token limit is checked
    where the caption is encoded, as ingestion loads no model). Returns the caption with its whitespace runs
    (newlines too) collapsed to single spaces and the ends stripped. Raises IngestError when it is empty or
    over the limit. Whether it names two subjects is the masks stage's check.
    """
    text = " ".join(str(caption).split())
    if not text:
        raise IngestError(f"caption is empty; write one sentence about the two subjects, e.g. {_CAPTION_EXAMPLE}")
    count = len(text.split())
    if count > max_words:
        raise IngestError(
            f"caption is {count} words long, over the limit of {max_words} (max_caption_words); shorten it"
        )
    return text


def _check_file(source: Path, max_file_mb: float) -> None:
    """Raise IngestError unless `source` is a non-empty file of at most max_file_mb megabytes (10^6 bytes)."""
    if not source.is_file():
        raise IngestError("file not found; check the path")
    size = source.stat().st_size
    if size == 0:
        raise IngestError("file is empty (0 bytes); upload it again")
    if size > max_file_mb * 1e6:
        raise IngestError(
            f"file is {size / 1e6:.3g} MB, over the limit of {max_file_mb:g} MB (max_file_mb); "
            "trim or compress it, e.g. ffmpeg -i INPUT -t 10 -vf scale=-2:720 OUTPUT.mp4"
        )


def _check_video(info: VideoInfo, config: IngestConfig, shape: ClipShape) -> None:
    """Raise IngestError when the video is too big, too long, or too short for the clip at the target rate."""
    pixels = info.width * info.height
    if pixels > config.max_pixels:
        raise IngestError(
            f"video is {info.width}x{info.height} ({pixels} pixels), over the limit of {config.max_pixels} "
            "(max_pixels); downscale it, e.g. ffmpeg -i INPUT -vf scale=-2:1080 OUTPUT.mp4"
        )
    if info.duration > config.max_duration_s:
        raise IngestError(
            f"video is {info.duration:.1f} s long, over the limit of {config.max_duration_s:g} s (max_duration_s); "
            f"trim it, e.g. ffmpeg -i INPUT -t {config.max_duration_s:g} OUTPUT.mp4"
        )
    needed = shape.num_frames / shape.fps
    if info.num_frames < MIN_RELATION_FRAMES or info.duration + _DURATION_TOLERANCE_S < needed:
        length = f"{info.duration:.2f} s long ({info.num_frames} frames)"
        what = "a still image (1 frame)" if info.num_frames < MIN_RELATION_FRAMES else length
        raise IngestError(
            f"video is {what}; {shape.num_frames} frames at {shape.fps:g} fps need a clip at least {needed:.2f} s "
            "long; upload a longer clip, or lower num_frames"
        )


def _problem(error: Exception, source: Path) -> str:
    """The error's message without the leading 'PATH: ' that video.py puts there (the caller names the upload)."""
    return str(error).removeprefix(f"{source}: ")


def _is_variable_rate(times: tuple[float, ...]) -> bool:
    """Whether the gaps between frames differ by over 10% of the typical gap (phones drop or stretch frames)."""
    gaps = np.diff(times)
    return len(gaps) > 1 and gaps.max() - gaps.min() > 0.1 * np.median(gaps)


def _timing_notes(info: VideoInfo, shape: ClipShape, sampling: str, source_fps: float) -> list[str]:
    """Describe how the source's frames were resampled in time."""
    notes = []
    if _is_variable_rate(info.timestamps):
        notes.append("variable frame rate: frames were picked by their timestamps")
    elif abs(source_fps - shape.fps) > 0.01 * shape.fps:
        change = "repeated" if source_fps < shape.fps else "skipped"
        notes.append(f"resampled from {source_fps:.3g} to {shape.fps:g} fps (frames {change})")
    span = shape.num_frames / shape.fps
    if sampling == "first" and info.duration > span + 1 / shape.fps:
        notes.append(f"kept the first {span:.2f} s of {info.duration:.2f} s (frame_sampling 'first')")
    if sampling == "uniform" and shape.num_frames > 1:
        speed = (info.timestamps[-1] - info.timestamps[0]) * shape.fps / (shape.num_frames - 1)
        if abs(speed - 1) > 0.01:
            notes.append(f"frames spread over the whole {info.duration:.2f} s: the clip plays at {speed:.2g}x speed")
    return notes


def _space_notes(info: VideoInfo, shape: ClipShape, box: tuple[int, int, int, int]) -> list[str]:
    """Describe rotation, cropping and upscaling; box is (x0, y0, x1, y1) in upright source pixels."""
    notes = []
    if info.rotation:
        notes.append(f"turned upright (the file is stored rotated by {info.rotation} degrees)")
    crop_width, crop_height = box[2] - box[0], box[3] - box[1]
    if (crop_width, crop_height) != (info.width, info.height):
        notes.append(
            f"kept the centre {crop_width}x{crop_height} of the {info.width}x{info.height} frame "
            f"to fit {shape.width}x{shape.height}"
        )
    if crop_width < shape.width:
        notes.append(f"enlarged {crop_width}x{crop_height} to {shape.width}x{shape.height}; the clip may look soft")
    return notes


def _metadata(source: Path, info: VideoInfo, shape: ClipShape, sampling: str, box, indices: list[int]) -> dict:
    """The meta/NAME.json record: where the clip came from and how it was made."""
    return {
        "source": source.name,
        "source_fps": round(_source_fps(info), 3),
        "source_frames": info.num_frames,
        "source_size": [info.width, info.height],
        "source_duration": round(info.duration, 3),
        "rotation": info.rotation,
        "fps": shape.fps,
        "frames": shape.num_frames,
        "size": [shape.width, shape.height],
        "crop": list(box),
        "sampling": sampling,
        "source_indices": indices,
    }


def _source_fps(info: VideoInfo) -> float:
    """The container's average rate, else frames per second of duration."""
    return info.fps or info.num_frames / info.duration


def _install(staging: Path, moves: list[tuple[str, Path]]) -> None:
    """Rename staged files into place, all or none: on failure, the ones already moved are removed again.

    Takes the staging folder and (staged file name, destination) pairs in order; the video goes last, since
    a dataset sample exists once its video does.
    """
    done = []
    try:
        for staged, destination in moves:
            destination.parent.mkdir(exist_ok=True)
            os.replace(staging / staged, destination)
            done.append(destination)
    except OSError:
        for destination in done:
            destination.unlink(missing_ok=True)
        raise


def _write_sample(
    data_dir: Path, name: str, frames: np.ndarray, caption: str, metadata: dict, fps: float
) -> IngestedClip:
    """Write one sample's four files via a staging folder inside data_dir (so the renames stay on one disk).

    Takes uint8 (F, H, W, 3) RGB frames. Returns the IngestedClip (without notes). Raises OSError or
    VideoError when writing fails, leaving nothing behind.
    """
    clip = IngestedClip(
        name,
        data_dir / f"{name}.mp4",
        data_dir / f"{name}.txt",
        data_dir / "previews" / f"{name}.png",
        data_dir / "meta" / f"{name}.json",
    )
    staging = Path(tempfile.mkdtemp(prefix=".ingest-", dir=data_dir))
    try:
        write_video(staging / "video.mp4", frames, fps)
        (staging / "caption.txt").write_text(caption + "\n", encoding="utf-8")
        Image.fromarray(frames[0]).save(staging / "preview.png")
        (staging / "meta.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        _install(
            staging,
            [("preview.png", clip.preview), ("meta.json", clip.metadata),
             ("caption.txt", clip.caption_file), ("video.mp4", clip.video)],
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return clip


def ingest_video(
    source: Path,
    caption: str,
    data_dir: Path,
    config: IngestConfig,
    defaults: ClipShape,
    name: str | None = None,
) -> IngestedClip:
    """Check one upload and write it into the dataset folder as a normalised sample.

    Takes the uploaded video (any container FFmpeg reads: mp4, mov, webm, mkv, avi, animated gif, ...), its
    caption, the dataset folder (created if missing), the ingest settings, the model's clip defaults (for
    settings left None), an optional dataset name (default: from the file name; made safe and unique either
    way, see safe_name). Checks, before writing anything:
    the file exists and is within max_file_mb, the caption (check_caption), a decodable video stream, the
    displayed size within max_pixels, the duration within max_duration_s and at least num_frames/fps
    seconds. Then picks the frame nearest each target time (frame_indices_at_fps with the config's
    frame_sampling), turns frames upright, centre-crops and resizes them. Returns the IngestedClip, whose
    notes say what was changed. Raises IngestError (one line, naming the upload and the fix) for any
    problem; nothing is written then.
    """
    source, data_dir = Path(source), Path(data_dir)
    shape = defaults.resolve(num_frames=config.num_frames, height=config.height, width=config.width, fps=config.fps)
    try:
        _check_file(source, config.max_file_mb)
        caption = check_caption(caption, config.max_caption_words)
        info = probe_video(source, timestamps=True)
        _check_video(info, config, shape)
        indices = frame_indices_at_fps(info.timestamps, shape.fps, shape.num_frames, config.frame_sampling)
        frames = read_frames(source, indices, (shape.height, shape.width))
    except (IngestError, VideoError) as error:
        raise IngestError(f"{source.name}: {_problem(error, source)}") from None
    top, left, crop_height, crop_width = crop_box(info.height, info.width, shape.height, shape.width)
    box = (left, top, left + crop_width, top + crop_height)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        wanted = _file_stem(source.name) if name is None else name
        unique = _unique(_clean_stem(wanted), _taken_names(data_dir))
        metadata = _metadata(source, info, shape, config.frame_sampling, box, indices)
        clip = _write_sample(data_dir, unique, frames, caption, metadata, shape.fps)
    except (OSError, VideoError) as error:
        raise IngestError(
            f"{source.name}: could not write to {data_dir} ({error}); "
            "check the folder is writable and the disk has space"
        ) from None
    if unique != wanted:
        clip.notes.append(f"saved as '{unique}' (names keep to ASCII letters, digits, - and _, and must be new)")
    clip.notes += _space_notes(info, shape, box) + _timing_notes(info, shape, config.frame_sampling, _source_fps(info))
    return clip


def ingest_videos(
    items: list[tuple[Path, str]],
    data_dir: Path,
    config: IngestConfig,
    defaults: ClipShape,
) -> tuple[list[IngestedClip], list[str]]:
    """Ingest several uploads; one bad upload never stops the others.

    Takes (video path, caption) pairs and the arguments of ingest_video. Returns (the clips written, in
    order; one error line per rejected upload, naming it and the fix). Raises IngestError when `data_dir`
    is not a folder.
    """
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise IngestError(f"{data_dir} is a file, not a dataset folder: give a folder (new or existing)")
    clips, errors = [], []
    for source, caption in items:
        try:
            clips.append(ingest_video(source, caption, data_dir, config, defaults))
        except IngestError as error:
            errors.append(str(error))
    return clips, errors
