"""The app's data directory (DREAMRELATION_HOME): the job table, the jobs' folders and each owner's files.

    HOME/jobs.sqlite3                          jobs (dreamrelation.jobs), each with its owner's KEY
    HOME/jobs/ID/output/                       a job's checkpoints, progress.jsonl and relation LoRA
    HOME/owners/KEY/datasets/ID/               an owner's uploaded relation datasets (videos, captions, masks)
    HOME/owners/KEY/generations/JOB/NNNN.mp4   generated videos, each with NNNN.json (its settings); JOB is
                                               hub--USER--NAME for a relation from the Hub
    HOME/secret/owner-key                      the installation's secret (dreamrelation.studio.owners)

KEY is an owner key: a keyed hash of the session or user name, which is never stored. Nothing here is served
by path: the app hands files over as copies (ui.callbacks.served).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from dreamrelation.hub import check_repo_id
from dreamrelation.jobs import JobStore
from dreamrelation.studio.owners import OwnerKeys, is_owner_key, migrate_legacy_owners

_DATASET_ID = re.compile(r"^[a-z0-9_-]{1,60}-[0-9a-f]{8}$")
_RELATION_ID = re.compile(r"^[a-z0-9]{1,16}$")  # a job id, or "base" for the base model
_SPACES_STORAGE = Path("/data")  # where the README mounts a storage bucket on a Hugging Face Space
SPACE_ENV = "SPACE_ID"  # set by Hugging Face Spaces in every Space's container
ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # set on ZeroGPU hardware, which lends a GPU per call


def lost_on_restart(home: Path, mount_points: list[str] | None = None) -> bool:
    """Whether `home` sits on a Hugging Face Space's own disk, which a restart wipes, rather than on mounted
    storage (a bucket volume): on a Space (SPACE_ENV set), the deepest of `mount_points` (psutil's, by default)
    holding `home` is the container's root. Never True off a Space."""
    if not os.environ.get(SPACE_ENV):
        return False
    if mount_points is None:
        import psutil

        mount_points = [partition.mountpoint for partition in psutil.disk_partitions(all=True)]
    home = Path(home).resolve()
    holding = [Path(point) for point in mount_points if home == Path(point) or Path(point) in home.parents]
    return max(holding, key=lambda point: len(point.parts), default=Path("/")) == Path("/")


class StudioError(ValueError):
    """A request the app cannot do; the message (one line) says what to change."""


def default_home() -> Path:
    """$DREAMRELATION_HOME, else /data/dreamrelation on a Space with persistent storage, else ./data."""
    if "DREAMRELATION_HOME" in os.environ:
        return Path(os.environ["DREAMRELATION_HOME"])
    if _SPACES_STORAGE.is_dir() and os.access(_SPACES_STORAGE, os.W_OK):
        return _SPACES_STORAGE / "dreamrelation"
    return Path("data")


def slug(text: str, fallback: str = "relation") -> str:
    """Lower-case ASCII letters, digits, '-' and '_' of `text` (at most 40), or `fallback` when none are left."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:40]
    return cleaned or fallback


class Workspace:
    """Paths under the data directory, always resolved for one owner key; creates HOME on first use and
    re-keys a data directory written before owner keys."""

    def __init__(self, home: Path):
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.home)
        self.owner_keys = OwnerKeys(self.home)
        migrate_legacy_owners(self.home, self.store, self.owner_keys)

    def owner_key(self, identity: str) -> str:
        """The owner key of an identity ('session:HASH' or 'user:NAME'): what every other method takes."""
        return self.owner_keys.key(identity)

    def owner_dir(self, owner: str) -> Path:
        """HOME/owners/KEY; ValueError for anything but an owner key (never a path of the caller's making)."""
        if not is_owner_key(owner):
            raise ValueError("not an owner key: pass Workspace.owner_key(identity)")
        return self.home / "owners" / owner

    def new_dataset_dir(self, owner: str, relation: str) -> tuple[str, Path]:
        """A fresh dataset id (from the relation name plus random hex) and its folder (created)."""
        dataset_id = f"{slug(relation)}-{secrets.token_hex(4)}"
        folder = self.owner_dir(owner) / "datasets" / dataset_id
        folder.mkdir(parents=True)
        return dataset_id, folder

    def discard_dataset_dir(self, folder: Path) -> None:
        """Remove a dataset folder that new_dataset_dir made, and the owner's folders it leaves empty."""
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, folder.parent.parent):
            try:
                parent.rmdir()
            except OSError:  # not empty: the owner has other files
                return

    def dataset_dir(self, owner: str, dataset_id: str) -> Path:
        """The folder of one of `owner`'s datasets; StudioError when the id is malformed or not theirs."""
        folder = self.owner_dir(owner) / "datasets" / str(dataset_id)
        if not _DATASET_ID.match(str(dataset_id)) or not folder.is_dir():
            raise StudioError(f"dataset {dataset_id!r} not found: create masks for your videos first")
        return folder

    def disk_used(self, owner: str) -> int:
        """Bytes `owner`'s files use: their folder (datasets, generations) and their jobs' folders (runs, logs)."""
        folders = [self.owner_dir(owner)] + [job.job_dir for job in self.store.list(owner)]
        return sum(path.stat().st_size for folder in folders if folder.is_dir()
                   for path in folder.rglob("*") if path.is_file() and not path.is_symlink())

    def generation_dir(self, owner: str, job_id: str) -> Path:
        """Where `owner`'s generations with relation `job_id` ('base' for none, user/name for one from the Hub)
        go (not created here); StudioError for an id that is not a relation id, HubError for a bad Hub id."""
        if "/" in str(job_id):
            # A Hub id has no '--' (check_repo_id), so hub--user--name is one folder per id, like the hub cache's.
            return self.owner_dir(owner) / "generations" / ("hub--" + check_repo_id(job_id).replace("/", "--"))
        if not _RELATION_ID.match(str(job_id)):
            raise StudioError(f"relation {job_id!r} not found among your trained relations")
        return self.owner_dir(owner) / "generations" / job_id
