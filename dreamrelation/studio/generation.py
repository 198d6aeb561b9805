"""Generation in the app process: one base pipeline kept loaded, a relation LoRA put on it per request.

Requests run one at a time (a lock): the pipeline is shared, and the LoRA of one request is loaded for that
request only (`generate.relation_lora`), so relations never mix.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from collections.abc import Callable

from dreamrelation.config import GenerateConfig, ModelConfig
from dreamrelation.models import LoadedModel, ModelSource, load_model
from dreamrelation.runtime import resolve_device


@dataclass
class GenerationRecord:
    """A generated video and the settings that made it (saved beside it as JSON)."""

    video: Path
    settings: dict

    @property
    def comparison(self) -> Path | None:
        """The side-by-side video with the base model, when the request compared (generate.comparison_paths)."""
        from dreamrelation.generate import comparison_paths

        path = comparison_paths(self.video)[1]
        return path if path.exists() else None

    def to_dict(self) -> dict:
        return {"video": str(self.video), "settings": self.settings}


class Generator:
    """Keeps the base model of `model` loaded (on first use) and renders requests with optional LoRAs;
    `source()` gives the model as the app resolved it."""

    def __init__(self, model: ModelConfig, source: Callable[[], ModelSource]):
        self.model, self.source = model, source
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def loaded(self, device: str | None = None) -> LoadedModel:
        """The loaded base model, on `device` (a torch device name; None: the model config's). Loaded on first
        use, and again only when asked for another device (the GPU it was on is training now)."""
        config = self.model if device is None else self.model.model_copy(update={"device": device})
        if self._loaded is not None and str(self._loaded.device) != str(resolve_device(config.device)):
            self._loaded = None  # its memory goes before the new copy loads
        if self._loaded is None:
            self._loaded = load_model(config, source=self.source())
        return self._loaded

    def generate(self, lora_file: Path | None, request: GenerateConfig, folder: Path, relation: dict,
                 device: str | None = None) -> GenerationRecord:
        """Render `request` with the LoRA (None: base model) into the next NNNN.mp4 of `folder`, on `device`
        (None: the model config's).

        `relation` (JSON-ready: which relation, by id and name) is saved with the request's settings.
        Returns the record. The LoRA is never fused: the pipeline outlives the request.
        """
        from dreamrelation.generate import generate, with_model_defaults

        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            loaded = self.loaded(device)
            # Saved with the values it ran with, not None: the gallery shows what made each video.
            request = with_model_defaults(loaded, request).model_copy(update={"fuse_lora": False})
            number = len(list(folder.glob("*.json")))  # one settings file per generation (a comparison has 3 mp4s)
            output = folder / f"{number:04d}.mp4"
            generate(self.model, lora_file, request, output, loaded=loaded)  # leaves the pipeline as it was
        settings = {**relation, **request.model_dump(mode="json"), "created": time.time()}
        output.with_suffix(".json").write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
        return GenerationRecord(output, settings)


def gallery(folder: Path) -> list[GenerationRecord]:
    """The generations saved in `folder` (none when it does not exist), newest first."""
    records = []
    for settings_file in sorted(folder.glob("*.json"), reverse=True):
        video = settings_file.with_suffix(".mp4")
        if video.exists():
            records.append(GenerationRecord(video, json.loads(settings_file.read_text(encoding="utf-8"))))
    return records
