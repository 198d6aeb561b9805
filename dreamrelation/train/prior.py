"""Prior-preservation clips (docs/method.md §8): what the base model itself draws for other captions.

DreamBooth's regulariser, for relations: clips the base model generates for captions of other subjects and
other relations train beside the exemplars (TrainConfig.prior_dir, prior_share), with the adapters generation
keeps and the plain loss, so that the relation LoRA changes what the exemplars' caption asks for and keeps the
base's behaviour elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dreamrelation.config import GenerateConfig
from dreamrelation.models import LoadedModel
from dreamrelation.models.base import ClipShape


def write_prior_clips(
    loaded: LoadedModel, captions: Sequence[str], folder: Path, shape: ClipShape, seed: int = 0,
    steps: int | None = None, guidance_scale: float | None = None,
) -> Path:
    """Render each caption with `loaded` as it is (the base: no adapter active) at `shape`, generation seed
    `seed` + its index, into FOLDER/prior-NNN.mp4 with the caption in prior-NNN.txt; clips already there are
    kept (a second call renders only what is missing). Returns `folder`, a dataset for TrainConfig.prior_dir."""
    from dreamrelation.data.video import write_video
    from dreamrelation.generate import render

    folder.mkdir(parents=True, exist_ok=True)
    for index, caption in enumerate(captions):
        video, text = folder / f"prior-{index:03d}.mp4", folder / f"prior-{index:03d}.txt"
        if video.exists() and text.exists() and text.read_text(encoding="utf-8").strip() == caption:
            continue
        request = GenerateConfig(prompt=caption, seed=seed + index, steps=steps, guidance_scale=guidance_scale,
                                 num_frames=shape.num_frames, height=shape.height, width=shape.width)
        write_video(video, render(loaded, request), fps=loaded.defaults.fps)
        text.write_text(caption + "\n", encoding="utf-8")
    return folder
