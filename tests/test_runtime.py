"""dreamrelation.runtime: 'auto' device and dtype, and the mask engines' independence from the model registry."""

import subprocess
import sys

import torch

from dreamrelation.runtime import resolve_device, resolve_dtype


def test_auto_device_and_dtype_follow_the_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float16


def test_mask_engines_do_not_import_the_model_registry():
    code = ("import sys; import dreamrelation.masks.pipeline, dreamrelation.masks.sam2, dreamrelation.masks.grounding; "
            "print(sorted(m for m in sys.modules if m.startswith('dreamrelation.models')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
