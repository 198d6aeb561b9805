"""What the trainer, exporter and generator need from a base model family.

One subclass per family (Mochi today; CogVideoX or HunyuanVideo would be new files): it says how to load
the pipeline, where each adapter role goes, how a clip and a caption are encoded, how subject masks map to
its latent grid, and how one training forward pass is computed. The trainer never names a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch


# Beside model_index.json, a pipeline folder may say the clip shape it was trained at (the toy model does);
# without it, its family's defaults apply.
CLIP_DEFAULTS_FILE = "dreamrelation.json"


@dataclass(frozen=True)
class ClipDefaults:
    """The resolution a model generates and trains at unless told otherwise."""

    num_frames: int
    height: int
    width: int
    fps: int


def read_clip_defaults(folder: Path, family_defaults: ClipDefaults) -> ClipDefaults:
    """The clip defaults a pipeline folder declares in CLIP_DEFAULTS_FILE, else `family_defaults`."""
    path = Path(folder) / CLIP_DEFAULTS_FILE
    if not path.is_file():
        return family_defaults
    return ClipDefaults(**json.loads(path.read_text(encoding="utf-8"))["clip_defaults"])


def write_clip_defaults(folder: Path, defaults: ClipDefaults) -> Path:
    """Record the clip shape a saved pipeline was trained at (read back by read_clip_defaults); returns the file."""
    path = Path(folder) / CLIP_DEFAULTS_FILE
    path.write_text(json.dumps({"clip_defaults": asdict(defaults)}, indent=1) + "\n", encoding="utf-8")
    return path


class ModelSpecification(ABC):
    """A base model family. Subclasses are stateless; the loaded pipeline is passed in."""

    pipeline_class_name: str
    defaults: ClipDefaults
    max_num_frames: int  # the longest clip the family generates or trains on
    # Projection names (relative to one attention module) of each adapter placement.
    projections: dict[str, tuple[str, ...]]

    @abstractmethod
    def load_pipeline(self, source: str, dtype: torch.dtype, device: torch.device):
        """Load the family's diffusers pipeline from a folder or Hub id, on `device` in `dtype`."""

    @abstractmethod
    def attention_paths(self, transformer: torch.nn.Module) -> list[str]:
        """Full module paths of the attention modules that carry adapters, in block order."""

    def target_modules(self, transformer: torch.nn.Module, placement: str) -> list[str]:
        """Full module paths of the Linear layers of one placement (a key of `projections`) in every block.

        Full paths matter: a bare `to_q` would also match unrelated layers (e.g. a pooler). Call this before
        the first adapter is added: wrapped layers are no longer `nn.Linear`.
        """
        modules = dict(transformer.named_modules())
        paths = []
        for attention in self.attention_paths(transformer):
            dead = self.unused_projections(modules[attention])
            for projection in self.projections[placement]:
                path = f"{attention}.{projection}"
                if projection not in dead and isinstance(modules.get(path), torch.nn.Linear):
                    paths.append(path)
        return paths

    def unused_projections(self, attention: torch.nn.Module) -> set[str]:
        """Projections of this attention module whose output never reaches the model's output (an adapter
        there would train nothing)."""
        return set()

    @abstractmethod
    def max_text_length(self, pipe) -> int:
        """Number of text tokens the pipeline encodes a caption to."""

    def text_length_problem(self, pipe, text: str) -> str | None:
        """'N tokens long and the model reads at most L; shorten it' when `text` is longer than the tokens the
        pipeline reads (its tokenizer would cut it silently), else None."""
        count = len(pipe.tokenizer(text, verbose=False).input_ids)  # verbose: no warning of its own
        limit = self.max_text_length(pipe)
        if count <= limit:
            return None
        return f"{count} tokens long and the model reads at most {limit}; shorten it"

    def clip_length_problem(self, num_frames: int) -> str | None:
        """A line saying that `num_frames` is more than the family handles, else None."""
        if num_frames <= self.max_num_frames:
            return None
        return f"num_frames: at most {self.max_num_frames} for this model, got {num_frames}"

    @abstractmethod
    def encode_prompts(self, pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (embeddings (B, L, D), attention mask (B, L) bool), on the pipeline's device."""

    @abstractmethod
    def encode_clip(self, pipe, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames (F, H, W, 3) -> VAE posterior (mean, logvar), each (C, F', H', W') fp32, unnormalised."""

    @abstractmethod
    def normalize_latents(self, config, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents (B, C, F', H', W') -> the transformer's latent space, given the VAE config (latent mean,
        std and scaling factor): the inverse of the pipeline's decode scaling."""

    @abstractmethod
    def masks_to_latent_grid(self, masks: torch.Tensor) -> torch.Tensor:
        """Pixel masks (S, F, H, W) in [0, 1] -> latent-grid masks (S, F', H', W')."""

    @abstractmethod
    def training_forward(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One flow-matching forward pass.

        Takes clean latents and noise (B, C, F', H', W'), sigmas (B,) in [0, 1], text (B, L, D) and mask (B, L),
        and the transformer's compute dtype; returns (prediction, target), both fp32 (B, C, F', H', W').
        """
