"""Ingesting raw uploads into a relation dataset folder, and the timestamp resampling it relies on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from dreamrelation.config import IngestConfig
from dreamrelation.data.ingest import IngestError, check_caption, ingest_video, ingest_videos, safe_name
from dreamrelation.data.video import (
    VideoError,
    frame_indices_at_fps,
    probe_video,
    read_frames,
)
from dreamrelation.models.base import ClipShape

DEFAULTS = ClipShape(num_frames=61, height=480, width=848, fps=30)
# 13 frames at 10 fps: a source must last at least 1.3 s. 32x32 from 64x48 keeps the middle 48 columns.
CONFIG = IngestConfig(num_frames=13, height=32, width=32, fps=10)
CAPTION = "A cat is hugging a dog."
HEIGHT, WIDTH = 48, 64


def _level(index: int) -> int:
    """The grey level of source frame `index` (< 20), so a decoded frame tells which source frame it came from.

    Steps of 12 leave room for lossy codecs' error (MPEG-4 Part 2 is off by up to 4 on these clips).
    """
    return 8 + 12 * index


def _index_of(frame: np.ndarray) -> int:
    """Invert _level from a decoded (possibly lossy) frame."""
    return round((float(frame.mean()) - 8) / 12)


def _grey_frames(count: int) -> np.ndarray:
    """uint8 (count, 48, 64, 3) flat frames at _level(i)."""
    return np.stack([np.full((HEIGHT, WIDTH, 3), _level(i), np.uint8) for i in range(count)])


def _write(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "libx264", pts_ms: list[int] | None = None):
    """Encode frames with PyAV into path's container (from its suffix), at a constant rate or at pts_ms."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _write_gif(path: Path, frames: np.ndarray, frame_ms: int = 100) -> Path:
    """Write an animated GIF with PIL (exact colours for flat frames, unlike FFmpeg's 8-bit palette)."""
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path


def _ffmpeg(*args: str) -> None:
    """Run the ffmpeg binary that imageio-ffmpeg ships."""
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def _snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under root with (size, mtime) for files, None for folders: any write shows up as a change."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
        for path in root.rglob("*")
    }


@pytest.fixture()
def uploads(tmp_path) -> Path:
    """A folder of uploads beside the dataset folder, holding one good 2 s clip, good.mp4 (20 frames, 10 fps)."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    _write(folder / "good.mp4", _grey_frames(20))
    return folder


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    """A dataset folder that already holds one sample's caption."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "existing.txt").write_text("A person is hugging a person.\n")
    return folder


def _assert_clip_levels(video: Path, expected_indices: list[int]) -> None:
    """Check the ingested clip's frames are the expected source frames (by their grey level)."""
    frames = read_frames(video, list(range(len(expected_indices))))
    assert [_index_of(frame) for frame in frames] == expected_indices


# --- timestamp resampling ---------------------------------------------------------------------------------


def test_frame_indices_at_fps_first():
    thirty = [i / 30 for i in range(90)]
    assert frame_indices_at_fps(thirty, 30, 5) == [0, 1, 2, 3, 4]
    assert frame_indices_at_fps(thirty, 10, 4) == [0, 3, 6, 9]
    # 15 fps to 30 fps: each target between two frames is a tie, which goes to the earlier (shown) frame.
    assert frame_indices_at_fps([i / 15 for i in range(10)], 30, 6) == [0, 0, 1, 1, 2, 2]
    # 24 fps to 30 fps: nearest frame per 1/30 s step.
    assert frame_indices_at_fps([i / 24 for i in range(48)], 30, 6) == [0, 1, 2, 2, 3, 4]
    # Variable gaps: 0.1 is nearer 0.13 than 0.05; targets past the end take the last frame.
    assert frame_indices_at_fps([0.0, 0.05, 0.13, 0.31], 10, 6) == [0, 2, 2, 3, 3, 3]


def test_frame_indices_at_fps_uniform():
    times = [i / 10 for i in range(31)]
    assert frame_indices_at_fps(times, 10, 4, "uniform") == [0, 10, 20, 30]
    assert frame_indices_at_fps([0.0, 0.1, 0.35, 0.9, 1.0], 30, 3, "uniform") == [0, 2, 4]
    assert frame_indices_at_fps([0.0], 30, 3, "uniform") == [0, 0, 0]


