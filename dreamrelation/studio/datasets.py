"""Relation datasets of the app: uploads ingested and masked, bundled examples, mask corrections.

Each dataset folder is a relation dataset the trainer reads (NAME.mp4, NAME.txt, masks/NAME/) plus
`dataset.json`, the report the app shows (per video: caption, overlay, subjects, engine, flags, error) and
`corrections.json`, the clicks a user made per video (kept so that a second correction keeps the first).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dreamrelation.config import ASSETS_ENV, EXAMPLES_DIR, IngestConfig, MasksConfig
from dreamrelation.data.dataset import DatasetError, load_subject_masks, scan_dataset
from dreamrelation.data.video import probe_video, read_frames, write_video
from dreamrelation.masks.pipeline import Progress, make_masks, overlay_frames
from dreamrelation.masks.prompts import SubjectPrompt
from dreamrelation.masks.subjects import SubjectError, parse_subjects_override
from dreamrelation.models.base import ClipShape
from dreamrelation.studio.workspace import StudioError, Workspace

MAX_VIDEOS = 30
REPORT_FILE = "dataset.json"
CORRECTIONS_FILE = "corrections.json"


@dataclass
class VideoReport:
    """One video of a dataset as the app shows it; paths are absolute, None when absent."""

    name: str
    caption: str
    video: Path
    overlay: Path | None
    subjects: list[str] | None
    engine: str | None
    notice: str | None
    flags: list[str]
    error: str | None


@dataclass
class DatasetReport:
    """A dataset as the app shows it: its videos, the uploads rejected (one line each) and whether it can train."""

    dataset_id: str
    relation: str
    videos: list[VideoReport]
    rejected: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """True when at least one video has masks (the trainer skips nothing: videos without masks are removed)."""
        return any(video.error is None for video in self.videos)

    def to_dict(self) -> dict:
        """JSON-ready: paths as strings, plus `ready`."""
        record = dataclasses.asdict(self)
        for video in record["videos"]:
            for key in ("video", "overlay"):
                video[key] = str(video[key]) if video[key] is not None else None
        return {**record, "ready": self.ready}


def split_captions(captions: str | list[str], count: int) -> list[str]:
    """Captions for `count` videos: a list, or text with one caption per line; a single caption serves all.

    Raises StudioError when the number of captions is neither 1 nor `count`.
    """
    lines = captions if isinstance(captions, list) else captions.splitlines()
    lines = [line.strip() for line in lines if line.strip()]
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise StudioError(
            f"{len(lines)} captions for {count} videos: give one caption per video (one per line) or one for all"
        )
    return lines


def _relation_name(relation: str) -> str:
    relation = " ".join(relation.split())
    if not relation:
        raise StudioError("name the relation, e.g. 'shaking hands' or 'orbits'")
    if len(relation) > 60:
        raise StudioError("the relation's name is too long: keep it under 60 characters")
    return relation


def _subjects(subjects: str | None) -> tuple[str, str] | None:
    if not subjects or not subjects.strip():
        return None
    try:
        return parse_subjects_override(subjects)
    except SubjectError as error:
        raise StudioError(str(error)) from None


def create_dataset(
    workspace: Workspace,
    owner: str,
    relation: str,
    uploads: list[Path],
    captions: str | list[str],
    clip_defaults: ClipShape,
    masks: MasksConfig,
    subjects: str | None = None,
    progress: Progress | None = None,
) -> DatasetReport:
    """Ingest `owner`'s uploaded videos into a new dataset and make their subject masks.

    Takes the uploads (1 to MAX_VIDEOS paths), their captions (see split_captions), the base model's clip
    shape, the masks settings and an optional "subject 1, subject 2" override for every video. Bad uploads
    are rejected one by one (listed in the report); when none is usable nothing is kept and StudioError says
    why. Returns the report, also saved in the dataset folder.
    """
    relation = _relation_name(relation)
    if not uploads:
        raise StudioError("upload at least one video of the relation (mp4, mov, webm, mkv, avi or gif)")
    if len(uploads) > MAX_VIDEOS:
        raise StudioError(f"{len(uploads)} videos uploaded: at most {MAX_VIDEOS} per relation")
    texts = split_captions(captions, len(uploads))
    pair = _subjects(subjects)
    from dreamrelation.data.ingest import ingest_videos

    dataset_id, folder = workspace.new_dataset_dir(owner, relation)
    clips, rejected = ingest_videos(list(zip(map(Path, uploads), texts)), folder, IngestConfig(), clip_defaults)
    if not clips:
        workspace.discard_dataset_dir(folder)
        raise StudioError("no usable video: " + " | ".join(rejected))
    (folder / CORRECTIONS_FILE).write_text("{}\n", encoding="utf-8")
    report = DatasetReport(dataset_id, relation, [], rejected)
    return _run_masks(folder, report, masks, pair, {}, None, progress)


def _run_masks(folder, report, masks, pair, corrections, names, progress) -> DatasetReport:
    """make_masks on `names` (None: all), merged into `report` and saved."""
    try:
        results = make_masks(folder, masks, subjects=pair, corrections=corrections, names=names, progress=progress)
    except (DatasetError, SubjectError) as error:
        raise StudioError(str(error)) from None
    done = {video.name: video for video in report.videos}
    for result in results:
        overlay = result.overlay if result.overlay.exists() and result.error is None else None
        done[result.name] = VideoReport(
            name=result.name,
            caption=(folder / f"{result.name}.txt").read_text(encoding="utf-8").strip(),
            video=folder / f"{result.name}.mp4",
            overlay=overlay,
            subjects=list(result.subjects) if result.subjects else None,
            engine=result.engine,
            notice=result.notice,
            flags=result.flags,
            error=result.error,
        )
    report.videos = [done[name] for name in sorted(done)]
    _save(folder, report)
    return report


def _save(folder: Path, report: DatasetReport) -> None:
    (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")


def read_dataset(workspace: Workspace, owner: str, dataset_id: str) -> DatasetReport:
    """The saved report of one of `owner`'s datasets; StudioError when it is not theirs or not there."""
    folder = workspace.dataset_dir(owner, dataset_id)
    record = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    videos = [
        VideoReport(**{**v, "video": Path(v["video"]), "overlay": Path(v["overlay"]) if v["overlay"] else None})
        for v in record["videos"]
    ]
    return DatasetReport(record["dataset_id"], record["relation"], videos, record["rejected"])


