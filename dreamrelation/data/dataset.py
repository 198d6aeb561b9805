"""The relation dataset folder: videos, captions and two-subject masks.

Layout: `NAME.mp4|.mov|.webm` videos, `NAME.txt` captions, and `masks/NAME/frame<N>.png` masks (or
`MASKS_DIR/NAME/frame<N>.png`, the reference implementation's layout). A mask PNG is RGB with a black
background and one flat colour per subject; N is the source video frame it belongs to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dreamrelation.data.video import center_crop_resize
from dreamrelation.masks.subjects import SubjectError, subject_phrases

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm")
# A relation is motion between two subjects: a still image (one frame) shows none. Uploads and videos to mask
# need at least this many frames (training clips take the model's num_frames on top).
MIN_RELATION_FRAMES = 2

# A pixel is foreground when any channel is above this: masks exported from editors or lossy formats are
# rarely pure black.
_FOREGROUND_THRESHOLD = 32
# Colours closer than this (Euclidean, RGB) are the same subject: tolerates compression noise.
_COLOUR_TOLERANCE = 40
_ASPECT_TOLERANCE = 0.05  # relative: a side rounded when downscaling (1920x1080 masks at 64x35) stays inside
# Colour groups smaller than this share of the foreground are noise (stray or antialiased pixels).
_MIN_GROUP_SHARE = 0.005

_MASK_NAME = re.compile(r"frame(\d+)\.png", re.IGNORECASE)
_SUBJECTS_JSON_FORMAT = '{"colors": [[r, g, b], [r, g, b]]}'
_MASK_HELP = "masks need two flat colours, one per subject, on a black background"


class DatasetError(ValueError):
    """A relation dataset with problems; the message lists each, one per line, naming the file."""


@dataclass(frozen=True)
class RelationSample:
    """One training video: its name (the file stem), video file, caption and mask folder (None for a clip that
    trains without masks: a prior-preservation clip)."""

    name: str
    video: Path
    caption: str
    mask_dir: Path | None


def _raise_problems(data_dir: Path, problems: list[str]) -> None:
    """Raise one DatasetError listing every problem on one line, if there are any."""
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) in dataset {data_dir}: " + " | ".join(problems))


def _read_caption(path: Path, where: str | None = None) -> tuple[str, str | None]:
    """Return (caption, problem): the stripped text of a caption file, or a problem line saying what is wrong
    (naming the file as `where`, default its path)."""
    example = "write one sentence such as 'A person is shaking hands with a person.'"
    where = where or str(path)
    if not path.is_file():
        return "", f"{where}: missing caption; {example}"
    try:
        caption = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        return "", f"{where}: caption is not UTF-8 text; save it as UTF-8"
    return caption, None if caption else f"{where}: caption is empty; {example}"


def _named_subjects(mask_dir: Path) -> bool:
    """Whether the masks were made for two subjects named when they were made (masks/NAME/masks.json, which
    make_masks writes: from the caption, or from the user's --subjects for a caption the heuristic cannot read)."""
    try:
        subjects = json.loads((mask_dir / "masks.json").read_text(encoding="utf-8")).get("subjects")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(subjects, list) and len(subjects) == 2 and all(isinstance(s, str) and s.strip() for s in subjects)


def _subjects_problem(where: str, caption: str, mask_dir: Path) -> str | None:
    """A problem line when the caption does not name two subjects, by the masks stage's own reading of it
    (masks.subjects.subject_phrases), unless the sample's masks were made for two named subjects; else None."""
    try:
        subject_phrases(caption)
    except SubjectError as error:
        if _named_subjects(mask_dir):
            return None
        return f"{where}: {error.problem}; name both subjects in it, e.g. 'A dog is chasing a cat.'"
    return None


def _mask_folder_problem(mask_dir: Path) -> str | None:
    """Return a problem line if `mask_dir` is not a folder holding at least one frame<N>.png, else None."""
    try:
        found = mask_frame_paths(mask_dir)
    except DatasetError as error:
        return str(error)
    return None if found else f"{mask_dir}: no frame<N>.png masks; add one per video frame ({_MASK_HELP})"


def scan_dataset(data_dir: str | Path, masks_dir: str | Path | None = None, *, with_masks: bool = True
                 ) -> list[RelationSample]:
    """Find and check every sample of a relation dataset folder.

    Takes the dataset folder and, optionally, the folder holding NAME/frame<N>.png masks (default
    DATA_DIR/masks). Returns the samples sorted by name. Checks that each video has a NAME.txt caption naming
    two subjects (see check_captions) and a mask folder with at least one frame<N>.png, collecting every
    problem before raising a single DatasetError that lists them all. With `with_masks` False (a folder of
    prior-preservation clips, which train without masks) only the videos and their captions are checked.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: dataset folder not found; check the path")
    masks_root = Path(masks_dir) if masks_dir is not None else data_dir / "masks"
    videos = sorted(
        (p for p in data_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
        key=lambda video: (video.stem, video.name),
    )
    if not videos:
        raise DatasetError(f"{data_dir}: no videos found; add NAME{'|'.join(VIDEO_EXTENSIONS)} files")
    problems = []
    if with_masks and not masks_root.is_dir():
        problems.append(f"{masks_root}: masks folder not found; add NAME/frame<N>.png masks for each video")
    samples, seen = [], {}
    for video in videos:
        name = video.stem
        if name in seen:
            problems.append(f"{video}: same name as {seen[name].name}; keep one video per name")
            continue
        seen[name] = video
        caption, problem = _read_caption(data_dir / f"{name}.txt")
        if not with_masks:
            problems.append(problem)
            samples.append(RelationSample(name, video, caption, None))
            continue
        mask_dir = masks_root / name
        problems.append(problem or _subjects_problem(str(data_dir / f"{name}.txt"), caption, mask_dir))
        if masks_root.is_dir():
            problems.append(_mask_folder_problem(mask_dir))
        samples.append(RelationSample(name, video, caption, mask_dir))
    _raise_problems(data_dir, [p for p in problems if p])
    return samples


def check_captions(data_dir: str | Path, masks_dir: str | Path | None = None) -> None:
    """Check the captions of the videos a run trains on (those with a mask folder) before anything loads.

    Takes the dataset folder and its masks folder (default DATA_DIR/masks). Each caption must be UTF-8 text
    naming two subjects as the masks stage reads them (masks.subjects.subject_phrases: 'A dog is chasing a
    cat.'); a caption it cannot read passes when the sample's masks were made for two subjects the user named
    (`masks --subjects`, recorded in masks/NAME/masks.json). Videos without masks are left to scan_dataset
    (the app leaves them out of training). Raises one DatasetError listing every problem, files named
    relative to the dataset folder; reads no video or mask.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir.name}: dataset folder not found; check the path")
    masks_root = Path(masks_dir) if masks_dir is not None else data_dir / "masks"
    problems = []
    for video in sorted(p for p in data_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS):
        caption_file, mask_dir = data_dir / f"{video.stem}.txt", masks_root / video.stem
        if not mask_dir.is_dir() or not caption_file.is_file():
            continue
        caption, problem = _read_caption(caption_file, caption_file.name)
        problems.append(problem or _subjects_problem(caption_file.name, caption, mask_dir))
    problems = [p for p in problems if p]
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) in dataset {data_dir.name}: " + " | ".join(problems))


