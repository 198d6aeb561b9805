"""The run folder: the one place that names what a training run writes (TrainConfig.output_dir).

    OUT/relation_lora.safetensors   the exported relation LoRA (diffusers format) of the transformer (the
                                    high-noise expert of a two-expert model)
    OUT/relation_lora_transformer_2.safetensors   that of the second (low-noise) expert, when it was trained
    OUT/<lora file stem>_comfyui.safetensors  each LoRA in ComfyUI's format, once exported (`dreamrelation export`)
    OUT/README.md                   its model card
    OUT/config.yaml                 the run's settings
    OUT/progress.jsonl              one record per logged step (train/progress.py)
    OUT/samples/step-<N>.mp4        sample videos rendered during training
    OUT/checkpoints/                resumable checkpoints (train/checkpoint.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LORA_FILENAME = "relation_lora.safetensors"
# The LoRA file of each pipeline transformer (expert) a run trains; the first is the one-transformer models' too.
EXPERT_LORA_FILENAMES = {"transformer": LORA_FILENAME, "transformer_2": "relation_lora_transformer_2.safetensors"}
MODEL_CARD_FILENAME = "README.md"


def comfyui_lora_path(lora_file: Path) -> Path:
    """Where the ComfyUI twin of a diffusers-format LoRA file goes: `<stem>_comfyui.safetensors` beside it."""
    return Path(lora_file).with_name(f"{Path(lora_file).stem}_comfyui.safetensors")


@dataclass(frozen=True)
class RunDir:
    """The paths inside one run folder; nothing is created or checked."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def lora(self) -> Path:
        return self.root / LORA_FILENAME

    def lora_file(self, component: str) -> Path:
        """The LoRA file of one pipeline transformer ('transformer' or 'transformer_2')."""
        return self.root / EXPERT_LORA_FILENAMES[component]

    def lora_files(self) -> dict[str, Path]:
        """{pipeline component: LoRA file} of the experts this run exported (the files that exist)."""
        return {component: self.lora_file(component) for component in EXPERT_LORA_FILENAMES
                if self.lora_file(component).is_file()}

    @property
    def model_card(self) -> Path:
        return self.root / MODEL_CARD_FILENAME

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def progress(self) -> Path:
        return self.root / "progress.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def sample(self, step: int) -> Path:
        """The sample video rendered after `step` (zero-padded, so names sort by step)."""
        return self.samples / f"step-{step:07d}.mp4"

    def latest_sample(self) -> Path | None:
        """The newest sample video, or None before the first."""
        found = sorted(self.samples.glob("step-*.mp4"))
        return found[-1] if found else None
