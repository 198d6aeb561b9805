"""benchmarks/gpu_check.py: the prepared GPU check runs end to end on tiny models on the CPU, and a spent time
budget leaves rows not run instead of overrunning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_script

REPO = Path(__file__).resolve().parents[1]


EVERY_ROW = [("b", "bf16"), ("b", "fp8"), ("b", "offload"), ("a", "bf16"), ("g", "bf16")]


@pytest.mark.slow  # eleven processes, each importing torch and diffusers
def test_the_tiny_check_writes_every_row_to_json_and_markdown(tmp_path, cache_dir):
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--preset", "tiny", "--device", "cpu",
         "--steps", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "DREAMRELATION_CACHE": str(cache_dir)},  # the Wan 2.2 preset builds a tiny pipeline
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {model: [(row["kind"], row["memory"]) for row in rows] for model, rows in report["results"].items()} == {
        "Mochi (tiny)": EVERY_ROW, "Wan (tiny)": EVERY_ROW, "Wan 2.2 expert (tiny)": [("b", "bf16")]}
    for rows in report["results"].values():
        assert not [row.get("error", row.get("not_run")) for row in rows if "seconds" not in row]
        assert all(len(row["seconds"]) == 2 for row in rows)
        training = [row for row in rows if row["kind"] != "g"]
        assert all(row["estimate_gb"] > 0 for row in training)
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| DreamRelation step |") == 7 and table.count("DreamRelation / plain LoRA") == 2


def test_a_spent_budget_reports_the_rows_as_not_run(tmp_path):
    script = load_script("benchmarks/gpu_check.py")
    script.main(["--preset", "tiny", "--device", "cpu", "--budget", "0", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "gpu_check.json").read_text())["results"]
    assert [row["not_run"] for rows in results.values() for row in rows] == ["time budget spent"] * 11
    assert (tmp_path / "gpu_check.md").read_text().count("| not run: time budget spent |") == 11


def test_rows_run_most_telling_first_and_only_the_biggest_model_lacks_offload():
    script = load_script("benchmarks/gpu_check.py")
    assert sorted(script.PRIORITY) == sorted(script.ROWS)
    assert script.PRIORITY[:2] == (("b", "bf16"), ("a", "bf16"))  # the overhead ratio before memory presets
    assert {model: len(rows) for model, (_, _, rows) in script.MODELS["full"].items()} == {
        "Mochi-1": 5, "Wan2.1-1.3B": 5, "Wan2.2-TI2V-5B": 5, "Wan2.2-A14B high": 4}


def test_a_missing_package_or_gpu_fails_at_once_with_its_name(monkeypatch):
    script = load_script("benchmarks/gpu_check.py")
    monkeypatch.setattr(script, "REQUIRED", (*script.REQUIRED, "no_such_package_here"))
    with pytest.raises(SystemExit, match="missing packages no_such_package_here: pip install"):
        script.main(["--preset", "tiny", "--device", "cpu"])
    monkeypatch.setattr(script, "REQUIRED", ("torch",))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda needs a CUDA GPU"):
        script.main(["--preset", "full", "--device", "cuda"])
