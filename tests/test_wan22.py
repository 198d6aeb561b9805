"""Wan 2.2 on the model layer: two experts (A14B) trained one, the other or both, the TI2V-5B's 48-channel VAE,
one resolution per job, and runs that load only what they need."""

import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from dreamrelation import models
from dreamrelation.config import DataConfig, GenerateConfig, MethodConfig, ModelConfig, RunConfig, TrainConfig
from dreamrelation.generate import generate
from dreamrelation.models import load_model, memory, resolve_model
from dreamrelation.models.base import ExpertChoiceError, ModelSpecification
from dreamrelation.models.wan import WanSpecification
from dreamrelation.outputs import RunDir
from dreamrelation.train.planning import plan_training
from dreamrelation.train.trainer import train

from helpers import write_two_subject_dataset

CLIP = dict(num_frames=13, height=64, width=64)
PROMPT = "A red square is approaching a green square."


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_two_subject_dataset(tmp_path_factory.mktemp("data"), num_videos=2, **CLIP)


def run_config(name, cache_dir, dataset_dir, out, experts="high", steps=6, **train):
    model = ModelConfig(name=name, device="cpu", cache_dir=cache_dir)
    return RunConfig(model=model, data=DataConfig(data_dir=dataset_dir, **CLIP), method=MethodConfig(rank=4),
                     train=TrainConfig(output_dir=out, steps=steps, experts=experts, learning_rate=1e-2, **train))


def test_the_two_expert_model_declares_its_experts_from_its_configs(cache_dir):
    spec = resolve_model(ModelConfig(name="tiny-random-wan22", cache_dir=cache_dir)).spec
    assert [(e.component, e.name, e.sigma_low, e.sigma_high) for e in spec.experts] == [
        ("transformer", "high", 0.875, 1.0), ("transformer_2", "low", 0.0, 0.875)]
    # The pipeline hands t >= boundary_ratio * 1000 to `transformer`; with flow sigmas t = 1000 sigma.
    assert spec.expert_for(0.875).component == "transformer" and spec.expert_for(0.8749).component == "transformer_2"
    assert spec.expert_for(1.0).name == "high" and spec.expert_for(0.0).name == "low"
    one = resolve_model(ModelConfig(name="tiny-random-wan", cache_dir=cache_dir)).spec
    assert one.trained_experts("high") == one.experts and len(one.experts) == 1
    with pytest.raises(ExpertChoiceError, match="this model has one transformer"):
        one.trained_experts("low")


@pytest.mark.parametrize("experts, trained", [("high", {"transformer"}), ("low", {"transformer_2"}),
                                              ("both", {"transformer", "transformer_2"})])
def test_sigma_is_drawn_only_from_the_chosen_experts_range(cache_dir, dataset_dir, tmp_path, monkeypatch,
                                                           experts, trained):
    calls = []
    forward = WanSpecification.training_forward

    def spy(self, transformer, latents, noise, sigmas, *args):
        calls.append((id(transformer), sigmas.tolist()))
        return forward(self, transformer, latents, noise, sigmas, *args)

    monkeypatch.setattr(WanSpecification, "training_forward", spy)
    loaded = load_model(ModelConfig(name="tiny-random-wan22", device="cpu", cache_dir=cache_dir))
    ids = {id(loaded.pipe.transformer): "transformer", id(loaded.pipe.transformer_2): "transformer_2"}
    run = run_config("tiny-random-wan22", cache_dir, dataset_dir, tmp_path / "run", experts, steps=24)
    train(run, loaded=loaded, show_progress=False)

    used = {ids[model] for model, _ in calls}
    assert used == trained
    for model, sigmas in calls:
        for sigma in sigmas:
            assert (sigma >= 0.875) == (ids[model] == "transformer"), (ids[model], sigma)
    assert set(RunDir(tmp_path / "run").lora_files()) == trained
    for component in {"transformer", "transformer_2"} - trained:  # the other expert is left as it was
        assert not hasattr(getattr(loaded.pipe, component), "peft_config")


def test_only_the_trained_experts_are_loaded_and_counted(cache_dir, monkeypatch):
    config = ModelConfig(name="tiny-random-wan22", device="cpu", cache_dir=cache_dir)
    source = resolve_model(config)
    high = source.spec.trained_experts("high")
    loaded = load_model(config, source=source, experts=high, encoders=False, training=True)
    assert loaded.pipe.transformer is not None and loaded.pipe.transformer_2 is None
    assert loaded.pipe.text_encoder is None and loaded.pipe.vae is None

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * memory.GB, 80 * memory.GB))
    gpu = config.model_copy(update={"device": "cuda"})
    one = models.plan_memory(source, gpu, source.clip, training=True, experts=high).estimate
    both = models.plan_memory(source, gpu, source.clip, training=True).estimate
    per_expert = sum(p.numel() for p in load_model(config).pipe.transformer.parameters())
    assert one.weights == per_expert * 2 and both.weights == 2 * per_expert * 2  # bf16 on the GPU


