"""`dreamrelation` command line: thin over the library. Options and their help come from the pydantic configs."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

from dreamrelation.config import DataConfig, GenerateConfig, MethodConfig, ModelConfig, RunConfig, TrainConfig

# flag -> (config section, field). Sections are RunConfig's attribute names; "generate" is GenerateConfig.
MODEL_OPTIONS = {"--model": ("model", "name"), "--device": ("model", "device"), "--dtype": ("model", "dtype")}
TRAIN_OPTIONS = {
    **MODEL_OPTIONS,
    "--data": ("data", "data_dir"),
    "--masks": ("data", "masks_dir"),
    "--frames": ("data", "num_frames"),
    "--height": ("data", "height"),
    "--width": ("data", "width"),
    "--frame-sampling": ("data", "frame_sampling"),
    "--method": ("method", "mode"),
    "--relation-placement": ("method", "relation_placement"),
    "--rank": ("method", "rank"),
    "--alpha": ("method", "alpha"),
    "--ffn-rank": ("method", "ffn_rank"),
    "--ffn-alpha": ("method", "ffn_alpha"),
    "--subject-adapters": ("method", "subject_adapters"),
    "--mask-loss": ("method", "mask_loss"),
    "--lambda-mask": ("method", "lambda_mask"),
    "--contrastive": ("method", "contrastive"),
    "--lambda-contrastive": ("method", "lambda_contrastive"),
    "--temperature": ("method", "temperature"),
    "--num-positives": ("method", "num_positives"),
    "--num-negatives": ("method", "num_negatives"),
    "--output": ("train", "output_dir"),
    "--steps": ("train", "steps"),
    "--lr": ("train", "learning_rate"),
    "--weight-decay": ("train", "weight_decay"),
    "--warmup-steps": ("train", "warmup_steps"),
    "--caption-dropout": ("train", "caption_dropout"),
    "--seed": ("train", "seed"),
    "--gradient-checkpointing": ("train", "gradient_checkpointing"),
    "--checkpoint-every": ("train", "checkpoint_every"),
    "--keep-checkpoints": ("train", "keep_checkpoints"),
    "--resume": ("train", "resume"),
    "--sample-every": ("train", "sample_every"),
    "--sample-prompt": ("train", "sample_prompt"),
}
GENERATE_OPTIONS = {
    **MODEL_OPTIONS,
    "--prompt": ("generate", "prompt"),
    "--negative-prompt": ("generate", "negative_prompt"),
    "--seed": ("generate", "seed"),
    "--steps": ("generate", "steps"),
    "--guidance-scale": ("generate", "guidance_scale"),
    "--frames": ("generate", "num_frames"),
    "--height": ("generate", "height"),
    "--width": ("generate", "width"),
    "--lora-scale": ("generate", "lora_scale"),
    "--fuse-lora": ("generate", "fuse_lora"),
    "--cpu-offload": ("generate", "cpu_offload"),
    "--vae-tiling": ("generate", "vae_tiling"),
    "--fps": ("generate", "fps"),
}
SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "method": MethodConfig,
    "train": TrainConfig,
    "generate": GenerateConfig,
}


class CliError(Exception):
    """A problem to report in one line with exit code 2."""


def _scalar_type(annotation):
    """int/float/str/Path for argparse, unwrapping Optional and Literal."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if args:
        return _scalar_type(args[0])
    return annotation if annotation in (int, float, Path) else str


def _add_options(parser: argparse.ArgumentParser, options: dict[str, tuple[str, str]]) -> None:
    """One flag per config field, with the field's description as help and no default (unset keeps the config's)."""
    for flag, (section, name) in options.items():
        field = SECTIONS[section].model_fields[name]
        dest = f"{section}.{name}"
        help_text = field.description.replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        if not field.is_required() and field.default is not None and not callable(field.default_factory):
            help_text = f"{help_text} (default: {field.default})"
        parser.add_argument(
            flag,
            dest=dest,
            type=_scalar_type(field.annotation),
            choices=choices,
            default=None,
            metavar=None if choices else name.upper(),
            help=help_text,
        )


def _overrides(args: argparse.Namespace) -> dict[str, dict]:
    """{section: {field: value}} of the flags that were given."""
    sections: dict[str, dict] = {}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, name = dest.split(".", 1)
            sections.setdefault(section, {})[name] = value
    return sections


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(x) for x in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def build_run_config(args: argparse.Namespace) -> RunConfig:
    """RunConfig from --config FILE.yaml (if given) with the command-line flags on top."""
    overrides = _overrides(args)
    if args.config is not None:
        if not Path(args.config).is_file():
            raise CliError(f"config file not found: {args.config}")
        return RunConfig.from_yaml(args.config, **overrides)
    if "data" not in overrides:
        raise CliError("--data DIR is required (or a --config file with a data section)")
    return RunConfig.model_validate(overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from dreamrelation.train.trainer import train

    run = build_run_config(args)
    result = train(run)
    print(f"trained {result.steps} steps; relation LoRA: {result.lora_path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from dreamrelation.generate import generate

    overrides = _overrides(args)
    model = ModelConfig.model_validate(overrides.get("model", {}))
    request = GenerateConfig.model_validate(overrides.get("generate", {}))
    result = generate(model, args.lora, request, args.output)
    frames, height, width, _ = result.frames.shape
    print(f"wrote {result.path} ({frames} frames, {width}x{height})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamrelation", description="Relation-centric video customisation.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="Train a relation LoRA on a dataset folder.")
    train.add_argument("--config", type=Path, help="YAML file with model/data/method/train sections.")
    _add_options(train, TRAIN_OPTIONS)
    train.set_defaults(handler=cmd_train)

    generate = commands.add_parser("generate", help="Generate a video with a relation LoRA.")
    generate.add_argument("--lora", type=Path, help="A training output folder or its relation_lora.safetensors "
                          "(omit to generate with the base model alone).")
    generate.add_argument("--output", type=Path, required=True, help="The .mp4 to write.")
    _add_options(generate, GENERATE_OPTIONS)
    generate.set_defaults(handler=cmd_generate)
    return parser


def _quiet_loading_bars() -> None:
    # Loading a pipeline prints one bar per component; the CLI shows its own bars for the long work.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dreamrelation` console script; returns the exit code."""
    from dreamrelation.data.dataset import DatasetError
    from dreamrelation.data.video import VideoError
    from dreamrelation.generate import GenerationError
    from dreamrelation.models import ModelLoadError

    args = build_parser().parse_args(argv)
    _quiet_loading_bars()
    try:
        return args.handler(args)
    except ValidationError as error:
        message = _validation_message(error)
    except (CliError, DatasetError, VideoError, GenerationError, ModelLoadError, OSError) as error:
        message = str(error)
    except KeyboardInterrupt:
        message = "interrupted"
    print(f"dreamrelation: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
