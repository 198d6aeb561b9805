"""The embedded Shapes World base model: a genuine MochiPipeline that loads offline and generates."""

from __future__ import annotations

import numpy as np

from dreamrelation.config import TOY_MODEL_DIR, GenerateConfig, ModelConfig
from dreamrelation.generate import generate
from dreamrelation.models import load_model
from dreamrelation.models.base import ClipShape

MAX_BYTES = 60 * 1024 * 1024


def test_the_toy_model_is_small_and_the_default():
    files = [p for p in TOY_MODEL_DIR.rglob("*") if p.is_file()]
    assert (TOY_MODEL_DIR / "model_index.json").exists() and sum(p.stat().st_size for p in files) <= MAX_BYTES
    assert ModelConfig().name == "toy"


def test_stock_diffusers_loads_it_offline():
    from diffusers import MochiPipeline

    pipe = MochiPipeline.from_pretrained(TOY_MODEL_DIR, local_files_only=True)
    assert type(pipe.transformer).__name__ == "MochiTransformer3DModel"
    assert pipe.vae.config.latents_std is not None and all(s > 0 for s in pipe.vae.config.latents_std)


def test_it_generates_a_video_at_its_clip_size(tmp_path):
    loaded = load_model(ModelConfig(name="toy", device="cpu"))
    assert loaded.defaults == ClipShape(num_frames=25, height=96, width=96, fps=24)
    request = GenerateConfig(prompt="A red circle approaches a blue square.", steps=3, num_frames=7)
    result = generate(ModelConfig(name="toy", device="cpu"), None, request, tmp_path / "toy.mp4", loaded=loaded)
    assert result.frames.shape == (7, 96, 96, 3) and result.path.exists()
    assert result.frames.std() > 1.0 and np.isfinite(result.frames).all()