def test_frame_indices_at_fps_errors():
    with pytest.raises(ValueError, match="unknown frame sampling 'random'"):
        frame_indices_at_fps([0.0, 0.1], 10, 2, "random")
    with pytest.raises(ValueError, match="non-decreasing"):
        frame_indices_at_fps([0.0, 0.2, 0.1], 10, 2)
    with pytest.raises(ValueError, match="fps above 0"):
        frame_indices_at_fps([0.0], 0, 2)


def test_probe_reports_duration_rotation_and_timestamps(uploads):
    info = probe_video(uploads / "good.mp4")
    assert (info.num_frames, info.fps, info.rotation) == (20, 10.0, 0)
    assert info.duration == pytest.approx(2.0)
    assert info.timestamps == pytest.approx([i / 10 for i in range(20)])


def test_probe_rejects_a_cut_short_mp4(tmp_path):
    # With the index at the front (faststart), a cut file still opens but lacks most frames.
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "40", "-movflags", "+faststart", str(whole))
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    with pytest.raises(VideoError, match=r"cut\.mp4: is cut short \(its header lists 40 frames, the file holds \d+\)"):
        probe_video(cut)


def test_probe_counts_only_frames_an_edit_list_keeps(tmp_path):
    # Trimming with -c copy keeps whole GOPs and marks the frames before the cut as discarded.
    whole, trimmed = tmp_path / "whole.mp4", tmp_path / "trimmed.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "40", str(whole))
    _ffmpeg("-ss", "1.35", "-i", str(whole), "-c", "copy", str(trimmed))
    info = probe_video(trimmed)
    assert info.num_frames == len(read_frames(trimmed, list(range(info.num_frames)))) < 40


# --- names and captions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("my clip (1).MP4", "my_clip_1"),
        ("Ünïcödé café.mov", "Unicode_cafe"),
        ("视频.mp4", "video"),
        ("../../etc/passwd.mp4", "passwd"),
        ("..\\..\\windows.avi", "windows"),
        ("..", "video"),
        ("", "video"),
        (".hidden.webm", "hidden"),
        ("-rf .mp4", "rf"),
        ("CON.mp4", "CON_"),
        ("a.b.c.mkv", "a_b_c"),
    ],
)
def test_safe_name(original, expected):
    assert safe_name(original, set()) == expected


def test_safe_name_is_unique_ignoring_case_and_short():
    assert safe_name("Clip.mp4", {"clip", "CLIP-2", "other"}) == "Clip-3"
    assert len(safe_name("x" * 300 + ".mp4", set())) == 80


def test_check_caption():
    assert check_caption("  A cat is\n hugging   a dog. ") == "A cat is hugging a dog."
    # Words are what whitespace separates: the 6 words of CAPTION fit 6, and a seventh is one too many.
    assert check_caption(CAPTION, max_words=6) == CAPTION
    with pytest.raises(IngestError, match="caption is 7 words long, over the limit of 6 .max_caption_words."):
        check_caption(CAPTION + " Twice.", max_words=6)


# --- the bad-input corpus ---------------------------------------------------------------------------------


def _truncated_mp4(folder: Path) -> Path:
    """An mp4 whose second half (with the index, written last) is missing."""
    data = (folder / "good.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return folder / "truncated.mp4"


def _text_file(folder: Path) -> Path:
    (folder / "notes.mp4").write_text("not a video\n" * 50)
    return folder / "notes.mp4"


def _zero_bytes(folder: Path) -> Path:
    (folder / "empty.mp4").touch()
    return folder / "empty.mp4"


def _one_frame(folder: Path) -> Path:
    return _write(folder / "single.mp4", _grey_frames(1))


def _too_short(folder: Path) -> Path:
    return _write(folder / "short.mp4", _grey_frames(10))


def _png_renamed(folder: Path) -> Path:
    Image.fromarray(_grey_frames(1)[0]).save(folder / "photo.png")
    return (folder / "photo.png").rename(folder / "photo.mp4")


def _audio_only(folder: Path) -> Path:
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "0.1", str(folder / "sound.m4a"))
    return (folder / "sound.m4a").rename(folder / "sound.mp4")