def test_two_expert_export_loads_into_stock_wan_pipeline_with_identical_frames(cache_dir, dataset_dir, tmp_path):
    run = run_config("tiny-random-wan22", cache_dir, dataset_dir, tmp_path / "run", "both", steps=12)
    train(run, show_progress=False)
    files = RunDir(tmp_path / "run").lora_files()
    assert set(files) == {"transformer", "transformer_2"}
    ours = generate(run.model, tmp_path / "run", GenerateConfig(prompt=PROMPT, steps=4, seed=3), tmp_path / "o.mp4")

    folder = resolve_model(run.model).folder
    stock = WanPipeline.from_pretrained(folder)
    stock.load_lora_weights(str(tmp_path / "run"), weight_name=files["transformer"].name, adapter_name="relation")
    stock.load_lora_weights(str(tmp_path / "run"), weight_name=files["transformer_2"].name, adapter_name="relation",
                            load_into_transformer_2=True)
    for component, path in files.items():  # every key of each file went into its expert, and nothing else
        with safe_open(str(path), framework="pt") as handle:
            keys = {key.removeprefix("transformer.") for key in handle.keys()}
        loaded = get_peft_model_state_dict(getattr(stock, component), adapter_name="relation")
        assert set(loaded) == keys
        assert any(value.abs().sum() > 0 for key, value in loaded.items() if "lora_B" in key)
    frames = stock(PROMPT, num_frames=13, height=64, width=64, num_inference_steps=4, guidance_scale=5.0,
                   generator=torch.Generator("cpu").manual_seed(3), max_sequence_length=32,  # the tiny tokenizer's
                   output_type="np").frames[0]
    expected = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    assert np.array_equal(ours.frames, expected)

    base = generate(run.model, None, GenerateConfig(prompt=PROMPT, steps=4, seed=3), tmp_path / "b.mp4")
    assert not np.array_equal(base.frames, ours.frames)  # the relation changed the video


def test_ti2v_5b_trains_and_generates_with_its_48_channel_16x_vae(cache_dir, dataset_dir, tmp_path):
    run = run_config("tiny-random-wan22-5b", cache_dir, dataset_dir, tmp_path / "run", steps=3)
    source = resolve_model(run.model)
    assert source.spec.latent_factors() == (16, 4) and source.spec.side_multiple == 32
    assert source.spec.clip_shape_problem(13, 48, 64) == "height: this model needs a multiple of 32; 48 -> 64"
    result = train(run, show_progress=False)
    assert result.lora_path.is_file() and len(result.losses) == 3
    from dreamrelation.data.cache import prepare_dataset
    from dreamrelation.data.dataset import scan_dataset

    loaded = load_model(run.model)
    record = prepare_dataset(loaded, scan_dataset(dataset_dir), run.data, cache_dir, False).records[0]
    assert record["latent_mean"].shape == (48, 4, 4, 4)  # 13 frames -> 4, 64 px / 16 -> 4
    assert record["subject_masks"].shape == (2, 4, 4, 4)
    frames = generate(run.model, tmp_path / "run", GenerateConfig(prompt=PROMPT, steps=2), tmp_path / "v.mp4").frames
    assert frames.shape == (13, 64, 64, 3)


def test_a_warm_cache_run_never_loads_the_text_encoder_or_the_vae(cache_dir, dataset_dir, tmp_path, monkeypatch):
    loads = []
    load_component = ModelSpecification.load_component

    def counting(self, source, name, dtype):
        loads.append(name)
        return load_component(self, source, name, dtype)

    monkeypatch.setattr(ModelSpecification, "load_component", counting)
    fresh = tmp_path / "cache"
    first = train(run_config("tiny-random-wan", fresh, dataset_dir, tmp_path / "first", steps=2), show_progress=False)
    assert first.encoded_clips == 2 and {"text_encoder", "vae"} <= set(loads)

    loads.clear()

    def refuse(self, source, name, dtype):
        raise AssertionError(f"{name} loaded although every clip is cached")

    monkeypatch.setattr(ModelSpecification, "load_component", refuse)
    warm = train(run_config("tiny-random-wan", fresh, dataset_dir, tmp_path / "warm", steps=2), show_progress=False)
    assert warm.encoded_clips == 0 and warm.lora_path.is_file()


