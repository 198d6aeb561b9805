"""Video IO: probing, frame selection, decoding, cropping and writing."""

from __future__ import annotations

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from dreamrelation.data.video import (
    VideoError,
    center_crop_resize,
    load_clip,
    probe_video,
    read_frames,
    select_frame_indices,
    write_video,
)

RED = (220, 20, 20)


def _gray_level(index: int) -> int:
    """The left half's brightness in frame `index` of the test video, so a decoded frame shows its index."""
    return 20 + 15 * index


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 13-frame 32x48 mp4 at 30 fps: left half gray (brighter each frame), right half red."""
    frames = np.zeros((13, 32, 48, 3), np.uint8)
    for index in range(13):
        frames[index, :, :24] = _gray_level(index)
        frames[index, :, 24:] = RED
    return write_video(tmp_path_factory.mktemp("video") / "nested" / "dir" / "clip.mp4", frames)


def _ffmpeg(*args: str) -> None:
    """Run the ffmpeg binary that imageio-ffmpeg ships, as an independent reference."""
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def test_write_then_probe(video):
    info = probe_video(video)
    assert video.is_file() and video.parent.name == "dir"
    assert (info.path, info.num_frames, info.fps, info.width, info.height) == (video, 13, 30.0, 48, 32)


def test_read_frames_returns_the_asked_indices_in_order(video):
    frames = read_frames(video, [12, 0, 5, 5])
    assert frames.shape == (4, 32, 48, 3) and frames.dtype == np.uint8
    # mp4 is lossy: compare region means, away from the colour edge that chroma subsampling blurs.
    for frame, index in zip(frames, [12, 0, 5, 5]):
        assert np.abs(frame[:, :20].mean(axis=(0, 1)) - _gray_level(index)).max() < 4
        assert np.abs(frame[:, 28:].mean(axis=(0, 1)) - RED).max() < 8


def test_load_clip_uniform_crops_the_middle(video):
    clip, indices = load_clip(video, 7, 16, 16, sampling="uniform")
    assert indices == [0, 2, 4, 6, 8, 10, 12]
    assert clip.shape == (7, 16, 16, 3) and clip.dtype == np.uint8
    # The 48-wide frame is cropped to its middle 32 columns: 16 gray then 16 red, halved by the resize.
    for frame, index in zip(clip, indices):
        assert np.abs(frame[:, :6].mean(axis=(0, 1)) - _gray_level(index)).max() < 4
        assert np.abs(frame[:, 10:].mean(axis=(0, 1)) - RED).max() < 8


def test_load_clip_first_frames(video):
    clip, indices = load_clip(video, 3, 32, 48)
    assert indices == [0, 1, 2] and clip.shape == (3, 32, 48, 3)


def test_webm_frame_count_comes_from_decoding(video, tmp_path):
    # WebM headers carry no frame count, unlike mp4.
    webm = tmp_path / "clip.webm"
    _ffmpeg("-i", str(video), "-c:v", "libvpx", "-b:v", "1M", str(webm))
    info = probe_video(webm)
    assert (info.num_frames, info.width, info.height) == (13, 48, 32)


def test_rotated_video_is_read_upright(video, tmp_path):
    rotated = tmp_path / "rotated.mp4"
    _ffmpeg("-display_rotation", "90", "-i", str(video), "-c", "copy", str(rotated))
    info = probe_video(rotated)
    assert (info.width, info.height) == (32, 48)
    ours = read_frames(rotated, [0])[0]
    # ffmpeg's own decoder applies the rotation (autorotate): our frame must match it.
    raw = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(rotated), "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(48, 32, 3)
    assert np.abs(ours.astype(int) - reference).mean() < 3


def test_select_first():
    assert select_frame_indices(10, 4) == [0, 1, 2, 3]
    assert select_frame_indices(4, 4, "first") == [0, 1, 2, 3]


def test_select_uniform():
    assert select_frame_indices(13, 7, "uniform") == [0, 2, 4, 6, 8, 10, 12]
    assert select_frame_indices(10, 4, "uniform") == [0, 3, 6, 9]
    # Steps of 10/3: 3.33 -> 3, 6.67 -> 7.
    assert select_frame_indices(11, 4, "uniform") == [0, 3, 7, 10]
    # A step of 2.5 rounds half up (Python's round would give 2).
    assert select_frame_indices(6, 3, "uniform") == [0, 3, 5]
    assert select_frame_indices(5, 5, "uniform") == [0, 1, 2, 3, 4]
    assert select_frame_indices(9, 1, "uniform") == [0]


def test_select_errors():
    with pytest.raises(ValueError, match="video has 5 frames, needs at least 13"):
        select_frame_indices(5, 13, "uniform")
    with pytest.raises(ValueError, match="unknown frame sampling 'random'"):
        select_frame_indices(20, 13, "random")


def test_center_crop_keeps_the_middle_columns():
    frames = np.stack([np.tile(np.arange(8, dtype=np.uint8) * 10, (4, 1)), np.full((4, 8), 7, np.uint8)])[..., None]
    out = center_crop_resize(np.repeat(frames, 3, axis=3), 4, 4)
    assert out.shape == (2, 4, 4, 3) and out.dtype == np.uint8
    assert (out[0, :, :, 0] == [20, 30, 40, 50]).all()
    assert (out[1] == 7).all()


def test_center_crop_keeps_the_middle_rows():
    frame = np.repeat(np.arange(8, dtype=np.uint8)[:, None], 4, axis=1)[None, ..., None]
    out = center_crop_resize(frame, 4, 4)
    assert (out[0, :, :, 0] == np.array([2, 3, 4, 5])[:, None]).all()


def test_resize_nearest_and_bilinear():
    frame = np.array([[10, 20], [30, 40]], np.uint8)[None, ..., None]
    nearest = center_crop_resize(frame, 4, 4, nearest=True)
    assert (nearest[0, :, :, 0] == np.kron(frame[0, :, :, 0], np.ones((2, 2), np.uint8))).all()
    smooth = center_crop_resize(frame, 4, 4)[0, :, :, 0]
    # Bilinear blends neighbours: values between the extremes that are not just the four inputs.
    assert smooth.min() >= 10 and smooth.max() <= 40 and len(np.unique(smooth)) > 4
    assert center_crop_resize(np.zeros((3, 12, 20, 2), np.uint8), 4, 8).shape == (3, 4, 8, 2)


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match=r"missing\.mp4: video not found"):
        probe_video(tmp_path / "missing.mp4")


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(VideoError, match=r"empty\.mp4: file is empty \(0 bytes\)"):
        load_clip(empty, 1, 16, 16)


def test_text_file_named_mp4(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n" * 20)
    with pytest.raises(VideoError, match=r"notes\.mp4: not a readable video .*ffmpeg -i INPUT") as caught:
        read_frames(fake, [0])
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_audio_only_file(tmp_path):
    audio = tmp_path / "sound.m4a"
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "0.1", str(audio))
    with pytest.raises(VideoError, match=r"sound\.m4a: has no video stream"):
        probe_video(audio)


def test_too_few_frames(video):
    with pytest.raises(VideoError, match=r"clip\.mp4: has 13 frames, needs at least 25; use a longer video"):
        load_clip(video, 25, 16, 16)
    with pytest.raises(VideoError, match=r"clip\.mp4: frame 20 was asked for but the video has only 13 frames"):
        read_frames(video, [0, 20])


def test_write_video_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even height and width, got 15x16"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"uint8 \(F, H, W, 3\)"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 16, 16, 3), np.float32))