def list_datasets(workspace: Workspace, owner: str) -> list[DatasetReport]:
    """`owner`'s datasets, newest first (the reports their folders hold)."""
    root = workspace.owner_dir(owner) / "datasets"
    folders = [folder for folder in root.iterdir() if (folder / REPORT_FILE).is_file()] if root.is_dir() else []
    folders.sort(key=lambda folder: (folder / REPORT_FILE).stat().st_mtime, reverse=True)
    return [read_dataset(workspace, owner, folder.name) for folder in folders]


def example_preview(example: str) -> Path | None:
    """The first video of a bundled example (what the page shows before it is loaded), None when unknown."""
    if example not in list_examples():
        return None
    return next(iter(sorted((EXAMPLES_DIR / example).glob("*.mp4"))), None)


def correct_masks(
    workspace: Workspace,
    owner: str,
    dataset_id: str,
    video: str,
    prompt: SubjectPrompt,
    masks: MasksConfig,
    progress: Progress | None = None,
) -> DatasetReport:
    """Add a correction (points or a box for one subject on one frame) to a video and re-propagate its masks.

    Earlier corrections of the same video are kept. Returns the updated report (the engine's flags say when
    it cannot take corrections, as the basic segmenter cannot).
    """
    report = read_dataset(workspace, owner, dataset_id)
    folder = workspace.dataset_dir(owner, dataset_id)
    match = next((v for v in report.videos if v.name == video), None)
    if match is None:
        raise StudioError(f"video {video!r} is not in dataset {dataset_id}")
    count = probe_video(match.video).num_frames
    if prompt.frame >= count:
        raise StudioError(f"frame: the video has frames 0 to {count - 1}, got {prompt.frame}")
    saved = json.loads((folder / CORRECTIONS_FILE).read_text(encoding="utf-8"))
    saved.setdefault(video, []).append(dataclasses.asdict(prompt))
    (folder / CORRECTIONS_FILE).write_text(json.dumps(saved, indent=1) + "\n", encoding="utf-8")
    prompts = [SubjectPrompt(**{**p, "box": tuple(p["box"]) if p["box"] else None}) for p in saved[video]]
    return _run_masks(folder, report, masks, None, {video: prompts}, [video], progress)


def overlay_frame(workspace: Workspace, owner: str, dataset_id: str, video: str, frame: int) -> np.ndarray:
    """uint8 (H, W, 3): one frame of a video's mask overlay (or of the video itself when it has no masks).

    The frame index is clamped to the clip."""
    report = read_dataset(workspace, owner, dataset_id)
    match = next((v for v in report.videos if v.name == video), None)
    if match is None:
        raise StudioError(f"video {video!r} is not in dataset {dataset_id}")
    source = match.overlay or match.video
    count = probe_video(source).num_frames
    return read_frames(source, [min(max(int(frame), 0), count - 1)])[0]


def list_examples() -> list[str]:
    """Names of the bundled example datasets (folders of assets/examples/)."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return sorted(p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir())


def copy_example(workspace: Workspace, owner: str, example: str) -> DatasetReport:
    """A new dataset of `owner` holding a bundled example (videos, captions, ground-truth masks) with overlays."""
    if not EXAMPLES_DIR.is_dir():
        raise StudioError(f"the example datasets are missing: no folder {EXAMPLES_DIR} (set {ASSETS_ENV} to a "
                          "checkout's assets folder)")
    if example not in list_examples():
        raise StudioError(f"unknown example {example!r}; choose one of {', '.join(list_examples()) or 'none'}")
    dataset_id, folder = workspace.new_dataset_dir(owner, example.replace("_", " "))
    shutil.copytree(EXAMPLES_DIR / example, folder, dirs_exist_ok=True)
    (folder / CORRECTIONS_FILE).write_text("{}\n", encoding="utf-8")
    videos = []
    for sample in scan_dataset(folder):
        info = probe_video(sample.video)
        frames = read_frames(sample.video, list(range(info.num_frames)))
        masks = load_subject_masks(sample.mask_dir, list(range(info.num_frames)), info.height, info.width) > 0.5
        overlay = write_video(sample.mask_dir / "overlay.mp4", overlay_frames(frames, masks), fps=round(info.fps) or 24)
        videos.append(VideoReport(sample.name, sample.caption, sample.video, overlay, None, "ground truth", None, [], None))
    report = DatasetReport(dataset_id, example.replace("_", " "), videos)
    _save(folder, report)
    return report
