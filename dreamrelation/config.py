"""Pydantic settings, one model per stage. Every value has a default that works and a help text.

The CLI, the app and the Python API all build these objects; each stage receives its own object and
reads nothing else, so no setting is read in two places.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


MAX_SEED = 2**32 - 1  # what torch.Generator.manual_seed and numpy take
MAX_SIDE = 4096  # pixels of a clip's height or width
MAX_TRAIN_STEPS = 100_000
MAX_DENOISING_STEPS = 1000

REPO_ROOT = Path(__file__).resolve().parents[1]
# assets/ (the toy model's weights, the example datasets) ships with the source tree, not inside the wheel:
# an install that is not editable points $DREAMRELATION_ASSETS at a checkout's assets/ folder.
ASSETS_ENV = "DREAMRELATION_ASSETS"
ASSETS_DIR = Path(os.environ.get(ASSETS_ENV) or REPO_ROOT / "assets")
TOY_MODEL_DIR = ASSETS_DIR / "models" / "toy"
EXAMPLES_DIR = ASSETS_DIR / "examples"


def default_cache_dir() -> Path:
    """Where built models and encoded latents are cached: `$DREAMRELATION_CACHE` or ~/.cache/dreamrelation."""
    return Path(os.environ.get("DREAMRELATION_CACHE", Path.home() / ".cache" / "dreamrelation"))


def describe_validation_error(error: ValidationError) -> str:
    """One line for a pydantic error of these settings: each violation as 'field: what is wrong', with the
    field's whole allowed range and the value given (what the CLI and the app show)."""
    model = {config.__name__: config for config in _Settings.__subclasses__()}.get(error.title)
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        bounds = _bounds(model, item["loc"]) if item["type"] in _BOUND_ERRORS else None
        if bounds is not None:
            message = f"must be {bounds}, got {item['input']!r}"
        elif item["type"] not in ("value_error", "missing") and "got" not in message and "input" in item:
            message = f"{message}, got {item['input']!r}"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _bounds(model: type[BaseModel] | None, loc: tuple) -> str | None:
    """'from A to B' (or 'at least A' / 'at most B') of the field at `loc` of `model`, None when unknown."""
    field = None
    for name in loc:
        if model is None or name not in model.model_fields:
            return None
        field = model.model_fields[name]
        nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        model = field.annotation if nested else None
    limits = {name: getattr(rule, name) for rule in field.metadata for name in ("gt", "ge", "lt", "le")
              if hasattr(rule, name)}
    low = f"above {limits['gt']}" if "gt" in limits else (f"at least {limits['ge']}" if "ge" in limits else None)
    high = f"below {limits['lt']}" if "lt" in limits else (f"at most {limits['le']}" if "le" in limits else None)
    if "ge" in limits and "le" in limits:
        return f"from {limits['ge']} to {limits['le']}"
    return " and ".join(part for part in (low, high) if part) or None


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Settings):
    """Which base model to load and where it runs."""

    name: str = Field(
        "toy",
        description="Base model: 'toy' (embedded, the default), a registered name (README, 'Models'; e.g. "
        "'tiny-random', random weights for tests), a Hub id, or a folder holding a saved pipeline of a "
        "supported family.",
    )
    device: str = Field("auto", description="'auto' (CUDA when available, else CPU), 'cpu' or 'cuda[:N]'.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Base weights' dtype: 'auto' is bf16 on GPU and fp32 on CPU. Adapters always stay fp32."
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Cache for built models and latents.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the tiny-random model's weights.")
    memory: Literal["auto", "bf16", "fp8", "offload", "nf4"] = Field(
        "auto",
        description="How the frozen base is stored: 'bf16' as loaded; 'fp8' in float8 (layerwise casting, half "
        "the memory); 'offload' in CPU memory, a layer or block at a time on the GPU (slower); 'nf4' in 4 bits "
        "(bitsandbytes, CUDA only). 'auto': the first of bf16, fp8, offload whose estimated peak fits the GPU's "
        "free memory (plain fp32 on the CPU).",
    )


class DataConfig(_Settings):
    """The relation dataset folder and how its videos become training clips."""

    data_dir: Path = Field(..., description="Folder with NAME.mp4|.mov|.webm videos, NAME.txt captions, masks/NAME/.")
    masks_dir: Path | None = Field(None, description="Masks folder when not DATA/masks (the reference's layout).")
    num_frames: int | None = Field(
        None, ge=1, description="Frames per clip (the model's rule, e.g. 4k+1); None: the model's default."
    )
    height: int | None = Field(
        None, ge=16, le=MAX_SIDE, description="Clip height, pixels (the model's multiple, e.g. 16); None: its default."
    )
    width: int | None = Field(
        None, ge=16, le=MAX_SIDE, description="Clip width, pixels (the model's multiple, e.g. 16); None: its default."
    )
    frame_sampling: Literal["first", "uniform"] = Field(
        "first", description="'first': the first frames at the source rate; 'uniform': spread over the whole video."
    )


class IngestConfig(_Settings):
    """How raw uploads become the normalised clips of a relation dataset."""

    num_frames: int | None = Field(
        None, ge=1, description="Frames per clip (the model's rule, e.g. 4k+1); None: the model's default."
    )
    height: int | None = Field(
        None, ge=16, le=MAX_SIDE, description="Clip height (the model's multiple, e.g. 16); None: the model's default."
    )
    width: int | None = Field(
        None, ge=16, le=MAX_SIDE, description="Clip width (the model's multiple, e.g. 16); None: the model's default."
    )
    fps: float | None = Field(None, gt=0, description="Frame rate clips are resampled to; None: the model's.")
    frame_sampling: Literal["first", "uniform"] = Field(
        "first", description="'first': the first seconds at the target rate; 'uniform': spread over the whole video."
    )
    max_file_mb: float = Field(500.0, gt=0, description="Largest upload accepted, in MB.")
    max_duration_s: float = Field(300.0, gt=0, description="Longest video accepted, in seconds.")
    max_pixels: int = Field(3840 * 2160, gt=0, description="Largest frame accepted (width x height).")
    max_caption_words: int = Field(
        256, ge=1, description="Longest caption accepted, in words: a check before anything is written (the "
        "model's own token limit is checked when training or generation encodes the caption).",
    )


class MasksConfig(_Settings):
    """Automatic subject masks: detector boxes on a seed frame, then video propagation."""

    engine: Literal["auto", "sam2", "basic"] = Field(
        "auto",
        description="'sam2': grounding detector + SAM2 video propagation; 'basic': offline segmenter for plain "
        "backgrounds; 'auto': sam2 when its weights load, else basic (and the result says so).",
    )
    detector: str = Field(
        "IDEA-Research/grounding-dino-tiny",
        description="Text-grounded box detector: a GroundingDINO or OWLv2 Hub id (e.g. "
        "google/owlv2-base-patch16-ensemble) or a local folder.",
    )
    sam2_model: str = Field(
        "facebook/sam2.1-hiera-tiny",
        description="SAM2 video model: facebook/sam2.1-hiera-{tiny,small,base-plus,large} or a local folder.",
    )
    sam2_input_size: int | None = Field(
        None,
        ge=64,
        description="Side of SAM2's square input in pixels (multiple of 32); None: 1024 (native) on GPU, 512 on "
        "CPU, where 1024 costs ~15 s a frame (benchmarks/masks.py).",
    )
    frame_stride: int | None = Field(
        None,
        ge=1,
        description="Run SAM2 on every N-th frame and interpolate the masks between (motion-compensated); None: 1 "
        "on GPU, 4 on CPU (interpolation alone keeps mean IoU 0.98 at stride 4 on fast Shapes World motion).",
    )
    seed_frame: int = Field(0, ge=0, description="Frame whose detector boxes start the propagation.")
    box_threshold: float = Field(0.25, ge=0, le=1, description="Detector score needed for a box.")
    text_threshold: float = Field(0.25, ge=0, le=1, description="GroundingDINO text-match threshold.")
    device: str = Field("auto", description="'auto' (CUDA when available, else CPU), 'cpu' or 'cuda[:N]'.")

    def sam2_settings(self, on_gpu: bool) -> tuple[int, int]:
        """(input size, frame stride) for a device: what is set, else the fastest sound default there."""
        size = self.sam2_input_size or (1024 if on_gpu else 512)
        stride = self.frame_stride or (1 if on_gpu else 4)
        return size, stride


class MaskCorrection(_Settings):
    """Clicked points that correct one subject's mask on one frame of a dataset video."""

    frame: int = Field(0, ge=0, le=100_000, description="Index of the frame the points were clicked on.")
    subject: Literal[1, 2] = Field(1, description="The subject the points are for: 1 or 2.")
    points: list[tuple[float, float, Literal[0, 1]]] = Field(
        ..., min_length=1, max_length=100,
        description="Points as [[x, y, label], ...] in pixels of the frame; label 1 on the subject, 0 not.",
    )

    @field_validator("points", mode="before")
    @classmethod
    def _parse_json(cls, value):
        if isinstance(value, str):  # what a text box or an API client sends
            try:
                value = json.loads(value or "[]")
            except json.JSONDecodeError:
                value = None
        if not isinstance(value, list) or not all(isinstance(p, (list, tuple)) and len(p) == 3 for p in value):
            raise ValueError("write the points as [[x, y, label], ...] (label 1 on the subject, 0 not)")
        return value


class MethodConfig(_Settings):
    """The DreamRelation method: adapters, hybrid-mask loss and relational contrastive loss."""

    mode: Literal["dreamrelation", "direct-lora"] = Field(
        "dreamrelation",
        description="'dreamrelation': relation/subject/ffn adapters with hybrid masks; "
        "'direct-lora': one adapter on q,k,v,out and plain MSE (the paper's baseline).",
    )
    relation_placement: Literal["qk", "q", "v"] = Field(
        "qk", description="Projections of the relation adapter ('qk' is the paper's; others are ablations)."
    )
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank of the relation and subject adapters.")
    alpha: float | None = Field(
        None, gt=0, description="LoRA alpha of the relation and subject adapters; None: the rank (scale 1).",
    )
    ffn_rank: int | None = Field(None, ge=1, description="Rank of the ffn adapter; None: same as rank.")
    ffn_alpha: float | None = Field(None, gt=0, description="Alpha of the ffn adapter; None: same as alpha.")
    subject_adapters: bool = Field(True, description="Train subject1/subject2 adapters (off: relation mode only).")
    relation_share: float | None = Field(
        None, gt=0, le=1,
        description="Share of steps in relation mode, the rest split between the subject modes; None: every mode "
        "equally often (the paper's: a third each).",
    )
    subject_dropout: float = Field(
        0.0, ge=0, lt=1,
        description="Share of relation-mode steps trained without the subject adapters, as generation runs "
        "(ours; 0: the paper's, every relation-mode step with them).",
    )
    dropout_subject_weight: float | None = Field(
        None, ge=0,
        description="Loss weight of the latent cells a subject touches in relation-mode steps without the subject "
        "adapters, the other cells' being 1 (ours): 0 teaches the adapters generation keeps where the subjects "
        "are not, never how they look; None: relation mode's hybrid-mask loss.",
    )
    subject_modes_train_ffn: bool = Field(
        True,
        description="Train the ffn adapter in the subject modes too (the paper's); off (ours): the subject modes train "
        "the subject adapters alone, so no adapter generation keeps learns from a subject-masked step.",
    )
    mask_loss: bool = Field(True, description="Weight the loss with the subject/relation masks (hybrid masks).")
    lambda_mask: float = Field(50.0, ge=0, description="λ_m: weight of the masked term, loss·(1 + λ_m·m²).")
    contrastive: bool = Field(True, description="Add the space-time relational contrastive loss.")
    lambda_contrastive: float = Field(0.01, ge=0, description="λ_1: weight of the contrastive loss.")
    temperature: float = Field(0.07, gt=0, description="τ of the InfoNCE loss.")
    num_positives: int = Field(4, ge=1, description="Positives per anchor drawn from the positive bank.")
    num_negatives: int = Field(10, ge=1, description="Negatives: the clip's own frames, then the negative bank.")
    positive_bank_size: int = Field(10, ge=1, description="FIFO size of the bank of relational dynamics.")
    negative_bank_size: int = Field(64, ge=1, description="FIFO size of the bank of single-frame features.")

    # alpha stays None here and is resolved on reading: a saved config.yaml then keeps "alpha follows the rank",
    # so reloading it with another --rank keeps the scale alpha/rank at 1.
    @property
    def resolved_alpha(self) -> float:
        """The relation and subject adapters' alpha: `alpha`, or the rank when unset."""
        return float(self.rank) if self.alpha is None else self.alpha

    @property
    def resolved_ffn_rank(self) -> int:
        """The ffn adapter's rank: `ffn_rank`, or `rank` when unset."""
        return self.ffn_rank or self.rank

    @property
    def resolved_ffn_alpha(self) -> float:
        """The ffn adapter's alpha: `ffn_alpha`, or the resolved alpha when unset."""
        return self.ffn_alpha or self.resolved_alpha


class TrainConfig(_Settings):
    """The optimisation loop."""

    output_dir: Path = Field(Path("outputs/relation"), description="Where checkpoints, progress and the LoRA go.")
    steps: int = Field(2000, ge=1, le=MAX_TRAIN_STEPS, description="Optimizer steps.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(200, ge=0, description="Linear warm-up steps (capped at 10% of steps), then cosine.")
    caption_dropout: float = Field(0.1, ge=0, le=1, description="Probability of training on the empty caption.")
    sigma_sampling: Literal["uniform", "logit-normal", "shifted"] = Field(
        "uniform",
        description="How each step draws its noise level σ: 'uniform' (the method's), 'logit-normal' "
        "(sigmoid of a normal: sigma_logit_mean, sigma_logit_std) or 'shifted' (uniform, then "
        "shift·σ/(1+(shift−1)·σ) with sigma_shift); the last two put more steps at high noise, where layouts form.",
    )
    sigma_logit_mean: float = Field(0.0, description="Mean of the normal under 'logit-normal' σ sampling.")
    sigma_logit_std: float = Field(1.0, gt=0, description="Standard deviation of the normal under 'logit-normal'.")
    sigma_shift: float = Field(3.0, gt=0, description="The shift of 'shifted' σ sampling (1: uniform).")
    experts: Literal["high", "low", "both"] = Field(
        "high",
        description="Which expert of a model with two (a high-noise and a low-noise transformer) trains: 'high' the "
        "high-noise one, where a clip's layout and motion form (the relation; docs/method.md §5), 'low' the "
        "low-noise one (appearance), 'both' each on its own noise levels. A one-transformer model has one expert "
        "for every noise level: 'high'.",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of every random choice in training.")
    max_grad_norm: float | None = Field(
        None, gt=0, description="Clip the adapters' gradient norm to this before each step; None: no clipping, as "
        "the reference trains.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    checkpoint_every: int = Field(500, ge=1, description="Save a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="How many newest checkpoints to keep.")
    resume: bool = Field(False, description="Continue from the newest checkpoint in output_dir.")
    eval_every: int = Field(
        50, ge=0, description="Score the evaluation loss (fixed clips, noise and σ, relation mode, no gradients; "
        "train/evaluation.py) every N steps and at the last (0: never).",
    )
    eval_points: int = Field(4, ge=1, le=64, description="Fixed (clip, noise, σ) points of the evaluation loss.")
    prior_dir: Path | None = Field(
        None, description="Prior preservation (docs/method.md §8; off by default): a folder of clips the base model "
        "generated for other captions (NAME.mp4 and NAME.txt, no masks; train/prior.py writes one). A share "
        "of the steps (prior_share) trains on them with the adapters generation keeps and the plain loss, so the "
        "relation LoRA keeps the base's behaviour for other subjects and relations.",
    )
    prior_share: float = Field(0.25, ge=0, lt=1, description="Share of the steps on prior clips, with prior_dir.")
    sample_every: int = Field(0, ge=0, description="Render a sample video every N steps (0: never).")
    sample_prompt: str | None = Field(None, description="Prompt of the samples; None: the first caption.")
    log_every: int = Field(1, ge=1, description="Append to progress.jsonl every N steps.")


class GenerateConfig(_Settings):
    """One generation request."""

    prompt: str = Field(..., description="What to generate, e.g. 'A bear is shaking hands with a raccoon.'")
    negative_prompt: str = Field("", description="What to steer away from.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the initial noise.")
    steps: int | None = Field(
        None, ge=2, le=MAX_DENOISING_STEPS, description="Denoising steps (at least 2); None: the model's default."
    )
    guidance_scale: float | None = Field(
        None, ge=0, le=50, description="Classifier-free guidance scale; None: the model's default."
    )
    num_frames: int | None = Field(
        None, ge=1, description="Frames (the model's rule, e.g. 4k+1); None: the model's default."
    )
    height: int | None = Field(
        None, ge=16, le=MAX_SIDE, description="Height in pixels (the model's multiple, e.g. 16); None: model default."
    )
    width: int | None = Field(
        None, ge=16, le=MAX_SIDE, description="Width in pixels (the model's multiple, e.g. 16); None: model default."
    )
    lora_scale: float = Field(1.0, ge=0, le=10, description="Strength of the relation LoRA.")
    fuse_lora: bool = Field(False, description="Fuse the LoRA into the weights (faster steps).")
    cpu_offload: bool = Field(False, description="Model CPU offload (GPU memory saver).")
    vae_tiling: bool = Field(False, description="Decode in tiles (GPU memory saver).")
    fps: int | None = Field(None, ge=1, description="Frame rate of the written mp4; None: the model's.")
    compare: bool = Field(
        False, description="Also generate the same prompt, seed and settings with the base model alone, and write "
        "both side by side, labelled (OUTPUT_compare.mp4), beside the base's own video (OUTPUT_base.mp4).",
    )

    @model_validator(mode="after")
    def _check(self):
        if not self.prompt.strip():
            raise ValueError("prompt is empty: describe the video, e.g. 'A bear is shaking hands with a raccoon.'")
        return self


class RunConfig(_Settings):
    """Everything one training run needs; saved beside its outputs as config.yaml."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def read_yaml_sections(path: Path) -> dict[str, dict]:
    """The {section: {field: value}} of a run's YAML file (as RunConfig.to_yaml writes it), unvalidated."""
    return yaml.safe_load(Path(path).read_text()) or {}


class StudioConfig(_Settings):
    """How the app shares its machine or cluster between jobs and people (app.py's flags, each with an
    environment variable of the same meaning: STUDIO_ENV)."""

    gpus: str | None = Field(
        None, description="GPU ids training jobs may use, comma-separated as CUDA_VISIBLE_DEVICES names them (e.g. "
        "'0,1,2,3'); default: every visible GPU (one slot on a machine without GPUs).",
    )
    cluster: str | None = Field(
        None, description="A Ray cluster to send training jobs to: its dashboard address (http://HOST:8265) or "
        "ray://HOST:10001; default: train on this machine. The data home must be on storage every node sees at "
        "the same path.",
    )
    max_gpus_per_job: int = Field(8, ge=1, le=1024, description="The most GPUs one job may ask for on a cluster.")
    max_jobs_per_owner: int = Field(
        3, ge=1, le=1000, description="Jobs one person may have queued or training at once.",
    )
    max_disk_gb_per_owner: float = Field(
        20.0, gt=0, description="Disk one person's datasets and training runs may use, in GB.",
    )


STUDIO_ENV = {
    "gpus": "DREAMRELATION_GPUS",
    "cluster": "RAY_ADDRESS",
    "max_gpus_per_job": "DREAMRELATION_MAX_GPUS_PER_JOB",
    "max_jobs_per_owner": "DREAMRELATION_MAX_JOBS",
    "max_disk_gb_per_owner": "DREAMRELATION_MAX_DISK_GB",
}
