"""Where and how things run: the device and dtype that 'auto' settings mean here, and quieter model loading."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; otherwise torch.device(name)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on GPU, fp32 on CPU; otherwise the torch dtype of that name ('float16', ...)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def quiet_loading_bars() -> None:
    """Hide the one-bar-per-component output of loading a pipeline (CLI and job logs show their own progress)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
