"""scripts/train_toy_base.py --quick runs every phase and saves a pipeline that loads and generates."""

import json

import numpy as np
import torch

from helpers import load_script

from dreamrelation.config import GenerateConfig, ModelConfig
from dreamrelation.generate import generate


def test_quick_run_saves_a_loadable_pipeline_and_resumes(tmp_path, cache_dir):
    from transformers import T5EncoderModel

    script = load_script("scripts/train_toy_base.py")
    out, work = tmp_path / "toy", tmp_path / "work"
    # --quick shrinks the text pretraining (on by default) to a few steps, like every other phase.
    argv = ["--quick", "--output", str(out), "--work-dir", str(work), "--text-pretrain-steps", "1500"]
    script.main(argv)
    phases = [json.loads(line)["phase"] for line in (work / "loss.jsonl").read_text().splitlines()]
    assert phases.count("text") == 3 and phases.count("vae") == 2 and phases.count("transformer") == 3
    assert phases.count("decoder") == 2
    vae_config = json.loads((out / "vae" / "config.json").read_text())
    assert len(vae_config["latents_mean"]) == 12 and len(vae_config["latents_std"]) == 12
    declared = json.loads((out / "dreamrelation.json").read_text())
    assert declared["generation_defaults"] == {"steps": 30, "guidance_scale": 3.0}  # what the app serves it at
    # A second run resumes every phase from the work folder: no step is trained again.
    script.main(argv)
    assert len((work / "loss.jsonl").read_text().splitlines()) == len(phases)
    pretrained = T5EncoderModel.from_pretrained(work / "text_encoder").state_dict()
    saved = T5EncoderModel.from_pretrained(out / "text_encoder").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in pretrained.items())
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
    for trained in (False, True):
        out = tmp_path / f"toy{trained}"
        # Without text pretraining, so that only the transformer phase could change the T5.
        flags = ["--text-pretrain-steps", "0"] + (["--train-text-encoder"] if trained else [])
        script.main(["--quick", "--output", str(out), "--work-dir", str(tmp_path / f"work{trained}"), *flags])
        saved = T5EncoderModel.from_pretrained(out / "text_encoder").state_dict()
        changed[trained] = any(not torch.equal(saved[k], v) for k, v in initial.items())
    assert changed == {False: False, True: True}


def test_reuse_vae_skips_vae_training_and_saves_the_reused_vae(tmp_path):
    from diffusers import AutoencoderKLMochi

    script = load_script("scripts/train_toy_base.py")
    first = tmp_path / "first"
    script.main(["--quick", "--output", str(first), "--work-dir", str(tmp_path / "work1")])
    out, work = tmp_path / "second", tmp_path / "work2"
    # Another seed, so a trained (or freshly built) VAE would differ from the reused one.
    script.main(["--quick", "--seed", "1", "--reuse-vae", str(first), "--output", str(out), "--work-dir", str(work)])
    phases = [json.loads(line)["phase"] for line in (work / "loss.jsonl").read_text().splitlines()]
    assert "vae" not in phases and phases.count("transformer") == 3
    assert not (work / "vae.pt").exists()
    reused, saved = (AutoencoderKLMochi.from_pretrained(folder, subfolder="vae") for folder in (first, out))
    # The decoder phase fine-tunes the decoder alone: every other weight is the reused VAE's.
    kept = {k: torch.equal(saved.state_dict()[k], v) for k, v in reused.state_dict().items()}
    assert all(same for k, same in kept.items() if not k.startswith("decoder."))
    assert not all(same for k, same in kept.items() if k.startswith("decoder."))
    for key in ("latents_mean", "latents_std", "scaling_factor"):
        assert saved.config[key] == reused.config[key]


