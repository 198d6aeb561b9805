"""Plain-argument entry points for front ends (the app, scripts), thin over the library."""

from __future__ import annotations

from pathlib import Path

from dreamrelation.config import GenerateConfig, ModelConfig
from dreamrelation.models import TOY_MODEL_DIR


def default_model_name() -> str:
    """The embedded toy model when this checkout has it, else the tiny random one."""
    return "toy" if (TOY_MODEL_DIR / "model_index.json").exists() else "tiny-random"


def generate_video(
    model: str, lora: str | None, prompt: str, seed: int, steps: int, num_frames: int, height: int, width: int,
    output: Path,
) -> Path:
    """Generate one mp4 at `output` with base `model` and an optional relation LoRA folder/file; returns the path."""
    from dreamrelation.generate import generate

    request = GenerateConfig(prompt=prompt, seed=seed, steps=steps, num_frames=num_frames, height=height, width=width)
    return generate(ModelConfig(name=model), Path(lora) if lora else None, request, output).path
