"""Data preparation: each clip, caption and mask set encoded once and cached on disk.

A record is keyed by the content of its inputs (video bytes, caption, mask files), the clip settings and a
fingerprint of the encoders, so a second run on the same data encodes nothing, and a changed setting or
model is never silently served stale latents.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dreamrelation.config import DataConfig
from dreamrelation.data.dataset import DatasetError, RelationSample, load_subject_masks
from dreamrelation.data.video import load_clip, probe_video
from dreamrelation.models.base import ClipShape

FORMAT_VERSION = 1


@dataclass
class PreparedDataset:
    """Encoded training records plus the empty caption's encoding (for caption dropout).

    Each record: latent_mean, latent_logvar (C, F', H', W'); prompt_embeds (L, D); prompt_mask (L,) bool;
    subject_masks (2, F', H', W') on the latent grid.
    """

    records: list[dict[str, torch.Tensor]]
    empty_prompt: dict[str, torch.Tensor]
    captions: list[str]
    shape: ClipShape
    encoded: int  # records encoded in this call (0 when everything came from the cache)


def clip_shape(loaded, data: DataConfig) -> ClipShape:
    """The clip shape of a run: the data settings, else the model's defaults; DatasetError when the model's
    family cannot take it."""
    shape = loaded.defaults.resolve(num_frames=data.num_frames, height=data.height, width=data.width)
    if problem := loaded.spec.clip_shape_problem(shape.num_frames, shape.height, shape.width):
        raise DatasetError(problem)
    return shape


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(folder: Path) -> str:
    """A digest of the encoders of a saved pipeline: every config in full, weight files by resolved path, size
    and modification time (hashing tens of GB of T5 weights per run would cost more than the encoding it
    saves; Hub snapshots resolve to content-addressed blobs, and a rewritten local file changes its mtime)."""
    digest = hashlib.sha256()
    for component in ("model_index.json", "vae", "text_encoder", "tokenizer"):
        root = Path(folder) / component
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for path in files:
            if not path.is_file():
                continue
            digest.update(str(path.relative_to(folder)).encode())
            if path.suffix in (".json", ".txt", ".model"):
                digest.update(path.read_bytes())
            else:
                stat = path.stat()
                digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _record_key(sample: RelationSample, shape: ClipShape, sampling: str, fingerprint: str) -> str:
    masks = sorted(p for p in sample.mask_dir.iterdir() if p.is_file()) if sample.mask_dir is not None else []
    payload = {
        "version": FORMAT_VERSION,
        "video": _file_digest(sample.video),
        "caption": sample.caption,
        "masks": [(p.name, _file_digest(p)) for p in masks],
        "shape": [shape.num_frames, shape.height, shape.width],
        "sampling": sampling,
        "model": fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, staging)
    os.replace(staging, path)


def _encode_sample(loaded, sample: RelationSample, shape: ClipShape, sampling: str) -> dict[str, torch.Tensor]:
    spec, pipe = loaded.spec, loaded.pipe
    if problem := spec.text_length_problem(pipe, sample.caption):
        raise DatasetError(f"{sample.video.with_suffix('.txt')}: caption is {problem}")
    info = probe_video(sample.video)  # once: the clip and its masks both need it
    frames, indices = load_clip(sample.video, shape.num_frames, shape.height, shape.width, sampling, info)
    if sample.mask_dir is None:  # a prior-preservation clip: trains with the plain loss, no subject masks
        masks = torch.zeros(2, len(indices), shape.height, shape.width, dtype=torch.bool)
    else:
        masks = torch.from_numpy(
            load_subject_masks(sample.mask_dir, indices, shape.height, shape.width, (info.height, info.width))
        )
    mean, logvar = spec.encode_clip(pipe, frames)
    embeds, prompt_mask = spec.encode_prompts(pipe, [sample.caption])
    return {
        "latent_mean": mean,
        "latent_logvar": logvar,
        "prompt_embeds": embeds[0].float(),
        "prompt_mask": prompt_mask[0],
        "subject_masks": spec.masks_to_latent_grid(masks),
    }


def _empty_prompt(loaded, cache_dir: Path, fingerprint: str) -> dict[str, torch.Tensor]:
    path = cache_dir / f"empty-prompt-{fingerprint[:32]}.safetensors"
    if path.exists():
        return load_file(path)
    loaded.ensure_encoders()
    embeds, mask = loaded.spec.encode_prompts(loaded.pipe, [""])
    record = {"prompt_embeds": embeds[0].float(), "prompt_mask": mask[0]}
    _save_atomic(record, path)
    return record


def prepare_dataset(
    loaded, samples: list[RelationSample], data: DataConfig, cache_dir: Path, show_progress: bool = True
) -> PreparedDataset:
    """Encode what the cache lacks of `samples` (from `scan_dataset`) and return every record.

    `loaded` is a LoadedModel whose VAE and text encoder are used (loaded first if it was loaded without them and
    a clip is missing from the cache; they may be freed afterwards).
    Raises DatasetError / VideoError naming the clip that cannot be used.
    """
    shape = clip_shape(loaded, data)
    latents_dir = Path(cache_dir) / "latents"
    fingerprint = model_fingerprint(loaded.folder)
    records, encoded = [], 0
    for sample in tqdm(samples, desc="preparing clips", disable=not show_progress):
        path = latents_dir / f"{_record_key(sample, shape, data.frame_sampling, fingerprint)}.safetensors"
        if path.exists():
            records.append(load_file(path))
            continue
        loaded.ensure_encoders()
        record = _encode_sample(loaded, sample, shape, data.frame_sampling)
        _save_atomic(record, path)
        records.append(record)
        encoded += 1
    return PreparedDataset(
        records=records,
        empty_prompt=_empty_prompt(loaded, latents_dir, fingerprint),
        captions=[s.caption for s in samples],
        shape=shape,
        encoded=encoded,
    )
