"""Trainer events, in the manner of transformers' `TrainerCallback`: a base class whose methods do nothing, so a
callback overrides only the events it needs. `train` calls them on the main process only, in this order:

    on_prepared     once: model, data, adapters and state are ready (fresh or resumed), the first step is next
    on_step         after every optimizer step
    on_evaluation   after the evaluation loss is scored (every eval_every steps and at the last)
    on_checkpoint   after a checkpoint is published (the run's last step always gets one)
    on_done         once, after the LoRA is exported
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from dreamrelation.config import RunConfig


@dataclass
class TrainResult:
    """What a run did: where it wrote, its LoRA, the steps done, every step's loss in this call, and the clips
    this call encoded (0 when the cache had them all); `train` returns it and `on_done` hears it."""

    output_dir: Path
    lora_path: Path
    steps: int
    losses: list[float]
    encoded_clips: int


@dataclass(frozen=True)
class StepReport:
    """What one optimizer step did."""

    step: int  # steps done, this one included
    steps: int  # the run's total
    mode: str  # the hybrid-mask mode it trained
    losses: dict[str, float]  # "loss", "loss_rec", and "loss_rcl" once the contrastive term applies
    lr: float  # the learning rate the schedule set for the next step
    sec_per_step: float  # the step alone (no checkpoint or sample)


@dataclass(frozen=True)
class EvalReport:
    """The evaluation loss after a step (train/evaluation.py)."""

    step: int  # steps done
    losses: dict[str, float]  # "eval", "eval_inside", "eval_outside"
    seconds: float  # what scoring it cost


class TrainerCallback:
    """Base class of trainer callbacks: every event is a no-op."""

    def on_prepared(self, run: RunConfig, step: int, clips: int) -> None:
        """Training of `run` starts at `step` (0, or the resumed checkpoint's) on `clips` cached clips."""

    def on_step(self, report: StepReport) -> None:
        """One optimizer step has run."""

    def on_evaluation(self, report: EvalReport) -> None:
        """The evaluation loss has been scored."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """The checkpoint of `step` is published at `path`."""

    def on_done(self, result: TrainResult) -> None:
        """The run has finished and its LoRA is at `result.lora_path`."""


class ProgressBar(TrainerCallback):
    """A tqdm bar over the run's steps, showing the latest loss and mode."""

    def __init__(self):
        self.bar: tqdm | None = None

    def on_prepared(self, run: RunConfig, step: int, clips: int) -> None:
        self.bar = tqdm(total=run.train.steps, initial=step, desc="training")

    def on_step(self, report: StepReport) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{report.losses['loss']:.4f}", mode=report.mode)

    def on_done(self, result: TrainResult) -> None:
        self.bar.close()