def mask_frame_paths(mask_dir: str | Path) -> dict[int, Path]:
    """Map source frame numbers to mask files.

    Takes a mask folder. Returns {N: path} for each frame<N>.png (padded or not, any case), in numeric
    order. Raises DatasetError when the folder is missing or two files name the same frame.
    """
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise DatasetError(f"{mask_dir}: mask folder not found; add frame<N>.png masks there")
    found: dict[int, Path] = {}
    for path in sorted(mask_dir.iterdir()):
        match = _MASK_NAME.fullmatch(path.name)
        if not match:
            continue
        index = int(match.group(1))
        if index in found:
            raise DatasetError(f"{path}: same frame {index} as {found[index].name}; keep one of the two")
        found[index] = path
    return dict(sorted(found.items()))


def _read_mask_png(path: Path) -> np.ndarray:
    """Read a mask PNG as uint8 (H, W, 3) RGB, whatever its stored mode; DatasetError if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable PNG ({error}); export the mask again") from None


def _check_mask_aspect(mask_dir: Path, mask_size: tuple[int, int], video_size: tuple[int, int]) -> None:
    """DatasetError unless masks of (H, W) `mask_size` cover the same picture as frames of `video_size`.

    Masks of another size but the video's aspect are rescaled with the frames; any other size would put the
    masks on the wrong pixels after the centre crop."""
    (mask_h, mask_w), (video_h, video_w) = mask_size, video_size
    if abs(mask_w * video_h - video_w * mask_h) > _ASPECT_TOLERANCE * video_w * mask_h:
        raise DatasetError(
            f"{mask_dir}: masks are {mask_w}x{mask_h} but the video is {video_w}x{video_h}; "
            f"export the masks at the video's size ({video_w}x{video_h}) or aspect"
        )


def _load_mask_frames(
    mask_dir: Path, indices: list[int], height: int, width: int, video_size: tuple[int, int] | None
) -> np.ndarray:
    """Read the given source frames' masks, centre-cropped and resized (nearest) to uint8 (F, height, width, 3).

    Resizing each frame as it is read keeps memory at the clip's size, not the source's. Raises
    DatasetError for a missing or unreadable mask, masks of different sizes, or masks whose aspect differs
    from the video's (H, W) `video_size` when given.
    """
    paths = mask_frame_paths(mask_dir)
    missing = [i for i in indices if i not in paths]
    if missing:
        raise DatasetError(
            f"{mask_dir / f'frame{missing[0]}.png'}: missing mask for video frame {missing[0]} "
            f"({len(missing)} of the {len(indices)} frames used are missing); add a mask for every frame used"
        )
    frames, sizes = [], set()
    for index in indices:
        frame = _read_mask_png(paths[index])
        sizes.add(frame.shape[:2])
        frames.append(center_crop_resize(frame[None], height, width, nearest=True)[0])
    if len(sizes) > 1:
        raise DatasetError(f"{mask_dir}: mask frames differ in size {sorted(sizes)}; export them all at one size")
    if video_size is not None:
        _check_mask_aspect(mask_dir, sizes.pop(), video_size)
    return np.stack(frames)


def _pack(colours: np.ndarray) -> np.ndarray:
    """Pack uint8 (..., 3) RGB colours into int32 (...) keys, so colours can be counted with 1-D np.unique."""
    colours = colours.astype(np.int32)
    return colours[..., 0] << 16 | colours[..., 1] << 8 | colours[..., 2]


def _unpack(keys: np.ndarray) -> np.ndarray:
    """Invert _pack: int (...) keys -> int64 (..., 3) RGB colours."""
    keys = keys.astype(np.int64)
    return np.stack([keys >> 16 & 255, keys >> 8 & 255, keys & 255], axis=-1)


def _group_colours(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group near-identical colours into subjects.

    Takes the distinct foreground colour keys (int, (U,)) and their pixel counts ((U,)). Greedily seeds a
    group at the most common ungrouped colour and adds every ungrouped colour within the tolerance, then
    drops groups under the minimum share. Returns (seeds: int64 (G, 3) RGB of the kept groups, most common
    first; labels: int (U,) each colour's kept group number 1..G, or 0 for noise).
    """
    colours = _unpack(keys)
    group = np.full(len(keys), -1)
    seeds = []
    for candidate in np.lexsort((keys, -counts)):
        if group[candidate] >= 0:
            continue
        near = (group < 0) & (np.linalg.norm(colours - colours[candidate], axis=1) <= _COLOUR_TOLERANCE)
        group[near] = len(seeds)
        seeds.append(candidate)
    sizes = np.bincount(group, weights=counts, minlength=len(seeds))
    kept = np.flatnonzero(sizes >= _MIN_GROUP_SHARE * counts.sum())
    labels = np.zeros(len(seeds), np.int64)
    labels[kept] = np.arange(1, len(kept) + 1)
    return colours[np.asarray(seeds, np.int64)[kept]], labels[group]


