"""Resumable checkpoints: OUT/checkpoints/step-<N>/, written to a temporary folder and renamed (atomic),
the newest K kept. `state.pt` holds what every process shares (adapters, optimizer, scheduler, step,
config); `rank<R>.pt` what each process owns (its random generators and contrastive banks).

Why not `accelerator.save_state` with `register_for_checkpointing`: it saves the whole model's state dict (the
frozen base too, tens of GB for a full-size base, where the adapters are megabytes), writes straight into its folder (a
run killed mid-write leaves a half checkpoint that looks complete), and saves registered objects from the main
process only, so each rank's own generator and contrastive banks would be lost; exact resume needs all three.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from dreamrelation.outputs import RunDir

_STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = RunDir(output_dir).checkpoints
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "state.pt").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def staging_dir(output_dir: Path, step: int) -> Path:
    """Where the processes write checkpoint `step` before it is published."""
    path = RunDir(output_dir).checkpoints / f".step-{step:07d}.tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_part(staging: Path, name: str, state: dict) -> None:
    """Write one part ('state' or 'rank<R>') of a checkpoint being staged."""
    torch.save(state, staging / f"{name}.pt")


def publish(output_dir: Path, step: int, keep: int) -> Path:
    """Rename the staged checkpoint into place and delete all but the newest `keep`. Main process only."""
    staging = RunDir(output_dir).checkpoints / f".step-{step:07d}.tmp"
    final = RunDir(output_dir).checkpoints / f"step-{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_part(checkpoint: Path, name: str) -> dict | None:
    """Load one part of a checkpoint, or None when this part was not written (e.g. a new rank)."""
    path = Path(checkpoint) / f"{name}.pt"
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