def test_reuse_transformer_fine_tunes_only_the_decoder(tmp_path):
    from diffusers import AutoencoderKLMochi, MochiTransformer3DModel
    from transformers import T5EncoderModel

    script = load_script("scripts/train_toy_base.py")
    first = tmp_path / "first"
    script.main(["--quick", "--output", str(first), "--work-dir", str(tmp_path / "work1")])
    out, work = tmp_path / "second", tmp_path / "work2"
    script.main(["--quick", "--seed", "1", "--reuse-vae", str(first), "--reuse-transformer", str(first),
                 "--output", str(out), "--work-dir", str(work)])
    phases = [json.loads(line)["phase"] for line in (work / "loss.jsonl").read_text().splitlines()]
    assert phases == ["decoder"] * 2
    for model, subfolder in ((MochiTransformer3DModel, "transformer"), (T5EncoderModel, "text_encoder")):
        reused, saved = (model.from_pretrained(folder, subfolder=subfolder).state_dict() for folder in (first, out))
        assert all(torch.equal(saved[k], v) for k, v in reused.items())
    reused, saved = (AutoencoderKLMochi.from_pretrained(folder, subfolder="vae").state_dict() for folder in (first, out))
    assert all(torch.equal(saved[k], v) for k, v in reused.items() if k.startswith("encoder."))
    assert not all(torch.equal(saved[k], v) for k, v in reused.items() if k.startswith("decoder."))


def test_init_from_continues_from_a_saved_model_and_keeps_its_t5(tmp_path):
    from diffusers import AutoencoderKLMochi
    from transformers import T5EncoderModel

    script = load_script("scripts/train_toy_base.py")
    first, second = tmp_path / "first", tmp_path / "second"
    script.main(["--quick", "--output", str(first), "--work-dir", str(tmp_path / "w1"), "--seed", "1"])
    # Seed 0 builds other random weights: only the loaded ones can leave the T5 equal to the first model's.
    script.main(["--quick", "--output", str(second), "--work-dir", str(tmp_path / "w2"), "--init-from", str(first),
                 "--transformer-subject-weight", "5"])
    phases = [json.loads(line)["phase"] for line in (tmp_path / "w2" / "loss.jsonl").read_text().splitlines()]
    assert "text" not in phases and phases.count("vae") == 2 and phases.count("transformer") == 3
    kept = T5EncoderModel.from_pretrained(first / "text_encoder").state_dict()
    assert all(torch.equal(v, T5EncoderModel.from_pretrained(second / "text_encoder").state_dict()[k])
               for k, v in kept.items())
    # Two VAE steps at the script's learning rate move the weights a little from the first model's, not to new ones.
    old, new = (AutoencoderKLMochi.from_pretrained(path, subfolder="vae").state_dict() for path in (first, second))
    fresh = script.build_tiny_pipeline(seed=0, size="tiny").vae.state_dict()
    near = sum((new[k] - old[k]).abs().sum() for k in old)
    assert near < 0.1 * sum((fresh[k] - old[k]).abs().sum() for k in old)


def test_subject_pixels_are_those_far_from_the_background_grey():
    script = load_script("scripts/train_toy_base.py")
    frame = torch.full((3, 1, 4, 4), 128 / 127.5 - 1)
    frame[:, 0, 1, 2] = torch.tensor([220, 30, 30]) / 127.5 - 1  # a red pixel
    frame[:, 0, 3, 0] = (128 + 20) / 127.5 - 1  # texture: 20 levels off the grey
    expected = torch.zeros(1, 1, 1, 4, 4)
    expected[0, 0, 0, 1, 2] = 1
    assert torch.equal(script.subject_pixels(frame[None]), expected)


def test_latent_subject_cells_are_the_cells_a_subject_pixel_falls_in():
    """Mochi's grid (8 px cells, latent frame 0 = frame 0, then groups of 6 frames averaged), by hand."""
    from dreamrelation.models.mochi import MochiSpecification

    script = load_script("scripts/train_toy_base.py")
    clips = np.full((2, 7, 16, 16, 3), 128, dtype=np.uint8)
    clips[1, 0, 9, 3] = (220, 30, 30)  # clip 1, frame 0: one red pixel in cell (1, 0)
    clips[1, 4:7, 2, 12] = (40, 70, 230)  # frames 4-6: a blue pixel in cell (0, 1), 3 of latent frame 1's 6 frames
    cells = script.latent_subject_cells(clips, np.array([1, 0]), MochiSpecification())
    expected = torch.zeros(2, 1, 2, 2, 2)
    expected[0, 0, 0, 1, 0] = 1
    expected[0, 0, 1, 0, 1] = 0.5
    assert torch.equal(cells, expected)
