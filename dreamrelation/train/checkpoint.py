"""Resumable checkpoints: OUT/checkpoints/step-<N>/, written to a temporary folder and renamed (atomic),
the newest K kept. `state.pt` holds what every process shares (adapters, optimizer, scheduler, step,
config); `rank<R>.pt` what each process owns (its random generators and contrastive banks).

Why not `accelerator.save_state` with `register_for_checkpointing`: it saves the whole model's state dict (the
frozen base too, tens of GB for a full-size base, where the adapters are megabytes), writes straight into its folder (a
run killed mid-write leaves a half checkpoint that looks complete), and saves registered objects from the main
process only, so each rank's own generator and contrastive banks would be lost; exact resume needs all three.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from dreamrelation.outputs import RunDir

if TYPE_CHECKING:
    from dreamrelation.config import RunConfig
    from dreamrelation.train.trainer import Training

logger = logging.getLogger(__name__)

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


def save(out: RunDir, run: RunConfig, training: Training) -> Path | None:
    """Write checkpoint `training.state.step` (every process its own part) and publish it; returns its folder on
    the main process, None on the others. The adapters are saved per trained expert: {component: {adapter name:
    its peft state dict}}."""
    ctx, state = training.ctx, training.state
    accelerator = ctx.accelerator
    staging = staging_dir(out.root, state.step)
    write_part(
        staging,
        f"rank{accelerator.process_index}",
        {
            "data_generator": state.data_generator.get_state(),
            "contrastive": state.contrastive.state_dict() if state.contrastive else None,
        },
    )
    if accelerator.is_main_process:
        adapters = {
            component: {name: get_peft_model_state_dict(transformer, adapter_name=name) for name in transformer.peft_config}
            for component, transformer in ctx.transformers.items()
        }
        write_part(
            staging,
            "state",
            {
                "step": state.step,
                "adapters": adapters,
                "optimizer": ctx.optimizer.state_dict(),
                "lr_schedule": training.lr_schedule.state_dict(),
                "mode_generator": state.mode_generator.get_state(),
                "config": run.model_dump(mode="json"),
            },
        )
    accelerator.wait_for_everyone()
    published = publish(out.root, state.step, run.train.keep_checkpoints) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    return published


def restore(checkpoint: Path, training: Training) -> None:
    """Load checkpoint folder `checkpoint` into `training` (adapters of every trained expert, optimizer,
    schedule, step, generators, contrastive banks); RuntimeError when it holds adapters this model lacks."""
    ctx, state = training.ctx, training.state
    shared = read_part(checkpoint, "state")
    own = read_part(checkpoint, f"rank{ctx.accelerator.process_index}") or read_part(checkpoint, "rank0")
    if set(shared["adapters"]) != set(ctx.transformers):
        raise RuntimeError(f"checkpoint {checkpoint} trained the experts {sorted(shared['adapters'])}, this run "
                           f"{sorted(ctx.transformers)}: resume with the same --experts")
    for component, adapters in shared["adapters"].items():
        for name, weights in adapters.items():
            loaded = set_peft_model_state_dict(ctx.transformers[component], weights, adapter_name=name)
            if loaded.unexpected_keys:
                raise RuntimeError(f"checkpoint {checkpoint} holds weights of adapter {name!r} this model lacks")
    ctx.optimizer.load_state_dict(shared["optimizer"])
    training.lr_schedule.load_state_dict(shared["lr_schedule"])
    state.step = shared["step"]
    state.mode_generator.set_state(shared["mode_generator"])
    state.data_generator.set_state(own["data_generator"])
    if state.contrastive and own["contrastive"]:
        state.contrastive.load_state_dict(own["contrastive"])
    logger.info("resumed from %s at step %d", checkpoint, state.step)
