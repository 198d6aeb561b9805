"""Video IO, in one place: probing, frame selection, decoding, cropping and writing, all through PyAV.

Frames are numpy uint8 arrays (F, H, W, 3) in RGB order, upright as a player shows them (the
container's rotation is applied). A frame's index is its position in the order the decoder outputs frames
(presentation order), starting at 0: the numbering the relation dataset's masks/NAME/frame<N>.png use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

SAMPLING_MODES = ("first", "uniform")

_CONVERT_HINT = "convert it with: ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4"


class VideoError(ValueError):
    """A video file that cannot be used; the message names the file and says how to fix it."""


@dataclass(frozen=True)
class VideoInfo:
    """What probe_video learned about a video; width and height are as displayed (rotation applied)."""

    path: Path
    num_frames: int
    fps: float
    width: int
    height: int


@contextmanager
def _open_video_stream(path: Path) -> Iterator[av.video.stream.VideoStream]:
    """Open `path` and yield its first video stream; any PyAV error, now or while decoding, becomes VideoError."""
    if not path.is_file():
        raise VideoError(f"{path}: video not found; check the path")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty (0 bytes); copy or export the video again")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise VideoError(f"{path}: not a readable video ({error.strerror}); {_CONVERT_HINT}") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream (audio only?); use a file that contains video")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            yield stream
        except av.FFmpegError as error:
            raise VideoError(f"{path}: decoding failed ({error.strerror}); {_CONVERT_HINT}") from None


def _decoded_frames(stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """Return an iterator over the stream's decoded frames, in presentation order."""
    return stream.container.decode(stream)


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that make `frame` upright (phones store portrait video sideways)."""
    return round(frame.rotation / 90)


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """Convert a decoded frame to an upright uint8 (H, W, 3) RGB array."""
    return np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), k=_quarter_turns(frame)))


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's frame count, frame rate and displayed size.

    Takes a path to any container FFmpeg reads (.mp4, .mov, .webm, ...). Returns a VideoInfo; fps is 0.0
    when the container gives no rate. Raises VideoError for a missing, empty or unreadable file, a file
    without a video stream, or one with no decodable frame.
    """
    path = Path(path)
    with _open_video_stream(path) as stream:
        frames = _decoded_frames(stream)
        # Decoding the first frame proves the stream is readable and gives its size and rotation.
        first = next(frames, None)
        if first is None:
            raise VideoError(f"{path}: has 0 frames; export the video again")
        # mp4/mov headers store the frame count; webm/mkv do not, so count those by decoding.
        num_frames = stream.frames if stream.frames > 0 else 1 + sum(1 for _ in frames)
        rate = stream.average_rate or stream.guessed_rate
    width, height = first.width, first.height
    if _quarter_turns(first) % 2:
        width, height = height, width
    return VideoInfo(path, num_frames, float(rate or 0), width, height)


