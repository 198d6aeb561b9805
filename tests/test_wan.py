"""The Wan 2.1 family on `tiny-random-wan`: adapter placement, the flow-matching target against the stock
scheduler, the latent grid of masks, clip shapes, exact resume, the export in stock `WanPipeline`, the
command line and the app end to end. (Zero-init equivalence and per-mode gradients: test_method_adapters.py;
learning: test_trainer.py; two processes: test_cli.py; all run on both families.)"""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import WanPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from dreamrelation.config import DataConfig, GenerateConfig, MethodConfig, ModelConfig, RunConfig, TrainConfig
from dreamrelation.data.video import probe_video
from dreamrelation.export import LORA_FILENAME, export_lora
from dreamrelation.generate import generate
from dreamrelation.method.adapters import add_adapters
from dreamrelation.models import load_model
from dreamrelation.models.wan import WanSpecification
from dreamrelation.train import checkpoint as ckpt
from dreamrelation.train.trainer import train

from helpers import trained_like, write_two_subject_dataset
from test_cli import run_cli

CLIP = dict(num_frames=13, height=32, width=32)  # 13 = 4k+1


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_two_subject_dataset(tmp_path_factory.mktemp("wan-data"), num_videos=2, **CLIP)


def test_adapters_sit_exactly_on_the_table_of_the_method_doc(wan):
    transformer = wan.pipe.transformer
    add_adapters(transformer, wan.spec, MethodConfig())
    blocks = range(len(transformer.blocks))

    def paths(*projections):
        return sorted(f"blocks.{i}.{a}.{p}" for i in blocks for a in ("attn1", "attn2") for p in projections)

    assert sorted(transformer.peft_config["relation"].target_modules) == paths("to_q", "to_k")
    assert sorted(transformer.peft_config["subject1"].target_modules) == paths("to_v")
    assert sorted(transformer.peft_config["subject2"].target_modules) == paths("to_v")
    assert sorted(transformer.peft_config["ffn"].target_modules) == paths("to_out.0")


class RecordingTransformer(torch.nn.Module):
    """Stands in for the transformer: records its inputs and answers a fixed velocity."""

    def __init__(self, velocity=None):
        super().__init__()
        self.velocity, self.calls = velocity, []

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        self.calls.append((hidden_states.clone(), timestep.clone()))
        return (self.velocity if self.velocity is not None else torch.zeros_like(hidden_states),)


def test_the_training_target_is_the_velocity_the_stock_scheduler_integrates_to_x0(wan):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    spec = WanSpecification()
    # What training feeds and asks for, at sigma 0.3.
    recorder = RecordingTransformer()
    _, target = spec.training_forward(recorder, x0, noise, torch.tensor([0.3]), torch.zeros(1, 3, 32), None,
                                      torch.float32)
    fed, timestep = recorder.calls[0]
    torch.testing.assert_close(fed, 0.7 * x0 + 0.3 * noise)
    torch.testing.assert_close(timestep, torch.tensor([300.0]))
    torch.testing.assert_close(target, noise - x0)
    # The stock scheduler with the pipeline's flow_shift, fed that target at every step it takes, lands on x0;
    # the timestep it gives the transformer is sigma * 1000.
    scheduler = wan.pipe.scheduler
    scheduler.set_timesteps(12)
    latents = noise.clone()
    for index, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[index])
        assert float(t) == pytest.approx(sigma * 1000, abs=1.0)
        torch.testing.assert_close(latents, (1 - sigma) * x0 + sigma * noise, rtol=1e-4, atol=1e-4)
        latents = scheduler.step(noise - x0, t, latents, return_dict=False)[0]
    torch.testing.assert_close(latents, x0, rtol=1e-4, atol=1e-4)


def test_masks_map_to_the_wan_latent_grid_as_computed_by_hand(wan):
    # 13 frames, 16x16 pixels -> 4 latent frames (0 | 1-4 | 5-8 | 9-12) of 2x2 cells. One subject pixel at
    # (row 9, col 2) in frames 0, 1, 2 and 7, and one at (row 0, col 15) in frame 12.
    masks = torch.zeros(1, 13, 16, 16)
    for frame in (0, 1, 2, 7):
        masks[0, frame, 9, 2] = 1.0
    masks[0, 12, 0, 15] = 1.0
    grid = wan.spec.masks_to_latent_grid(masks)
    expected = torch.zeros(1, 4, 2, 2)
    expected[0, 0, 1, 0] = 1.0  # latent frame 0 <- frame 0
    expected[0, 1, 1, 0] = 2 / 4  # latent frame 1 <- mean of frames 1..4 (present in 1 and 2)
    expected[0, 2, 1, 0] = 1 / 4  # latent frame 2 <- mean of frames 5..8 (present in 7)
    expected[0, 3, 0, 1] = 1 / 4  # latent frame 3 <- mean of frames 9..12 (present in 12)
    assert torch.equal(grid, expected)
    with pytest.raises(ValueError, match="4k\\+1"):
        wan.spec.masks_to_latent_grid(torch.zeros(1, 12, 16, 16))


