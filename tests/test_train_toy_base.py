"""scripts/train_toy_base.py --quick runs every phase and saves a pipeline that loads and generates."""

import json

import torch

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


def test_train_text_encoder_trains_the_t5_and_frozen_keeps_it(tmp_path):
    from transformers import T5EncoderModel

    from dreamrelation.models.tiny_random import build_tiny_pipeline

    script = load_script("scripts/train_toy_base.py")
    initial = build_tiny_pipeline(seed=0, size="tiny").text_encoder.state_dict()
    changed = {}
    for flag in ([], ["--train-text-encoder"]):
        out = tmp_path / f"toy{len(flag)}"
        script.main(["--quick", "--output", str(out), "--work-dir", str(tmp_path / f"work{len(flag)}"), *flag])
        saved = T5EncoderModel.from_pretrained(out / "text_encoder").state_dict()
        changed[bool(flag)] = any(not torch.equal(saved[k], v) for k, v in initial.items())
    assert changed == {False: False, True: True}
