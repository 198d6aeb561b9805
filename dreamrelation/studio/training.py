"""Training settings the app offers: the library's presets and the few values a user may change."""

from __future__ import annotations

from pathlib import Path

from dreamrelation.config import ModelConfig, RunConfig
from dreamrelation.presets import preset_run

# What the settings form shows: (section, field) of RunConfig by form name.
EDITABLE = {
    "steps": ("train", "steps"),
    "learning_rate": ("train", "learning_rate"),
    "seed": ("train", "seed"),
    "sample_every": ("train", "sample_every"),
    "rank": ("method", "rank"),
    "lambda_mask": ("method", "lambda_mask"),
    "lambda_contrastive": ("method", "lambda_contrastive"),
    "num_frames": ("data", "num_frames"),
    "height": ("data", "height"),
    "width": ("data", "width"),
    "experts": ("train", "experts"),
}


def build_run(model: ModelConfig, data_dir: Path, preset: str, settings: dict | None = None) -> RunConfig:
    """The RunConfig of a training job: RunConfig defaults, then the preset, then `settings` (form names of
    EDITABLE; None values keep the preset's). Raises ValueError for an unknown preset or setting, and
    pydantic's ValidationError for a bad value."""
    sections: dict[str, dict] = {"model": model.model_dump(mode="json"), "data": {"data_dir": str(data_dir)}}
    for name, value in (settings or {}).items():
        if name not in EDITABLE:
            raise ValueError(f"unknown training setting {name!r}")
        if value is not None:
            section, field = EDITABLE[name]
            sections.setdefault(section, {})[field] = value
    return preset_run(preset, sections)


def preset_values(preset: str) -> dict:
    """The form values a preset starts from ({form name: value}; clip sizes None = the model's defaults)."""
    run = build_run(ModelConfig(), Path("."), preset)
    return {name: getattr(getattr(run, section), field) for name, (section, field) in EDITABLE.items()}
