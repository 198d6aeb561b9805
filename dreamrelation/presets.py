"""Training presets: named overrides of RunConfig's defaults, the one definition the CLI and the app share."""

from __future__ import annotations

from dataclasses import dataclass, field

from dreamrelation.config import RunConfig


@dataclass(frozen=True)
class TrainingPreset:
    """What a preset is for, and the RunConfig values it changes ({section: {field: value}})."""

    purpose: str
    overrides: dict[str, dict] = field(default_factory=dict)


TRAINING_PRESETS: dict[str, TrainingPreset] = {
    "paper": TrainingPreset("the paper's recipe, the settings' own defaults"),
    # What carries a relation over to new subjects on the embedded model (docs/toy-model.md; relation_eval's
    # "dreamrelation" row): a high learning rate, a light mask weight, and the relation mode on every step with the
    # subject adapters on half of them (docs/method.md §2).
    "quick": TrainingPreset(
        "the embedded model's recipe: a relation that carries over to new subjects in minutes on a CPU, "
        "not a recipe for full-size models",
        {"train": {"steps": 1600, "learning_rate": 1e-3, "checkpoint_every": 25},
         "method": {"lambda_mask": 5, "relation_share": 1.0, "subject_dropout": 0.5, "dropout_subject_weight": 1.0}},
    ),
}


def preset_help() -> str:
    """One line on every preset: its purpose and the values it sets (the CLI's and the app's help)."""
    parts = []
    for name, preset in TRAINING_PRESETS.items():
        values = ", ".join(f"{key} {value:g}" for section in preset.overrides.values()
                           for key, value in section.items())
        parts.append(f"'{name}': {preset.purpose}" + (f" ({values})" if values else ""))
    return "Starting values that the other settings override. " + "; ".join(parts) + "."


def preset_run(preset: str, *layers: dict[str, dict]) -> RunConfig:
    """The RunConfig of `preset` with each of `layers` ({section: {field: value}}, e.g. a YAML file's, then the
    flags') merged on top in turn. Raises ValueError naming the presets for an unknown one, and pydantic's
    ValidationError for a bad value."""
    if preset not in TRAINING_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(TRAINING_PRESETS)}")
    sections: dict[str, dict] = {}
    for layer in (TRAINING_PRESETS[preset].overrides, *layers):
        for section, values in layer.items():
            sections.setdefault(section, {}).update(values)
    return RunConfig.model_validate(sections)