def select_frame_indices(total_frames: int, num_frames: int, sampling: str = "first") -> list[int]:
    """Choose which source frames make a clip.

    Takes the video's frame count, the clip's frame count and a mode: "first" (frames 0..num_frames-1, at
    the source rate) or "uniform" (num_frames indices spread evenly over the whole video, first 0, last
    total_frames-1, rounded half up). Returns the increasing list of source frame indices. Raises
    ValueError for an unknown mode, num_frames < 1, or total_frames < num_frames.
    """
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"unknown frame sampling {sampling!r}; use one of {', '.join(SAMPLING_MODES)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if total_frames < num_frames:
        raise ValueError(f"video has {total_frames} frames, needs at least {num_frames}")
    if sampling == "first" or num_frames == 1:
        return list(range(num_frames))
    # Integer form of round(i * (total - 1) / (num - 1)), rounding halves up: exact, with no float error
    # and none of Python's round-half-to-even.
    span, steps = total_frames - 1, num_frames - 1
    return [(2 * i * span + steps) // (2 * steps) for i in range(num_frames)]


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """Decode the frames at the given source indices.

    Takes a video path and a non-empty list of frame indices (any order, repeats allowed). Decodes from
    the start, keeping the wanted frames, and stops after the last one. Returns uint8 (len(indices), H, W, 3)
    RGB, upright, in the order of `indices`. Raises VideoError when the video ends before an index.
    """
    path = Path(path)
    if not indices or min(indices) < 0:
        raise ValueError(f"indices must be a non-empty list of frame numbers >= 0, got {indices}")
    wanted, last = set(indices), max(indices)
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    with _open_video_stream(path) as stream:
        for frame in _decoded_frames(stream):
            if decoded in wanted:
                kept[decoded] = _to_rgb(frame)
            if decoded == last:
                break
            decoded += 1
    if last not in kept:
        raise VideoError(
            f"{path}: frame {last} was asked for but the video has only {decoded} frames; "
            "use fewer frames or a longer video"
        )
    return np.stack([kept[i] for i in indices])


def _crop_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """Return (top, left, crop_height, crop_width): the largest centred box with the target's aspect ratio."""
    if width * target_height > height * target_width:
        crop_width = max(1, round(height * target_width / target_height))
        return 0, (width - crop_width) // 2, height, crop_width
    crop_height = max(1, round(width * target_height / target_width))
    return (height - crop_height) // 2, 0, crop_height, width


def center_crop_resize(frames: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """Centre-crop frames to the target aspect ratio, then resize them to the target size.

    Takes uint8 (F, H, W, C) and the target height and width; every frame gets the same crop. Resizing is
    PIL bilinear (antialiased when shrinking), or nearest when `nearest` is set, so masks keep their exact
    colours. Returns uint8 (F, height, width, C).
    """
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, C), got {frames.dtype} {frames.shape}")
    top, left, crop_height, crop_width = _crop_box(frames.shape[1], frames.shape[2], height, width)
    cropped = frames[:, top : top + crop_height, left : left + crop_width]
    if (crop_height, crop_width) == (height, width):
        return np.ascontiguousarray(cropped)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    # One channel at a time, so any channel count works (PIL has no mode for, say, 2 channels).
    out = np.empty((frames.shape[0], height, width, frames.shape[3]), np.uint8)
    for f, c in np.ndindex(frames.shape[0], frames.shape[3]):
        out[f, :, :, c] = np.asarray(Image.fromarray(cropped[f, :, :, c]).resize((width, height), resample))
    return out


def load_clip(
    path: str | Path, num_frames: int, height: int, width: int, sampling: str = "first"
) -> tuple[np.ndarray, list[int]]:
    """Load a training clip from a video.

    Takes a video path, the clip's frame count and size, and the frame sampling mode (see
    select_frame_indices). Returns (uint8 (num_frames, height, width, 3) RGB frames, the source frame
    indices used), centre-cropped and resized. Raises VideoError when the video is unreadable or too short.
    """
    path = Path(path)
    info = probe_video(path)
    if info.num_frames < num_frames:
        raise VideoError(
            f"{path}: has {info.num_frames} frames, needs at least {num_frames}; "
            "use a longer video or fewer frames per clip (num_frames)"
        )
    indices = select_frame_indices(info.num_frames, num_frames, sampling)
    return center_crop_resize(read_frames(path, indices), height, width), indices


def write_video(path: str | Path, frames: np.ndarray, fps: int = 30) -> Path:
    """Write frames as an H.264 (yuv420p) mp4 that any player opens.

    Takes a path (parent folders are created), uint8 (F, H, W, 3) RGB frames with even H and W (a
    yuv420p requirement), and the frame rate. Returns the path. Raises ValueError for bad frames and
    VideoError when the file cannot be written.
    """
    path = Path(path)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be uint8 (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 needs an even height and width, got {height}x{width}; crop or resize the frames")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(path), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    except av.FFmpegError as error:
        raise VideoError(
            f"{path}: could not write the video ({error.strerror}); check the folder is writable"
        ) from None
    return path
