"""Generation: the base pipeline plus a relation LoRA -> frames and an mp4."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dreamrelation.config import GenerateConfig, ModelConfig
from dreamrelation.models import LoadedModel, load_model
from dreamrelation.outputs import LORA_FILENAME, RunDir

LORA_ADAPTER_NAME = "relation"


class GenerationError(ValueError):
    """A generation request that cannot run; the message says what to change."""


@dataclass
class Comparison:
    """The base model's video of the same request, and both side by side."""

    base_frames: np.ndarray  # uint8 (F, H, W, 3): the request without the relation
    base_path: Path
    frames: np.ndarray  # uint8 (F, LABEL + H, 2 W, 3): base left, relation right, a label band above each
    path: Path


@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 (F, H, W, 3)
    path: Path
    comparison: Comparison | None = None  # when the request asked to compare with the base


def comparison_paths(output: Path) -> tuple[Path, Path]:
    """(the base model's video, the side-by-side video) written beside a generation's `output`."""
    return output.with_name(f"{output.stem}_base.mp4"), output.with_name(f"{output.stem}_compare.mp4")


def side_by_side(left: np.ndarray, right: np.ndarray, labels: tuple[str, str]) -> np.ndarray:
    """Two clips uint8 (F, H, W, 3) -> one uint8 (F, B + H, 2 W, 3): `left` beside `right`, each under a black
    band of height B (even, about a twelfth of H, at least 12 px) holding its label in white, as large as fits."""
    from PIL import Image, ImageDraw

    frames, height, width, _ = left.shape
    band = max(12, height // 12 + height // 12 % 2)
    strip = Image.new("RGB", (2 * width, band))
    draw = ImageDraw.Draw(strip)
    for index, label in enumerate(labels):
        size = band - 2  # the largest that fits the band, then smaller until the label fits its half
        while size > 6 and draw.textlength(label, font_size=size) > width - 4:
            size -= 1
        draw.text((index * width + 2, 0), label, fill=(255, 255, 255), font_size=size)
    header = np.broadcast_to(np.asarray(strip), (frames, band, 2 * width, 3))
    return np.concatenate([header, np.concatenate([left, right], axis=2)], axis=1)


def resolve_lora_files(lora: Path) -> dict[str, Path]:
    """A training output folder or a .safetensors file -> {pipeline transformer: its LoRA file}, each checked to
    hold LoRA weights. A folder gives one file per expert it trained (RunDir.lora_files); a file is the
    transformer's."""
    lora = Path(lora)
    files = RunDir(lora).lora_files() if lora.is_dir() else {"transformer": lora}
    if not files or not all(path.is_file() for path in files.values()):
        missing = RunDir(lora).lora if lora.is_dir() else lora
        raise GenerationError(f"no relation LoRA at {missing}: pass a training output folder or its {LORA_FILENAME}")
    for path in files.values():
        _check_lora_file(path)
    return files


def _check_lora_file(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception:
        raise GenerationError(f"{path} is not a readable .safetensors LoRA file") from None
    if not keys or not all("lora" in key for key in keys):
        raise GenerationError(f"{path} holds no LoRA weights (keys must contain 'lora')")


def with_model_defaults(loaded: LoadedModel, config: GenerateConfig) -> GenerateConfig:
    """`config` with the steps and guidance scale it leaves open (None) set to the model's (its folder's
    dreamrelation.json, else its family's pipeline defaults)."""
    resolved = loaded.generation.resolve(config.steps, config.guidance_scale)
    return config.model_copy(update={"steps": resolved.steps, "guidance_scale": resolved.guidance_scale})


def clip_settings(loaded: LoadedModel, config: GenerateConfig) -> tuple[int, int, int]:
    """(num_frames, height, width) of a request, the model's defaults filling what it leaves open.

    Raises GenerationError for a request the model cannot take (too many frames, an over-long prompt)."""
    defaults = loaded.defaults
    num_frames = config.num_frames or defaults.num_frames
    if problem := loaded.spec.clip_shape_problem(num_frames, config.height, config.width):
        raise GenerationError(problem)
    for name, text in (("prompt", config.prompt), ("negative_prompt", config.negative_prompt)):
        if problem := loaded.spec.text_length_problem(loaded.pipe, text):
            raise GenerationError(f"{name} is {problem}")
    return num_frames, config.height or defaults.height, config.width or defaults.width


@contextmanager
def relation_lora(loaded: LoadedModel, lora_files: dict[str, Path] | None, scale: float = 1.0, fuse: bool = False):
    """A `with` block in which the pipeline carries an exported relation LoRA (stock diffusers loading, each
    file into its own expert) at `scale`, optionally fused into the weights; on leaving it the pipeline is as
    before (unfused, unloaded), so one loaded pipeline serves requests with different relations.
    `lora_files` ({pipeline transformer: file}, from resolve_lora_files) None: the base model alone."""
    if not lora_files:
        yield
        return
    pipe = loaded.pipe
    for component, path in lora_files.items():
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=LORA_ADAPTER_NAME,
                               **loaded.spec.lora_load_kwargs(component))
    components = list(lora_files)
    try:
        if fuse:  # merged into the base weights: no adapter overhead per step
            pipe.fuse_lora(components=components, lora_scale=scale, adapter_names=[LORA_ADAPTER_NAME])
        else:
            pipe.set_adapters([LORA_ADAPTER_NAME], [scale])
        yield
    finally:
        if fuse:
            pipe.unfuse_lora(components=components)
        pipe.unload_lora_weights()


def render(loaded: LoadedModel, config: GenerateConfig, callback=None) -> np.ndarray:
    """Run the pipeline for one request with whatever adapters are active; returns uint8 (F, H, W, 3).

    `callback` is the pipeline's `callback_on_step_end(pipe, step, timestep, {"latents": ...})`, which may
    return replacement latents.
    """
    num_frames, height, width = clip_settings(loaded, config)
    config = with_model_defaults(loaded, config)
    pipe = loaded.pipe
    output = pipe(
        prompt=config.prompt,
        negative_prompt=config.negative_prompt,
        num_frames=num_frames,
        height=height,
        width=width,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(config.seed),
        max_sequence_length=loaded.spec.max_text_length(pipe),
        output_type="np",
        callback_on_step_end=callback,
    )
    return (np.clip(output.frames[0], 0.0, 1.0) * 255.0).round().astype(np.uint8)


def generate(
    model: ModelConfig,
    lora: Path | None,
    config: GenerateConfig,
    output: Path,
    loaded: LoadedModel | None = None,
) -> GenerationResult:
    """Generate one video with the base model and (unless `lora` is None) a relation LoRA; writes `output` (.mp4).

    With `config.compare` it first renders the same request with the base model alone (before the relation is
    loaded, so the base is untouched) and writes it and both side by side beside `output` (comparison_paths).
    Everything is validated before the model loads. Returns the frames (uint8 (F, H, W, 3)), the path and, when
    compared, the Comparison.
    """
    from dreamrelation.data.video import write_video
    from dreamrelation.hub import relation_folder  # `lora` may also be a published relation's Hub id

    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise GenerationError(f"output must be an .mp4 file, got {output.name!r}")
    if config.compare and lora is None:
        raise GenerationError("compare shows a relation beside the base model: choose a relation (--lora) first")
    lora_files = resolve_lora_files(relation_folder(lora)) if lora is not None else None
    loaded = loaded or load_model(model)
    if config.cpu_offload and loaded.device.type == "cuda":
        loaded.pipe.enable_model_cpu_offload()
    if config.vae_tiling:
        loaded.pipe.vae.enable_tiling()
    fps = config.fps or loaded.defaults.fps
    base = render(loaded, config) if config.compare else None
    with relation_lora(loaded, lora_files, config.lora_scale, config.fuse_lora):
        frames = render(loaded, config)
    comparison = None
    if base is not None:
        base_path, compare_path = comparison_paths(output)
        both = side_by_side(base, frames, ("base model", "with the relation"))
        comparison = Comparison(base, write_video(base_path, base, fps=fps), both, write_video(compare_path, both, fps=fps))
    return GenerationResult(frames=frames, path=write_video(output, frames, fps=fps), comparison=comparison)
