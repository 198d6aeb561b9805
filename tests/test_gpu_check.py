"""benchmarks/gpu_check.py: the prepared GPU check runs end to end on tiny models on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ten processes, each importing torch and diffusers
def test_the_tiny_check_writes_every_row_to_json_and_markdown(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--preset", "tiny", "--device", "cpu",
         "--steps", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for rows in report["results"].values():
        assert [(row["kind"], row["memory"]) for row in rows] == [
            ("b", "bf16"), ("b", "fp8"), ("b", "offload"), ("a", "bf16"), ("g", "bf16")]
        assert not [row["error"] for row in rows if "error" in row]
        assert all(len(row["seconds"]) == 2 for row in rows)
        training = [row for row in rows if row["kind"] != "g"]
        assert all(row["estimate_gb"] > 0 for row in training)
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| DreamRelation step |") == 6 and table.count("DreamRelation / plain LoRA") == 2


def test_a_missing_package_or_gpu_fails_at_once_with_its_name(monkeypatch):
    script = load_script("benchmarks/gpu_check.py")
    monkeypatch.setattr(script, "REQUIRED", (*script.REQUIRED, "no_such_package_here"))
    with pytest.raises(SystemExit, match="missing packages no_such_package_here: pip install"):
        script.main(["--preset", "tiny", "--device", "cpu"])
    monkeypatch.setattr(script, "REQUIRED", ("torch",))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda needs a CUDA GPU"):
        script.main(["--preset", "full", "--device", "cuda"])