def test_clip_shapes_are_checked_with_the_fix():
    spec = WanSpecification()
    assert spec.clip_shape_problem(81, 480, 832) is None
    assert spec.clip_shape_problem(80, None, None) == "num_frames: this model needs 4k+1 frames (e.g. 9, 17); 80 -> 81"
    assert spec.clip_shape_problem(85, None, None) == "num_frames: at most 81 for this model, got 85"
    assert spec.clip_shape_problem(None, 470, None) == "height: this model needs a multiple of 16; 470 -> 464"


def _run(wan_config, data_dir, out, **train_settings):
    return RunConfig(model=wan_config, data=DataConfig(data_dir=data_dir, **CLIP),
                     train=TrainConfig(output_dir=out, **train_settings))


def test_training_2n_steps_equals_n_steps_then_resume_then_n_steps(wan_config, dataset_dir, tmp_path):
    train(_run(wan_config, dataset_dir, tmp_path / "straight", steps=6, checkpoint_every=3), show_progress=False)
    interrupted = _run(wan_config, dataset_dir, tmp_path / "resumed", steps=6, checkpoint_every=3)
    train(interrupted, show_progress=False)
    for checkpoint in ckpt.list_checkpoints(tmp_path / "resumed")[1:]:
        shutil.rmtree(checkpoint)
    resumed = interrupted.model_copy(update={"train": interrupted.train.model_copy(update={"resume": True})})
    assert train(resumed, show_progress=False).steps == 6
    a = load_file(tmp_path / "straight" / LORA_FILENAME)
    b = load_file(tmp_path / "resumed" / LORA_FILENAME)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)


def test_the_export_loads_in_stock_wan_and_generates_our_frames(wan, wan_config, tmp_path):
    method = MethodConfig(rank=4, alpha=8, ffn_rank=2)
    transformer = trained_like(wan, method)
    run = RunConfig(model=wan_config, data=DataConfig(data_dir=tmp_path), method=method)
    path = export_lora(WanPipeline, {"transformer": transformer}, run, tmp_path, ["A dog is chasing a cat."])
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    assert "transformer.blocks.0.attn2.to_k.lora_A.weight" in keys and not any("to_v" in k for k in keys)
    stock = WanPipeline.from_pretrained(wan.folder)
    stock.load_lora_weights(str(tmp_path), weight_name=LORA_FILENAME)
    assert len({n for n, _ in stock.transformer.named_parameters() if "lora_" in n}) == len(keys)
    assert stock.transformer.peft_config["default_0"].lora_alpha == 8

    request = GenerateConfig(prompt="A cat is chasing a dog.", seed=3, steps=3, num_frames=9, height=32, width=32)
    ours = generate(wan_config, tmp_path, request, tmp_path / "ours.mp4")
    frames = stock("A cat is chasing a dog.", num_frames=9, height=32, width=32, num_inference_steps=3,
                   generator=torch.Generator().manual_seed(3), max_sequence_length=32,
                   output_type="np").frames[0]
    assert (ours.frames == (frames.clip(0, 1) * 255).round().astype("uint8")).all()
    card = (tmp_path / "README.md").read_text()
    assert "Wan-AI" not in card and "WanPipeline.from_pretrained" in card


