"""`dreamrelation` command line: thin over the library. Options and their help come from the pydantic configs."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError
from tqdm.auto import tqdm

from dreamrelation.config import (
    DataConfig,
    GenerateConfig,
    IngestConfig,
    MasksConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    describe_validation_error,
    read_yaml_sections,
)
from dreamrelation.outputs import RunDir, comfyui_lora_path
from dreamrelation.presets import TRAINING_PRESETS, preset_help, preset_run

# flag -> (config section, field). Sections are RunConfig's attribute names; "generate" is GenerateConfig.
MODEL_OPTIONS = {
    "--model": ("model", "name"),
    "--device": ("model", "device"),
    "--dtype": ("model", "dtype"),
    "--memory": ("model", "memory"),
}
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
    "--relation-share": ("method", "relation_share"),
    "--subject-dropout": ("method", "subject_dropout"),
    "--dropout-subject-weight": ("method", "dropout_subject_weight"),
    "--subject-modes-train-ffn": ("method", "subject_modes_train_ffn"),
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
    "--max-grad-norm": ("train", "max_grad_norm"),
    "--warmup-steps": ("train", "warmup_steps"),
    "--caption-dropout": ("train", "caption_dropout"),
    "--sigma-sampling": ("train", "sigma_sampling"),
    "--sigma-logit-mean": ("train", "sigma_logit_mean"),
    "--sigma-logit-std": ("train", "sigma_logit_std"),
    "--sigma-shift": ("train", "sigma_shift"),
    "--experts": ("train", "experts"),
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
    "--compare": ("generate", "compare"),
}
INGEST_OPTIONS = {
    "--model": ("model", "name"),
    "--frames": ("ingest", "num_frames"),
    "--height": ("ingest", "height"),
    "--width": ("ingest", "width"),
    "--fps": ("ingest", "fps"),
    "--frame-sampling": ("ingest", "frame_sampling"),
    "--max-file-mb": ("ingest", "max_file_mb"),
    "--max-duration": ("ingest", "max_duration_s"),
    "--max-pixels": ("ingest", "max_pixels"),
    "--max-caption-words": ("ingest", "max_caption_words"),
}
MASKS_OPTIONS = {
    "--engine": ("masks", "engine"),
    "--detector": ("masks", "detector"),
    "--sam2-model": ("masks", "sam2_model"),
    "--sam2-input-size": ("masks", "sam2_input_size"),
    "--frame-stride": ("masks", "frame_stride"),
    "--seed-frame": ("masks", "seed_frame"),
    "--box-threshold": ("masks", "box_threshold"),
    "--text-threshold": ("masks", "text_threshold"),
    "--device": ("masks", "device"),
}
SECTIONS: dict[str, type[BaseModel]] = {
    "ingest": IngestConfig,
    "masks": MasksConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "method": MethodConfig,
    "train": TrainConfig,
    "generate": GenerateConfig,
}


class CliError(Exception):
    """A problem to report in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line like every other error (argparse would print the usage first); --help shows the usage.
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def build_run_config(args: argparse.Namespace) -> RunConfig:
    """RunConfig of the --preset, then --config FILE.yaml (if given), then the command-line flags on top."""
    overrides = _overrides(args)
    if args.config is not None:
        if not Path(args.config).is_file():
            raise CliError(f"config file not found: {args.config}")
        return preset_run(args.preset, read_yaml_sections(args.config), overrides)
    if "data" not in overrides:
        raise CliError("--data DIR is required (or a --config file with a data section)")
    return preset_run(args.preset, overrides)


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
    if result.comparison is not None:
        print(f"wrote {result.comparison.base_path} (the base model alone) and {result.comparison.path} (side by side)")
    return 0


def _captions_for(videos: list[Path], caption: str | None) -> list[tuple[Path, str]]:
    """(video, caption) pairs: --caption for all, else each video's sibling VIDEO.txt (missing: empty, which
    ingestion rejects with its message). CliError for a caption file that is not UTF-8 text."""
    pairs = []
    for video in videos:
        sibling = video.with_suffix(".txt")
        try:
            text = caption if caption is not None else sibling.read_text(encoding="utf-8") if sibling.is_file() else ""
        except UnicodeDecodeError:
            raise CliError(f"{sibling}: caption is not UTF-8 text; save it as UTF-8") from None
        pairs.append((video, text))
    return pairs