def _describe(colours: np.ndarray) -> str:
    """Format RGB colours for a message: '(255, 0, 0), (0, 255, 0)', the first six and how many more."""
    shown = ", ".join(str(tuple(int(v) for v in colour)) for colour in colours[:6])
    return shown + (f" and {len(colours) - 6} more" if len(colours) > 6 else "")


def _json_order(path: Path, seeds: np.ndarray) -> list[int]:
    """Return the subject order that subjects.json gives, as indices into `seeds`; DatasetError if it does not fit."""
    try:
        colours = np.asarray(json.loads(path.read_text(encoding="utf-8"))["colors"], np.int64)
        if colours.shape != (2, 3):
            raise ValueError(f"'colors' has shape {colours.shape}, not two [r, g, b] lists")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path}: unreadable ({error!r}); write it as {_SUBJECTS_JSON_FORMAT}") from None
    distances = np.linalg.norm(colours[:, None] - seeds[None], axis=2)
    order = distances.argmin(axis=1).tolist()
    if sorted(order) != [0, 1] or distances.min(axis=1).max() > _COLOUR_TOLERANCE:
        raise DatasetError(
            f"{path}: colours {_describe(colours)} do not match the masks' colours {_describe(seeds)}; "
            "fix subjects.json"
        )
    return order