def _cut_short(folder: Path) -> Path:
    whole = folder / "whole.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "40", "-movflags", "+faststart", str(whole))
    (folder / "download.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    whole.unlink()
    return folder / "download.mp4"


def _good(folder: Path) -> Path:
    return folder / "good.mp4"


# (make the upload, caption, config changes, the expected message after "UPLOAD: ")
BAD_UPLOADS = {
    "truncated mp4": (_truncated_mp4, CAPTION, {}, r"not a readable video \(.*\); upload it again if the copy"),
    "cut-short mp4 (index first)": (_cut_short, CAPTION, {}, r"is cut short \(its header lists 40 frames"),
    "text renamed .mp4": (_text_file, CAPTION, {}, r"not a readable video .*ffmpeg -i INPUT"),
    "zero-byte file": (_zero_bytes, CAPTION, {}, r"file is empty \(0 bytes\); upload it again"),
    "missing file": (lambda folder: folder / "gone.mp4", CAPTION, {}, "file not found; check the path"),
    "1-frame video": (_one_frame, CAPTION, {}, r"video is a still image \(1 frame\); 13 frames at 10 fps need"),
    "too short": (
        _too_short, CAPTION, {},
        r"video is 1\.00 s long \(10 frames\); 13 frames at 10 fps need a clip at least 1\.30 s long; upload a longer",
    ),
    "PNG renamed .mp4": (_png_renamed, CAPTION, {}, r"video is a still image \(1 frame\)"),
    "audio only": (_audio_only, CAPTION, {}, r"has no video stream \(audio only\?\)"),
    "huge resolution": (
        _good, CAPTION, {"max_pixels": 1000},
        r"video is 64x48 \(3072 pixels\), over the limit of 1000 \(max_pixels\); downscale it",
    ),
    "too long": (
        _good, CAPTION, {"max_duration_s": 1.5},
        r"video is 2\.0 s long, over the limit of 1\.5 s \(max_duration_s\); trim it",
    ),
    "too large a file": (
        _good, CAPTION, {"max_file_mb": 0.001}, r"file is .* MB, over the limit of 0\.001 MB \(max_file_mb\); trim or",
    ),
    "empty caption": (_good, " \n\t", {}, r"caption is empty; write one sentence"),
    "over-long caption": (
        _good, "A cat " * 10, {"max_caption_words": 8}, r"caption is 20 words long, over the limit of 8 .*shorten it"
    ),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_rejected_and_writes_nothing(case, tmp_path, uploads, data_dir):
    make, caption, changes, message = BAD_UPLOADS[case]
    upload = make(uploads)
    before = _snapshot(tmp_path)
    with pytest.raises(IngestError) as caught:
        ingest_video(upload, caption, data_dir, CONFIG.model_copy(update=changes), DEFAULTS)
    text = str(caught.value)
    assert text.startswith(f"{upload.name}: ") and "\n" not in text
    assert re.search(message, text), text
    # Nothing written anywhere: not in the dataset, not beside it, and the upload untouched.
    assert _snapshot(tmp_path) == before


def test_one_bad_upload_does_not_stop_the_others(uploads, data_dir):
    items = [(uploads / "good.mp4", CAPTION), (_zero_bytes(uploads), CAPTION), (uploads / "good.mp4", "Two cats.")]
    clips, errors = ingest_videos(items, data_dir, CONFIG, DEFAULTS)
    assert [clip.name for clip in clips] == ["good", "good-2"]
    assert errors == ["empty.mp4: file is empty (0 bytes); upload it again"]
    assert (data_dir / "good-2.txt").read_text() == "Two cats.\n"


# --- good uploads -----------------------------------------------------------------------------------------


def test_ingest_writes_the_sample_and_metadata(tmp_path, uploads, data_dir):
    source = uploads / "good.mp4"
    original = source.read_bytes()
    clip = ingest_video(source, f"  {CAPTION}\n", data_dir, CONFIG, DEFAULTS)
    assert clip.name == "good"
    assert (clip.video, clip.caption_file) == (data_dir / "good.mp4", data_dir / "good.txt")
    assert (clip.preview, clip.metadata) == (data_dir / "previews" / "good.png", data_dir / "meta" / "good.json")
    assert clip.caption_file.read_text() == CAPTION + "\n"
    info = probe_video(clip.video)
    assert (info.num_frames, info.fps, info.width, info.height) == (13, 10.0, 32, 32)
    _assert_clip_levels(clip.video, list(range(13)))
    preview = np.asarray(Image.open(clip.preview))
    assert preview.shape == (32, 32, 3) and _index_of(preview) == 0
    assert json.loads(clip.metadata.read_text()) == {
        "source": "good.mp4",
        "source_fps": 10.0,
        "source_frames": 20,
        "source_size": [64, 48],
        "source_duration": 2.0,
        "rotation": 0,
        "fps": 10.0,
        "frames": 13,
        "size": [32, 32],
        "crop": [8, 0, 56, 48],
        "sampling": "first",
        "source_indices": list(range(13)),
    }
    assert clip.notes == [
        "kept the centre 48x48 of the 64x48 frame to fit 32x32",
        "kept the first 1.30 s of 2.00 s (frame_sampling 'first')",
    ]
    assert source.read_bytes() == original
    # Only the dataset folder changed, and it holds no staging leftovers.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "uploads"]
    assert sorted(p.name for p in data_dir.iterdir()) == ["existing.txt", "good.mp4", "good.txt", "meta", "previews"]


def test_model_defaults_fill_unset_settings(uploads, data_dir):
    defaults = ClipShape(num_frames=7, height=16, width=32, fps=5)
    clip = ingest_video(uploads / "good.mp4", CAPTION, data_dir, IngestConfig(), defaults)
    info = probe_video(clip.video)
    assert (info.num_frames, info.fps, info.width, info.height) == (7, 5.0, 32, 16)
    _assert_clip_levels(clip.video, [0, 2, 4, 6, 8, 10, 12])


def test_uniform_sampling_spans_the_whole_video(uploads, data_dir):
    config = CONFIG.model_copy(update={"frame_sampling": "uniform"})
    clip = ingest_video(uploads / "good.mp4", CAPTION, data_dir, config, DEFAULTS)
    indices = json.loads(clip.metadata.read_text())["source_indices"]
    assert indices[0] == 0 and indices[-1] == 19 and indices == sorted(indices)
    _assert_clip_levels(clip.video, indices)
    assert "frames spread over the whole 2.00 s: the clip plays at 1.6x speed" in clip.notes


@pytest.mark.parametrize("suffix", ["mov", "webm", "mkv", "avi", "gif"])
def test_other_containers(suffix, uploads, data_dir):
    frames = _grey_frames(20)
    if suffix == "gif":
        source = _write_gif(uploads / "clip.gif", frames)
    else:
        codec = {"mov": "libx264", "webm": "libvpx", "mkv": "ffv1", "avi": "mpeg4"}[suffix]
        source = _write(uploads / f"clip.{suffix}", frames, codec=codec)
    clip = ingest_video(source, CAPTION, data_dir, CONFIG, DEFAULTS)
    info = probe_video(clip.video)
    assert (clip.video.name, info.num_frames, info.width, info.height) == ("clip.mp4", 13, 32, 32)
    _assert_clip_levels(clip.video, list(range(13)))
    assert json.loads(clip.metadata.read_text())["source"] == f"clip.{suffix}"


def test_variable_frame_rate_is_resampled_by_timestamps(uploads, data_dir):
    # Irregular gaps, as phones record: a frame-count-based pick would take frames 0..6.
    pts_ms = [0, 40, 50, 130, 140, 300, 310, 320, 500, 690, 720, 900, 1000, 1100, 1200, 1300]
    source = _write(uploads / "phone.mkv", _grey_frames(len(pts_ms)), fps=100, pts_ms=pts_ms)
    config = CONFIG.model_copy(update={"num_frames": 7})
    clip = ingest_video(source, CAPTION, data_dir, config, DEFAULTS)
    # Nearest frame to 0, 0.1, ... 0.6 s: 0 | 130 | 140 | 300 | 320 | 500 | 690 ms.
    expected = [0, 3, 4, 5, 7, 8, 9]
    assert json.loads(clip.metadata.read_text())["source_indices"] == expected
    _assert_clip_levels(clip.video, expected)
    assert "variable frame rate: frames were picked by their timestamps" in clip.notes


def test_variable_frame_rate_gif(uploads, data_dir):
    # GIF frames carry their own delays: 200 ms then 50 ms frames.
    frames = _grey_frames(12)
    images = [Image.fromarray(frame) for frame in frames]
    delays = [200, 200, 200, 50, 50, 50, 50, 50, 50, 50, 200, 200]
    images[0].save(uploads / "anim.gif", save_all=True, append_images=images[1:], duration=delays, loop=0)
    clip = ingest_video(uploads / "anim.gif", CAPTION, data_dir, CONFIG, DEFAULTS)
    # Starts (s): 0, .2, .4, .6, .65, ..., .9, .95, 1.15; targets every 0.1 s up to 1.2, ties to the earlier.
    assert json.loads(clip.metadata.read_text())["source_indices"] == [0, 0, 1, 1, 2, 2, 3, 5, 7, 9, 10, 11, 11]


def test_rotated_phone_video_comes_out_upright(uploads, data_dir):
    frames = _grey_frames(20)
    frames[:, :24, :32] = 230  # a bright top-left corner shows which way is up
    stored = _write(uploads / "stored.mp4", frames)
    rotated = uploads / "portrait.mp4"
    _ffmpeg("-display_rotation", "90", "-i", str(stored), "-c", "copy", str(rotated))
    # Upright the video is 48 wide and 64 high: no crop or resize at that size.
    config = CONFIG.model_copy(update={"height": 64, "width": 48})
    clip = ingest_video(rotated, CAPTION, data_dir, config, DEFAULTS)
    meta = json.loads(clip.metadata.read_text())
    assert (meta["rotation"], meta["source_size"], meta["size"]) == (90, [48, 64], [48, 64])
    assert "turned upright (the file is stored rotated by 90 degrees)" in clip.notes
    # ffmpeg's own decoder applies the rotation: the clip's first frame must match it.
    raw = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(rotated), "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(64, 48, 3)
    ours = read_frames(clip.video, [0])[0]
    assert np.abs(ours.astype(int) - reference).mean() < 4


@pytest.mark.parametrize(
    ("file_name", "name", "expected"),
    [
        ("my holiday clip (1).mp4", None, "my_holiday_clip_1"),
        ("Überraschung 🎉.mov", None, "Uberraschung"),
        ("good.mp4", "../../escape", "escape"),
        ("good.mp4", "..\\..\\evil", "evil"),
    ],
)
def test_odd_names_land_inside_the_dataset(file_name, name, expected, tmp_path, uploads, data_dir):
    source = uploads / file_name
    if not source.exists():
        shutil.copy(uploads / "good.mp4", source)
    outside = {path: stamp for path, stamp in _snapshot(tmp_path).items() if not path.startswith("data")}
    clip = ingest_video(source, CAPTION, data_dir, CONFIG, DEFAULTS, name=name)
    assert clip.name == expected and clip.notes[0].startswith(f"saved as '{expected}'")
    for path in (clip.video, clip.caption_file, clip.preview, clip.metadata):
        assert path.is_file() and path.resolve().is_relative_to(data_dir.resolve())
    assert {path: stamp for path, stamp in _snapshot(tmp_path).items() if not path.startswith("data")} == outside


def test_name_collisions_get_a_suffix(uploads, data_dir):
    (data_dir / "masks" / "good").mkdir(parents=True)  # a leftover mask folder also claims the name
    first = ingest_video(uploads / "good.mp4", CAPTION, data_dir, CONFIG, DEFAULTS)
    second = ingest_video(uploads / "good.mp4", CAPTION, data_dir, CONFIG, DEFAULTS, name="GOOD-2")
    assert (first.name, second.name) == ("good-2", "GOOD-2-2")
    assert first.notes[0].startswith("saved as 'good-2'")
    assert first.video == data_dir / "good-2.mp4" and second.video == data_dir / "GOOD-2-2.mp4"


def test_write_failure_leaves_nothing(uploads, data_dir, monkeypatch):
    import dreamrelation.data.ingest as ingest

    real_replace, calls = ingest.os.replace, []

    def replace_then_fail(source, destination):
        # The third rename (the caption) fails: the preview and metadata already moved must be removed.
        calls.append(destination)
        if len(calls) == 3:
            raise OSError("No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(ingest.os, "replace", replace_then_fail)
    files_before = [path for path in data_dir.rglob("*") if path.is_file()]
    with pytest.raises(IngestError, match=r"good\.mp4: could not write to .*No space left on device.*writable"):
        ingest_video(uploads / "good.mp4", CAPTION, data_dir, CONFIG, DEFAULTS)
    assert len(calls) == 3
    # The previews/ and meta/ folders may now exist, but no file of the sample does, nor the staging folder.
    assert [path for path in data_dir.rglob("*") if path.is_file()] == files_before
    assert not list(data_dir.glob(".ingest-*"))
