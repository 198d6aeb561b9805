"""scripts/train_toy_base.py --quick runs every phase and saves a pipeline that loads and generates."""

import json

from helpers import load_script

from dreamrelation.config import GenerateConfig, ModelConfig
from dreamrelation.generate import generate


def test_quick_run_saves_a_loadable_pipeline_and_resumes(tmp_path, cache_dir):
    script = load_script("scripts/train_toy_base.py")
    out, work = tmp_path / "toy", tmp_path / "work"
    script.main(["--quick", "--output", str(out), "--work-dir", str(work)])
    phases = [json.loads(line)["phase"] for line in (work / "loss.jsonl").read_text().splitlines()]
    assert phases.count("vae") == 2 and phases.count("transformer") == 3
    vae_config = json.loads((out / "vae" / "config.json").read_text())
    assert len(vae_config["latents_mean"]) == 12 and len(vae_config["latents_std"]) == 12
    # A second run resumes every phase from the work folder: no step is trained again.
    script.main(["--quick", "--output", str(out), "--work-dir", str(work)])
    assert len((work / "loss.jsonl").read_text().splitlines()) == len(phases)
    result = generate(
        ModelConfig(name=str(out), device="cpu", cache_dir=cache_dir),
        None,
        GenerateConfig(prompt="A red circle orbits a blue square.", steps=2, num_frames=7, height=32, width=32),
        tmp_path / "video.mp4",
    )
    assert result.frames.shape == (7, 32, 32, 3)