def _left_to_right_order(labels: np.ndarray) -> list[int]:
    """Order two subjects by the x of their centroids in the first frame holding both (else over all frames).

    Takes int (F, H, W) labels (0 background, 1 and 2 the subjects). Returns [0, 1] or [1, 0]: subject
    numbers minus one, leftmost first.
    """
    columns = np.arange(labels.shape[2])
    counts = np.stack([(labels == k).sum(axis=(1, 2)) for k in (1, 2)], axis=1)
    x_sums = np.stack([((labels == k).sum(axis=1) * columns).sum(axis=1) for k in (1, 2)], axis=1)
    both = np.flatnonzero(counts.all(axis=1))
    # Subjects that never share a frame still get a stable order from their overall positions.
    counts, x_sums = (counts[both[0]], x_sums[both[0]]) if len(both) else (counts.sum(0), x_sums.sum(0))
    return np.argsort(x_sums / counts, kind="stable").tolist()


def load_subject_masks(
    mask_dir: str | Path, indices: list[int], height: int, width: int, video_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Load the two subjects' masks for a clip.

    Takes the sample's mask folder, the clip's SOURCE frame indices (from load_clip), the clip size and,
    to check that the masks fit the video, the video's own (H, W). Masks get the same centre-crop and resize
    as the video (nearest, so colours stay exact); masks of another aspect than the video are refused. Pixels with a
    channel above 32 are foreground; colours within ~40 of each other are one subject, and colour groups
    under 0.5% of the foreground are ignored. Subject 1 is the first colour of mask_dir/subjects.json
    ({"colors": [[r, g, b], [r, g, b]]}) when that file exists, else the leftmost subject in the first
    frame where both appear. Returns float32 (2, F, height, width) in {0, 1}. Raises DatasetError for a
    missing mask frame, or unless exactly two subject colours are found.
    """
    mask_dir = Path(mask_dir)
    frames = _load_mask_frames(mask_dir, indices, height, width, video_size)
    keys = _pack(frames)
    foreground = frames.max(axis=-1) > _FOREGROUND_THRESHOLD
    colour_keys, inverse, counts = np.unique(keys[foreground], return_inverse=True, return_counts=True)
    seeds, colour_labels = _group_colours(colour_keys, counts)
    if len(seeds) != 2:
        noun = "colour" if len(seeds) == 1 else "colours"
        raise DatasetError(f"{mask_dir}: found {len(seeds)} subject {noun} ({_describe(seeds)}); {_MASK_HELP}")
    labels = np.zeros(keys.shape, np.int64)
    labels[foreground] = colour_labels[inverse]
    subjects_json = mask_dir / "subjects.json"
    order = _json_order(subjects_json, seeds) if subjects_json.is_file() else _left_to_right_order(labels)
    return np.stack([labels == k + 1 for k in order]).astype(np.float32)


def write_subject_masks(
    mask_dir: str | Path,
    masks: np.ndarray,
    first_index: int = 0,
    colors: tuple[tuple[int, int, int], tuple[int, int, int]] = ((255, 0, 0), (0, 255, 0)),
) -> None:
    """Write two subjects' masks as a mask folder that load_subject_masks reads back.

    Takes the folder (created if needed), bool or 0/1 masks (2, F, H, W), the source frame index of the
    first mask, and one RGB colour per subject. Writes frame%05d.png for frames first_index.. (RGB, black
    background; where the subjects overlap, subject 2's colour) and subjects.json recording the colour
    order. Raises ValueError for masks of the wrong shape or colours that the reader cannot tell apart.
    """
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 4 or masks.shape[0] != 2:
        raise ValueError(f"masks must be (2, F, H, W), got shape {masks.shape}")
    palette = np.asarray(colors, np.uint8)
    if palette.shape != (2, 3) or palette.max(axis=1).min() <= _FOREGROUND_THRESHOLD:
        raise ValueError(f"colors must be two RGB colours with a channel above {_FOREGROUND_THRESHOLD}, got {colors}")
    if np.linalg.norm(palette[0].astype(np.int64) - palette[1]) <= _COLOUR_TOLERANCE:
        raise ValueError(f"colors {colors} are too close to tell apart; pick colours further than {_COLOUR_TOLERANCE}")
    mask_dir = Path(mask_dir)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for offset in range(masks.shape[1]):
        image = np.zeros((*masks.shape[2:], 3), np.uint8)
        for subject in (0, 1):
            image[masks[subject, offset]] = palette[subject]
        Image.fromarray(image).save(mask_dir / f"frame{first_index + offset:05d}.png")
    (mask_dir / "subjects.json").write_text(json.dumps({"colors": palette.tolist()}) + "\n", encoding="utf-8")