def cmd_ingest(args: argparse.Namespace) -> int:
    from dreamrelation.data.ingest import ingest_videos
    from dreamrelation.models import resolve_model

    overrides = _overrides(args)
    config = IngestConfig.model_validate(overrides.get("ingest", {}))
    source = resolve_model(ModelConfig.model_validate(overrides.get("model", {})))
    if problem := source.spec.clip_shape_problem(config.num_frames, config.height, config.width):
        raise CliError(problem)
    clips, errors = ingest_videos(_captions_for(args.videos, args.caption), args.data, config, source.clip)
    for clip in clips:
        notes = f" ({'; '.join(clip.notes)})" if clip.notes else ""
        print(f"added {clip.name}{notes}")
    for error in errors:
        print(f"dreamrelation: rejected {error}", file=sys.stderr)
    print(f"{len(clips)} video(s) added to {args.data}, {len(errors)} rejected")
    return 2 if errors else 0


def cmd_masks(args: argparse.Namespace) -> int:
    from dreamrelation.masks.pipeline import make_masks
    from dreamrelation.masks.subjects import parse_subjects_override

    config = MasksConfig.model_validate(_overrides(args).get("masks", {}))
    subjects = parse_subjects_override(args.subjects) if args.subjects else None
    with tqdm(total=1.0, desc="masks", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}") as bar:

        def progress(fraction: float, message: str) -> None:
            bar.set_description_str(message, refresh=False)
            bar.update(fraction - bar.n)

        results = make_masks(args.data, config, subjects=subjects, names=args.names, progress=progress)
    failed = 0
    for result in results:
        if result.error:
            failed += 1
            print(f"dreamrelation: {result.name}: {result.error}", file=sys.stderr)
            continue
        print(f"{result.name}: {result.engine} masks of {' and '.join(result.subjects or ('?', '?'))}")
        for line in ([result.notice] if result.notice else []) + result.flags:
            print(f"  ! {line}")
    print(f"masks written for {len(results) - failed} of {len(results)} video(s) under {Path(args.data) / 'masks'}")
    return 2 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from dreamrelation.export import export_comfyui
    from dreamrelation.generate import resolve_lora_files
    from dreamrelation.models import resolve_model

    run = RunDir(args.run_folder)
    loras = resolve_lora_files(run.root)  # one line when the folder or its LoRA is missing or unreadable
    if args.format == "diffusers":
        if args.output is not None:
            raise CliError(f"--output is for --format comfyui; the diffusers LoRA is {', '.join(map(str, loras.values()))}")
        print("\n".join(map(str, loras.values())))
        return 0
    if args.output is not None and len(loras) > 1:
        raise CliError(f"--output names one file, and this run has a LoRA per expert ({len(loras)}); leave it out")
    if not run.config.is_file():
        raise CliError(f"{run.root} has no config.yaml, which names the model the LoRA was trained on")
    spec = resolve_model(ModelConfig.model_validate(read_yaml_sections(run.config).get("model", {}))).spec
    try:
        written = [export_comfyui(lora, spec, args.output) for lora in loras.values()]
    except ValueError as error:  # the model family has no ComfyUI format
        raise CliError(str(error)) from None
    print("\n".join(map(str, written)))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from dreamrelation.hub import push_relation

    print(f"published {push_relation(args.run_folder, args.repo, private=args.private)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dreamrelation", description="Relation-centric video customisation.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="Train a relation LoRA on a dataset folder.")
    train.add_argument("--config", type=Path, help="YAML file with model/data/method/train sections.")
    train.add_argument("--preset", choices=list(TRAINING_PRESETS), default="paper",
                       help=preset_help().replace("%", "%%") + " (default: %(default)s)")
    _add_options(train, TRAIN_OPTIONS)
    train.set_defaults(handler=cmd_train)

    ingest = commands.add_parser("ingest", help="Normalise raw videos into a relation dataset folder.")
    ingest.add_argument("videos", nargs="+", type=Path, help="Video files (mp4, mov, webm, mkv, avi, gif).")
    ingest.add_argument("--data", type=Path, required=True, help="The dataset folder to add them to.")
    ingest.add_argument("--caption", help="One caption for every video; else each VIDEO.txt beside its video.")
    _add_options(ingest, INGEST_OPTIONS)
    ingest.set_defaults(handler=cmd_ingest)

    masks = commands.add_parser("masks", help="Make the two subject masks of every video of a dataset folder.")
    masks.add_argument("--data", type=Path, required=True, help="The dataset folder; fills DATA/masks/.")
    masks.add_argument("--subjects", help="The two subject phrases for every video, e.g. 'dog,cat' "
                       "(default: from each caption).")
    masks.add_argument("--names", nargs="+", help="Only these videos (file stems).")
    _add_options(masks, MASKS_OPTIONS)
    masks.set_defaults(handler=cmd_masks)

    generate = commands.add_parser("generate", help="Generate a video with a relation LoRA.")
    generate.add_argument("--lora", help="A training output folder, its relation_lora.safetensors or the Hub id "
                          "(user/name) of a published relation (omit to generate with the base model alone).")
    generate.add_argument("--output", type=Path, required=True, help="The .mp4 to write.")
    _add_options(generate, GENERATE_OPTIONS)
    generate.set_defaults(handler=cmd_generate)

    export = commands.add_parser("export", help="Give a trained relation LoRA in diffusers' or ComfyUI's format.")
    export.add_argument("run_folder", type=Path, metavar="RUN_FOLDER", help="A training output folder.")
    export.add_argument("--format", choices=["diffusers", "comfyui"], default="diffusers",
                        help="'diffusers': print the LoRA file training wrote; 'comfyui': write its twin in the "
                        "keys of the model's original checkpoints, which ComfyUI loads, and print its path "
                        "(default: %(default)s)")
    default_output = comfyui_lora_path(RunDir(Path("RUN_FOLDER")).lora)
    export.add_argument("--output", type=Path, help=f"Where the ComfyUI file goes (default: {default_output}).")
    export.set_defaults(handler=cmd_export)

    push = commands.add_parser("push", help="Publish a trained relation to the Hugging Face Hub.")
    push.add_argument("run_folder", type=Path, metavar="RUN_FOLDER", help="A training output folder.")
    # No --token: a flag would land in the shell's history; the hub client reads HF_TOKEN or its stored login.
    push.add_argument("--repo", required=True, help="The model repo, user/name (created when missing); the token "
                      "comes from HF_TOKEN or `hf auth login`.")
    push.add_argument("--private", action="store_true", help="Create the repo private.")
    push.set_defaults(handler=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dreamrelation` console script; returns the exit code."""
    args = build_parser().parse_args(argv)  # first: --help and usage errors answer before torch loads
    from dreamrelation.data.dataset import DatasetError
    from dreamrelation.data.video import VideoError
    from dreamrelation.data.ingest import IngestError
    from dreamrelation.generate import GenerationError
    from dreamrelation.hub import HubError
    from dreamrelation.masks.grounding import DetectorUnavailable
    from dreamrelation.masks.sam2 import SegmenterUnavailable
    from dreamrelation.masks.subjects import SubjectError
    from dreamrelation.models import ModelLoadError
    from dreamrelation.models.base import ExpertChoiceError
    from dreamrelation.models.memory import InsufficientMemory
    from dreamrelation.runtime import quiet_loading_bars

    quiet_loading_bars()
    try:
        return args.handler(args)
    except ValidationError as error:
        message = describe_validation_error(error)
    except (
        CliError, DatasetError, VideoError, IngestError, SubjectError, DetectorUnavailable, SegmenterUnavailable,
        GenerationError, HubError, ModelLoadError, InsufficientMemory, ExpertChoiceError, OSError,
    ) as error:
        message = str(error)
    except KeyboardInterrupt:
        message = "interrupted"
    print(f"dreamrelation: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
