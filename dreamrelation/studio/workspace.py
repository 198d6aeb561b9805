"""The app's data directory (DREAMRELATION_HOME): the job table, the jobs' folders and each owner's files.

    HOME/jobs.sqlite3                          jobs (dreamrelation.jobs)
    HOME/jobs/ID/output/                       a job's checkpoints, progress.jsonl and relation LoRA
    HOME/owners/KEY/datasets/ID/               an owner's uploaded relation datasets (videos, captions, masks)
    HOME/owners/KEY/generations/JOB/NNNN.mp4   generated videos, each with NNNN.json (its settings)

KEY is a hash of the owner, so a session id or user name never becomes a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from dreamrelation.jobs import JobStore

_DATASET_ID = re.compile(r"^[a-z0-9_-]{1,60}-[0-9a-f]{8}$")
_SPACES_STORAGE = Path("/data")  # Hugging Face Spaces' persistent storage, when the Space has it


class StudioError(ValueError):
    """A request the app cannot do; the message (one line) says what to change."""


def default_home() -> Path:
    """$DREAMRELATION_HOME, else /data/dreamrelation on a Space with persistent storage, else ./data."""
    if "DREAMRELATION_HOME" in os.environ:
        return Path(os.environ["DREAMRELATION_HOME"])
    if _SPACES_STORAGE.is_dir() and os.access(_SPACES_STORAGE, os.W_OK):
        return _SPACES_STORAGE / "dreamrelation"
    return Path("data")


def owner_key(owner: str) -> str:
    """A stable folder name for an owner: 16 hex digits of its SHA-256."""
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:16]


def slug(text: str, fallback: str = "relation") -> str:
    """Lower-case ASCII letters, digits, '-' and '_' of `text` (at most 40), or `fallback` when none are left."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:40]
    return cleaned or fallback


class Workspace:
    """Paths under the data directory, always resolved for one owner; creates HOME on first use."""

    def __init__(self, home: Path):
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.home)

    def owner_dir(self, owner: str) -> Path:
        return self.home / "owners" / owner_key(owner)

    def new_dataset_dir(self, owner: str, relation: str) -> tuple[str, Path]:
        """A fresh dataset id (from the relation name plus random hex) and its folder (created)."""
        dataset_id = f"{slug(relation)}-{secrets.token_hex(4)}"
        folder = self.owner_dir(owner) / "datasets" / dataset_id
        folder.mkdir(parents=True)
        return dataset_id, folder

    def dataset_dir(self, owner: str, dataset_id: str) -> Path:
        """The folder of one of `owner`'s datasets; StudioError when the id is malformed or not theirs."""
        folder = self.owner_dir(owner) / "datasets" / str(dataset_id)
        if not _DATASET_ID.match(str(dataset_id)) or not folder.is_dir():
            raise StudioError(f"dataset {dataset_id!r} not found: create masks for your videos first")
        return folder

    def generation_dir(self, owner: str, job_id: str) -> Path:
        """Where `owner`'s generations with relation `job_id` ('base' for none) go (created)."""
        folder = self.owner_dir(owner) / "generations" / job_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder
