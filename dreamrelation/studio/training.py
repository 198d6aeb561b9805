"""Training settings the app offers: presets over RunConfig and the few values a user may change."""

from __future__ import annotations

from pathlib import Path

from dreamrelation.config import ModelConfig, RunConfig

# Overrides of RunConfig's defaults per preset. "paper" is RunConfig's own defaults (the paper's settings);
# "quick" trains a usable toy relation in minutes on a CPU.
PRESETS: dict[str, dict[str, dict]] = {
    "quick": {
        "train": {"steps": 150, "learning_rate": 5e-4, "warmup_steps": 10, "checkpoint_every": 25},
        "method": {"rank": 8},  # alpha = rank (MethodConfig): scale 1
    },
    "paper": {},
}
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
}


def build_run(model: ModelConfig, data_dir: Path, preset: str, settings: dict | None = None) -> RunConfig:
    """The RunConfig of a training job: RunConfig defaults, then the preset, then `settings` (form names of
    EDITABLE; None values keep the preset's). Raises ValueError for an unknown preset or setting, and
    pydantic's ValidationError for a bad value."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    sections: dict[str, dict] = {key: dict(values) for key, values in PRESETS[preset].items()}
    for name, value in (settings or {}).items():
        if name not in EDITABLE:
            raise ValueError(f"unknown training setting {name!r}")
        if value is not None:
            section, field = EDITABLE[name]
            sections.setdefault(section, {})[field] = value
    data = {"data_dir": str(data_dir), **sections.pop("data", {})}
    return RunConfig.model_validate({"model": model.model_dump(mode="json"), "data": data, **sections})


def preset_values(preset: str) -> dict:
    """The form values a preset starts from ({form name: value}; clip sizes None = the model's defaults)."""
    run = build_run(ModelConfig(), Path("."), preset)
    return {name: getattr(getattr(run, section), field) for name, (section, field) in EDITABLE.items()}
