"""Video IO, in one place: probing, frame selection, decoding, cropping and writing, all through PyAV.

Any container and codec FFmpeg reads works (.mp4, .mov, .webm, .mkv, .avi, animated .gif, ...). Frames are
numpy uint8 arrays (F, H, W, 3) in RGB order, upright as a player shows them (the container's rotation is
applied). A frame's index is its position in the order the decoder outputs frames (presentation order),
starting at 0: the numbering the relation dataset's masks/NAME/frame<N>.png use. Timestamps are seconds
from the first frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
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
    """What probe_video learned about a video; width and height are as displayed (rotation applied).

    duration is in seconds (0.0 when unknown), rotation the counter-clockwise degrees applied to make frames
    upright, and timestamps each frame's presentation time in seconds from the first frame, in frame-index
    order (None only when the file's packets carry none and probe_video was not asked to decode for them).
    """

    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float = 0.0
    rotation: int = 0
    timestamps: tuple[float, ...] | None = None


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
        raise VideoError(
            f"{path}: not a readable video ({error.strerror}); upload it again if the copy was cut short, "
            f"else {_CONVERT_HINT}"
        ) from None
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


def _scan_packets(
    stream: av.video.stream.VideoStream,
) -> tuple[av.VideoFrame | None, list[tuple[int | None, int]], int]:
    """Read every packet of the stream, decoding only until its first frame comes out.

    Reading packets is far cheaper than decoding them, and each frame packet carries its frame's
    presentation stamp. Returns (the first decoded frame or None; [(pts or None, duration) in stream
    time_base ticks] for each packet that yields a frame; the number of packets stored in the file).
    """
    first, packets, stored = None, [], 0
    for packet in stream.container.demux(stream):
        # PyAV ends with an empty, unstamped packet that only flushes the decoder: it is not in the file.
        stored += bool(packet.size or packet.dts is not None)
        # Discarded packets (cut by an mp4 edit list) only prime the decoder, which outputs no frame for them.
        if packet.size and not packet.is_discard:
            packets.append((packet.pts, packet.duration or 0))
        if first is None:
            # The flush packet also releases a frame held back by B-frame reordering.
            first = next(iter(packet.decode()), None)
    return first, packets, stored


def _timestamps_from_packets(
    packets: list[tuple[int | None, int]], time_base: Fraction
) -> tuple[tuple[float, ...], float] | None:
    """Turn frame packets' (pts, duration) into (frame timestamps in seconds from the first, last frame's length).

    Packets come in decode order; sorting their stamps gives presentation order, the decoder's output order.
    Returns None when a packet has no stamp (e.g. AVI with B-frames), so the caller decodes instead.
    """
    if not packets or any(pts is None for pts, _ in packets):
        return None
    packets = sorted(packets)
    start = packets[0][0]
    times = tuple(float((pts - start) * time_base) for pts, _ in packets)
    return times, float(packets[-1][1] * time_base)


def _timestamps_by_decoding(path: Path, fps: float) -> tuple[float, ...]:
    """Decode every frame for its timestamp; frames without one get the container rate's spacing."""
    with _open_video_stream(path) as stream:
        raw = [frame.time for frame in _decoded_frames(stream)]
    if any(time is None for time in raw):
        return tuple(index / (fps or 30.0) for index in range(len(raw)))
    return tuple(time - raw[0] for time in raw)


def _clip_duration(times: tuple[float, ...], last_length: float, fps: float) -> float:
    """Seconds from the first frame's start to the last frame's end.

    The last frame lasts as its packet says; else as long as the typical (median) gap between frames;
    else 1/fps.
    """
    if last_length <= 0 and len(times) > 1:
        last_length = float(np.median(np.diff(times)))
    elif last_length <= 0 and fps:
        last_length = 1 / fps
    return times[-1] + last_length


def probe_video(path: str | Path, timestamps: bool = False) -> VideoInfo:
    """Read a video's frame count, frame rate, displayed size, rotation, duration and frame timestamps.

    Takes a path to any container FFmpeg reads (.mp4, .mov, .webm, .mkv, .avi, .gif, ...) and whether
    timestamps must be returned even when the packets carry none (rare, e.g. AVI with B-frames), which
    costs a full decode. Otherwise reads the packets and decodes only the first frame. Returns a VideoInfo:
    num_frames counts the frames the decoder will output; fps is the container's average rate (0.0 when it
    gives none); duration and timestamps come from the packets' stamps (timestamps None when they have
    none and a decode was not asked for; duration is then the header's). Raises VideoError for a missing,
    empty, unreadable or cut-short file, a file without a video stream, or one with no decodable frame.
    """
    path = Path(path)
    with _open_video_stream(path) as stream:
        first, packets, stored = _scan_packets(stream)
        # mp4/mov headers list every frame; fewer in the file means an interrupted copy or download.
        if stream.frames > stored:
            raise VideoError(
                f"{path}: is cut short (its header lists {stream.frames} frames, the file holds {stored}); "
                "copy or export the video again"
            )
        if first is None:
            raise VideoError(f"{path}: has 0 frames; export the video again")
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        from_packets = _timestamps_from_packets(packets, stream.time_base)
        header_duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        if not header_duration and stream.container.duration:
            header_duration = stream.container.duration / av.time_base
    width, height = first.width, first.height
    if _quarter_turns(first) % 2:
        width, height = height, width
    rotation = _quarter_turns(first) % 4 * 90
    if from_packets is None and timestamps:
        from_packets = _timestamps_by_decoding(path, fps), 0.0
    if from_packets is None:
        return VideoInfo(path, len(packets), fps, width, height, header_duration, rotation)
    times, last_length = from_packets
    return VideoInfo(path, len(times), fps, width, height, _clip_duration(times, last_length, fps), rotation, times)


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


