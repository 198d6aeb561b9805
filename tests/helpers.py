"""Test data builders shared by the test modules."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dreamrelation.config import DataConfig, RunConfig
from dreamrelation.data.dataset import write_subject_masks
from dreamrelation.data.video import write_video
from dreamrelation.export import export_lora
from dreamrelation.method.adapters import activate_adapters, add_adapters
from dreamrelation.outputs import RunDir


def _square_tracks(rng: np.random.Generator, num_frames: int, height: int, width: int) -> np.ndarray:
    """Return bool (2, F, H, W): a left square moving right and a right square moving left, never touching."""
    side = max(2, min(height, width) // 4)
    # Each square stops one pixel short of the middle, so they end two pixels apart.
    starts = (int(rng.integers(0, 3)), width - side - int(rng.integers(0, 3)))
    ends = (width // 2 - side - 1, width // 2 + 1)
    rows = rng.integers(0, height - side + 1, size=2)
    masks = np.zeros((2, num_frames, height, width), bool)
    for subject in (0, 1):
        xs = np.linspace(starts[subject], ends[subject], num_frames).round().astype(int)
        for frame, x in enumerate(xs):
            masks[subject, frame, rows[subject] : rows[subject] + side, x : x + side] = True
    return masks


def write_two_subject_dataset(
    root: Path,
    num_videos: int = 2,
    num_frames: int = 13,
    height: int = 32,
    width: int = 32,
    caption: str = "A red square is approaching a green square.",
) -> Path:
    """Write a ready relation dataset of two coloured squares approaching each other on a near-black background.

    Takes the folder to fill (created if needed), how many videos, and each video's frame count and even
    size. Writes clipNN.mp4, clipNN.txt and masks/clipNN/frame%05d.png (red subject 1, green subject 2)
    per video, each video's positions and shades seeded by its index, so the result is deterministic.
    Returns root.
    """
    root = Path(root)
    for index in range(num_videos):
        rng = np.random.default_rng(index)
        name = f"clip{index:02d}"
        masks = _square_tracks(rng, num_frames, height, width)
        frames = np.empty((num_frames, height, width, 3), np.uint8)
        frames[:] = rng.integers(0, 20, size=3)
        frames[masks[0]] = (int(rng.integers(200, 256)), 20, 20)
        frames[masks[1]] = (20, int(rng.integers(200, 256)), 20)
        write_video(root / f"{name}.mp4", frames, fps=24)
        (root / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
        write_subject_masks(root / "masks" / name, masks)
    return root


REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """Import a repository script or benchmark (e.g. "scripts/make_examples.py") as a module, by its path."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def transformer_inputs(transformer, seed=0, frames=2, size=4) -> dict:
    """Random inputs of one forward pass of a Mochi or Wan transformer (by its config): latents (1, C, frames,
    size, size) and 7 text tokens of which 5 are valid (a mask for Mochi, zero padding for Wan)."""
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    latents = torch.randn(1, cfg.in_channels, frames, size, size, generator=g)
    if hasattr(cfg, "text_embed_dim"):  # Mochi: joint attention with a text mask
        return dict(hidden_states=latents, encoder_hidden_states=torch.randn(1, 7, cfg.text_embed_dim, generator=g),
                    timestep=torch.tensor([321.0]), return_dict=False,
                    encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool))
    text = torch.randn(1, 7, cfg.text_dim, generator=g)
    text[:, 5:] = 0.0  # Wan: padding is zeros, as WanPipeline gives it
    return dict(hidden_states=latents, encoder_hidden_states=text, timestep=torch.tensor([321.0]), return_dict=False)


def trained_like(model, method):
    """Adapters of `method` on a loaded model's transformer with random (non-zero) weights, as after training;
    returns the transformer."""
    transformer = model.pipe.transformer
    add_adapters(transformer, model.spec, method)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    activate_adapters(transformer, ["relation", "ffn"])
    return transformer


def exported_run(model, model_config, method, folder, caption: str = "A dog is chasing a cat."):
    """Trained-like adapters on a loaded `model` (of `model_config`), exported to the run folder `folder` with the
    card for `caption` and a config.yaml as training leaves them; returns the LoRA file."""
    transformer = trained_like(model, method)
    run = RunConfig(model=model_config, data=DataConfig(data_dir=folder), method=method)
    lora = export_lora(type(model.pipe), {"transformer": transformer}, run, folder, [caption])
    RunDir(folder).config.write_text(run.to_yaml())
    return lora


def write_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay `files` ({path in the repo: local file}) out under `cache` (an HF_HUB_CACHE) as the hub client caches
    a model repo it downloaded: models--USER--NAME/blobs/<sha256>, snapshots/<commit>/<path> linking to its
    blob, refs/main naming the commit. Returns the snapshot folder."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)  # a repo laid out again holds the new files
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def wait_for(condition, what: str, timeout_s: float, poll_s: float = 0.05):
    """Poll `condition` every `poll_s` seconds until it returns something true, which is returned; fail with
    "timed out waiting for WHAT" after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")