def test_a_job_resolves_its_model_once_and_the_worker_uses_the_pinned_plan(cache_dir, tmp_path, monkeypatch):
    from dreamrelation.jobs.worker import run_job
    from dreamrelation.studio.service import Studio

    resolved = []
    resolve_folder = models.resolve_folder

    def counting(config):
        resolved.append(config.name)
        return resolve_folder(config)

    monkeypatch.setattr(models, "resolve_folder", counting)
    studio = Studio(tmp_path / "home", ModelConfig(name="tiny-random-wan22", device="cpu", cache_dir=cache_dir),
                    start_scheduler=False)
    owner = studio.owner_key("session:abc")
    dataset = studio.load_example(owner, "orbits")
    assert "two experts" in studio.describe() and "high-noise expert" in studio.describe()
    job = studio.start_training(owner, dataset.dataset_id, "quick",
                                {"steps": 2, "num_frames": 13, "height": 64, "width": 64, "experts": "low"})
    assert job.source["folder"] == str(studio.source.folder) and job.source["memory"]["preset"] == "bf16"
    # What the preset means here: the job summary says fp32 on a CPU, not "bf16".
    assert "on the CPU" in studio.job_status(owner, job.id).memory_note
    assert "fp32" in studio.job_status(owner, job.id).memory_note
    job.folder.write_spec(job.settings, job.source)  # as the scheduler does before starting a worker
    assert run_job(job.folder) == 0
    assert resolved == ["tiny-random-wan22"]  # once, when the app planned the job; the worker used the pin
    assert set(RunDir(job.output_dir).lora_files()) == {"transformer_2"}


def test_a_pinned_plan_that_no_longer_fits_fails_in_one_line_before_loading():
    estimate = memory.MemoryEstimate("fp8", 20 * memory.GB, 0, 10 * memory.GB, 0, False)
    plan = memory.MemoryPlan("fp8", estimate, "memory fp8 (as requested)")
    memory.check_plan_fits(plan, torch.device("cuda"), free_memory=lambda device: 40 * memory.GB)
    with pytest.raises(memory.InsufficientMemory, match=r"^this job was planned with memory fp8, which needs ~32 GB"
                                                        r" with fp8, but the GPU now has 8 GB free: free the GPU"):
        memory.check_plan_fits(plan, torch.device("cuda"), free_memory=lambda device: 8 * memory.GB)
    memory.check_plan_fits(plan, torch.device("cpu"))  # nothing to check on the CPU


def test_expert_choice_the_model_lacks_is_refused_before_anything_loads(cache_dir, dataset_dir, tmp_path):
    with pytest.raises(ExpertChoiceError, match="experts 'both': this model has one transformer"):
        plan_training(run_config("tiny-random-wan", cache_dir, dataset_dir, tmp_path, "both"))


def test_the_card_of_a_two_expert_relation_shows_the_stock_two_call_load(cache_dir, dataset_dir, tmp_path):
    import ast

    run = run_config("tiny-random-wan22", cache_dir, dataset_dir, tmp_path / "run", "both", steps=1)
    train(run, show_progress=False)
    card = RunDir(tmp_path / "run").model_card.read_text()
    code = card.split("```python\n")[1].split("```")[0]
    ast.parse(code)
    assert 'pipe.load_lora_weights("<this folder>", weight_name="relation_lora.safetensors")\n' in code
    assert ('pipe.load_lora_weights("<this folder>", weight_name="relation_lora_transformer_2.safetensors", '
            'load_into_transformer_2=True)\n') in code


def test_the_comfyui_export_of_each_expert_loads_through_stock_diffusers_with_identical_frames(
        cache_dir, dataset_dir, tmp_path):
    from dreamrelation import cli

    run = run_config("tiny-random-wan22", cache_dir, dataset_dir, tmp_path / "run", "both", steps=8)
    train(run, show_progress=False)
    assert cli.main(["export", str(tmp_path / "run"), "--format", "comfyui"]) == 0
    twins = {component: path.with_name(path.stem + "_comfyui.safetensors")
             for component, path in RunDir(tmp_path / "run").lora_files().items()}
    for path in twins.values():
        with safe_open(str(path), framework="pt") as handle:
            assert all(key.startswith("diffusion_model.blocks.") for key in handle.keys())

    ours = generate(run.model, tmp_path / "run", GenerateConfig(prompt=PROMPT, steps=4, seed=5), tmp_path / "o.mp4")
    stock = WanPipeline.from_pretrained(resolve_model(run.model).folder)
    stock.load_lora_weights(str(twins["transformer"]))
    stock.load_lora_weights(str(twins["transformer_2"]), load_into_transformer_2=True)
    frames = stock(PROMPT, num_frames=13, height=64, width=64, num_inference_steps=4, guidance_scale=5.0,
                   generator=torch.Generator("cpu").manual_seed(5), max_sequence_length=32, output_type="np").frames[0]
    assert np.array_equal(ours.frames, (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8))