def frame_indices_at_fps(
    timestamps: list[float] | tuple[float, ...], fps: float, num_frames: int, sampling: str = "first"
) -> list[int]:
    """Choose the source frames that make a clip at a target frame rate, by timestamp.

    Works for any source rate, variable ones included. Takes the source frames' timestamps in seconds
    (non-decreasing, in frame-index order), the target rate, the clip's frame count and a mode: "first"
    (the times 0, 1/fps, ... (num_frames-1)/fps from the first frame: the first num_frames/fps seconds at
    real speed) or "uniform" (num_frames times spread evenly from the first frame's time to the last's).
    Each target time takes the nearest frame, the earlier on a tie; times past the last frame take the last
    frame (the caller checks the video is long enough). Returns the non-decreasing list of source frame
    indices. Raises ValueError for an unknown mode, num_frames < 1, fps <= 0 or bad timestamps.
    """
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"unknown frame sampling {sampling!r}; use one of {', '.join(SAMPLING_MODES)}")
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"num_frames must be at least 1 and fps above 0, got {num_frames} and {fps}")
    times = np.asarray(timestamps, np.float64)
    if times.ndim != 1 or not len(times) or (np.diff(times) < 0).any():
        raise ValueError("timestamps must be a non-empty, non-decreasing list of seconds")
    if sampling == "first":
        targets = times[0] + np.arange(num_frames) / fps
    else:
        targets = np.linspace(times[0], times[-1], num_frames)
    after = np.minimum(np.searchsorted(times, targets), len(times) - 1)
    before = np.maximum(after - 1, 0)
    # The margin makes exact ties (up to float error) go to the earlier frame, the one a player is showing.
    later_is_nearer = times[after] - targets < targets - times[before] - 1e-9
    return np.where(later_is_nearer, after, before).tolist()


def read_frames(path: str | Path, indices: list[int], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode the frames at the given source indices.

    Takes a video path, a non-empty list of frame indices (any order, repeats allowed) and optionally a
    (height, width) to centre-crop and resize each frame to as it is decoded (see center_crop_resize), so
    memory holds clip-sized frames, not 4K ones. Decodes from the start, keeping the wanted frames, and
    stops after the last one. Returns uint8 (len(indices), H, W, 3) RGB (H, W = size when given), upright,
    in the order of `indices`. Raises VideoError when the video ends before an index.
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
                rgb = _to_rgb(frame)
                kept[decoded] = rgb if size is None else center_crop_resize(rgb[None], *size)[0]
            if decoded == last:
                break
            decoded += 1
    if last not in kept:
        raise VideoError(
            f"{path}: frame {last} was asked for but the video has only {decoded} frames; "
            "use fewer frames or a longer video"
        )
    return np.stack([kept[i] for i in indices])


def crop_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """Return (top, left, crop_height, crop_width): the largest centred box with the target's aspect ratio.

    This is the box center_crop_resize keeps of a height x width frame.
    """
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
    top, left, crop_height, crop_width = crop_box(frames.shape[1], frames.shape[2], height, width)
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
    path: str | Path, num_frames: int, height: int, width: int, sampling: str = "first",
    info: VideoInfo | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Load a training clip from a video.

    Takes a video path, the clip's frame count and size, the frame sampling mode (see select_frame_indices)
    and the video's probe_video result when the caller already has it. Returns (uint8 (num_frames, height,
    width, 3) RGB frames, the source frame indices used), centre-cropped and resized. Raises VideoError when
    the video is unreadable or too short.
    """
    path = Path(path)
    info = info or probe_video(path)
    if info.num_frames < num_frames:
        raise VideoError(
            f"{path}: has {info.num_frames} frames, needs at least {num_frames}; "
            "use a longer video or fewer frames per clip (num_frames)"
        )
    indices = select_frame_indices(info.num_frames, num_frames, sampling)
    return read_frames(path, indices, (height, width)), indices


def write_video(path: str | Path, frames: np.ndarray, fps: float = 30) -> Path:
    """Write frames as an H.264 (yuv420p) mp4 that any player opens.

    Takes a path (parent folders are created; the file is mp4 whatever its suffix), uint8 (F, H, W, 3) RGB
    frames with even H and W (a yuv420p requirement), and the frame rate (fractional ones such as 29.97
    too). Returns the path. Raises ValueError for bad frames and
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
            # The encoder takes a rational rate; 29.97 becomes 2997/100.
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    except av.FFmpegError as error:
        raise VideoError(
            f"{path}: could not write the video ({error.strerror}); check the folder is writable"
        ) from None
    return path