def test_cli_ingest_masks_train_generate_on_tiny_random_wan(cache_dir, tmp_path):
    from dreamrelation.toyworld.dataset import write_relation_dataset
    from dreamrelation.toyworld.world import sample_scenes

    raw = tmp_path / "raw"
    write_relation_dataset(raw, sample_scenes(1, seed=4, relations=("orbits",)), 25, 64, 64)
    data, out, video = tmp_path / "data", tmp_path / "run", tmp_path / "out.mp4"
    model = ["--model", "tiny-random-wan"]
    for args in (["ingest", *map(str, raw.glob("*.mp4")), "--data", str(data), *model],
                 ["masks", "--data", str(data), "--engine", "basic"],
                 ["train", "--data", str(data), "--output", str(out), "--steps", "2", "--device", "cpu", *model],
                 ["generate", "--lora", str(out), "--prompt", "A red circle orbits a blue square.", "--output",
                  str(video), "--frames", "17", "--steps", "2", "--device", "cpu", *model]):
        result = run_cli(args, cache_dir)
        assert result.returncode == 0, (args[0], result.stderr[-2000:])
    assert probe_video(next(data.glob("*.mp4"))).num_frames == 13  # the model's clip: 4k+1
    assert probe_video(video).num_frames == 17
    assert "num_frames: this model needs 4k+1" in run_cli(
        ["ingest", str(next(raw.glob("*.mp4"))), "--data", str(tmp_path / "d2"), "--frames", "12", *model],
        cache_dir).stderr


def test_the_model_card_of_a_hub_wan_base_names_it():
    from dreamrelation.export import model_card

    run = RunConfig(model=ModelConfig(name="wan2.1-1.3b"), data=DataConfig(data_dir="."))
    card = model_card(run, "WanPipeline", ["A dog is chasing a cat."])
    assert "base_model: Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in card
    assert 'WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")' in card


@pytest.mark.slow
def test_the_app_serves_tiny_random_wan_through_gradio_client(cache_dir, tmp_path):
    import json
    import urllib.request

    from gradio_client import Client, handle_file

    from app_server import free_port, start_app, stop_app
    from dreamrelation.toyworld.dataset import write_relation_dataset
    from dreamrelation.toyworld.world import sample_scenes

    write_relation_dataset(tmp_path / "up", sample_scenes(2, seed=3, relations=("orbits",)), 25, 64, 64)
    videos = sorted((tmp_path / "up").glob("*.mp4"))
    port = free_port()
    server = start_app(tmp_path / "home", cache_dir, port, tmp_path / "app.log", ["--model", "tiny-random-wan"])
    url = f"http://127.0.0.1:{port}/"
    try:
        with urllib.request.urlopen(f"{url}config", timeout=30) as response:
            page = json.dumps(json.load(response))
        assert "tiny-random-wan" in page and "WanPipeline" in page and "4k+1 (e.g. 9, 17)" in page
        client = Client(url, verbose=False)
        captions = "\n".join(v.with_suffix(".txt").read_text().strip() for v in videos)
        dataset_id, _, overlays, _ = client.predict([handle_file(str(v)) for v in videos], captions, "orbits", "",
                                                    "basic", api_name="/create_masks")
        assert len(overlays) == 2
        job_id = client.predict(dataset_id=dataset_id, steps=3, rank=4, api_name="/start_training")
        assert list(client.submit(job_id, api_name="/job_status"))[-1]["state"] == "done"
        video = client.predict(relation_id=job_id, prompt="A red circle orbits a blue square.", steps=2,
                               num_frames=9, api_name="/generate")
        assert probe_video(video["video"] if isinstance(video, dict) else video).num_frames == 9
        lora, _, comfyui = client.predict(job_id, api_name="/download_relation")
        assert load_file(lora) and all(key.startswith("diffusion_model.") for key in load_file(comfyui))
    finally:
        stop_app(server)
    card = next((tmp_path / "home" / "jobs").glob("*/output/README.md")).read_text()
    assert "WanPipeline.from_pretrained" in card


@pytest.mark.parametrize("placement, relation, subjects", [("v", ("to_v",), ("to_q", "to_k")),
                                                            ("q", ("to_q",), ("to_v",))])
def test_the_ablation_placements_keep_their_meaning_on_wan(wan, placement, relation, subjects):
    transformer = wan.pipe.transformer
    add_adapters(transformer, wan.spec, MethodConfig(relation_placement=placement))

    def paths(projections):
        return sorted(f"blocks.{i}.{a}.{p}" for i in range(len(transformer.blocks)) for a in ("attn1", "attn2")
                      for p in projections)

    assert sorted(transformer.peft_config["relation"].target_modules) == paths(relation)
    assert sorted(transformer.peft_config["subject1"].target_modules) == paths(subjects)


def test_a_folder_holding_a_saved_wan_pipeline_loads_as_wan(wan, cache_dir):
    loaded = load_model(ModelConfig(name=str(wan.folder), device="cpu", cache_dir=cache_dir))
    assert isinstance(loaded.spec, WanSpecification) and isinstance(loaded.pipe, WanPipeline)
    assert loaded.pipe.vae.dtype == torch.float32
