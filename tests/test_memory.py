"""Memory presets: the peak-memory estimate by hand, the choice by free memory, and every preset training on CPU."""

import pytest
import torch
from diffusers import MochiPipeline

from dreamrelation.config import DataConfig, GenerateConfig, MethodConfig, RunConfig, TrainConfig
from dreamrelation.export import LORA_FILENAME
from dreamrelation.generate import generate
from dreamrelation.method.adapters import adapter_parameter_count, add_adapters
from dreamrelation.models import load_model, memory
from dreamrelation.models.base import ClipShape
from dreamrelation.train.planning import plan_training
from dreamrelation.train.trainer import train

from helpers import write_two_subject_dataset

CLIP = dict(num_frames=7, height=32, width=32)
SIZE = memory.ModelSize(transformer=1000, largest_block=100, blocks=4, width=8, encoders=50)
PROFILE = memory.MemoryProfile(training=10, inference=5, vae=2, vae_tile_pixels=100)
TOKENS = memory.ClipTokens(latent=20, text=4, pixels=1000)
OVERHEAD = 1.5 * memory.GB


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_two_subject_dataset(tmp_path_factory.mktemp("data"), num_videos=1, **CLIP)


def test_the_estimate_adds_up_as_computed_by_hand():
    # A block's tokens x width x 2 bytes: (20 + 4) x 8 x 2 = 384.
    def total(preset, **kwargs):
        options = dict(training=True, gradient_checkpointing=False, adapter_parameters=10) | kwargs
        return memory.estimate_memory(SIZE, PROFILE, TOKENS, preset, **options)

    plain = total("bf16")
    assert (plain.weights, plain.adapters, plain.activations) == (2000, 160, 4 * 10 * 384)
    assert plain.encoding == 50 * 2 + 2 * 1000 and not plain.vae_tiling
    assert plain.total == int(2000 + 160 + 15360 + OVERHEAD)
    assert total("fp8").weights == 1000
    assert total("nf4").weights == int(1000 * (0.5 + 4 / 64))
    assert total("offload").weights == 2 * 100 * 2
    assert total("bf16", gradient_checkpointing=True).activations == 4 * 384 + 10 * 384
    generation = total("bf16", training=False)
    assert (generation.adapters, generation.activations) == (20, 2 * 5 * 384)
    # Tiles once the untiled VAE would not fit the free memory: 100 pixels' worth instead of 1000.
    tiled = total("bf16", free=int(OVERHEAD) + 1000)
    assert tiled.vae_tiling and tiled.encoding == 100 + 2 * 100


def fake_gpu(monkeypatch, free_gb: float):
    """A test double of torch.cuda.mem_get_info: `free_gb` free of 80 GB."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gb * memory.GB), 80 * memory.GB))


def full_size_estimates(free_gb):
    """Totals in GB of a Mochi-1-sized model (10B transformer, T5-XXL, 48 blocks of width 3072) at 61x480x848."""
    size = memory.ModelSize(transformer=10_000_000_000, largest_block=205_000_000, blocks=48, width=3072,
                            encoders=4_900_000_000)
    tokens = memory.ClipTokens(latent=11 * 30 * 53, text=256, pixels=61 * 480 * 848)
    profile = memory.MemoryProfile(training=24, inference=10, vae=1024, vae_tile_pixels=12 * 256 * 256)
    return lambda preset, free: memory.estimate_memory(
        size, profile, tokens, preset, training=True, gradient_checkpointing=True, adapter_parameters=50_000_000,
        free=free,
    )


@pytest.mark.parametrize("free_gb, expected", [(70, "bf16"), (30, "fp8"), (15, "offload")])
def test_auto_picks_the_least_lossy_preset_that_fits(monkeypatch, free_gb, expected):
    fake_gpu(monkeypatch, free_gb)
    estimate = full_size_estimates(free_gb)
    plan = memory.choose_preset("auto", torch.device("cuda"), estimate, "61x480x848")
    assert plan.preset == expected
    assert plan.estimate.total <= free_gb * memory.GB
    assert plan.reason.startswith(f"memory {expected} (the least lossy preset that fits): needs ~")
    assert plan.reason.endswith(f"at 61x480x848, {free_gb} GB free")


def test_a_job_that_fits_no_preset_is_refused_with_the_fix(monkeypatch):
    fake_gpu(monkeypatch, 4)
    estimate = full_size_estimates(4)
    with pytest.raises(memory.InsufficientMemory) as refused:
        memory.choose_preset("fp8", torch.device("cuda"), estimate, "61x480x848")
    needed = estimate("fp8", 4 * memory.GB).total / memory.GB
    assert str(refused.value) == (
        f"needs ~{needed:.0f} GB with fp8 at 61x480x848; this GPU has 4 GB free: try fewer frames or a smaller "
        "size or --memory offload"
    )
    with pytest.raises(memory.InsufficientMemory, match="needs ~.* GB with bf16 .* 4 GB free: try fewer frames"):
        memory.choose_preset("auto", torch.device("cuda"), estimate, "61x480x848")


def test_the_cpu_plans_nothing_and_refuses_nf4():
    never = lambda preset, free: pytest.fail("the CPU estimates nothing")  # noqa: E731
    assert memory.choose_preset("auto", torch.device("cpu"), never, "7x32x32").preset == "bf16"
    assert memory.choose_preset("fp8", torch.device("cpu"), never, "7x32x32").preset == "fp8"
    with pytest.raises(memory.InsufficientMemory, match="nf4 needs a CUDA GPU"):
        memory.choose_preset("nf4", torch.device("cpu"), never, "7x32x32")


def test_a_run_is_planned_from_the_meta_model_before_any_weight_loads(model_config, dataset_dir, monkeypatch, tmp_path):
    """The real planning path on a tiny model, on a (faked) GPU: the meta model's counts match the loaded one's."""
    loaded = load_model(model_config)
    method = MethodConfig(rank=4)
    counted = adapter_parameter_count(loaded.pipe.transformer, loaded.spec, method)
    add_adapters(loaded.pipe.transformer, loaded.spec, method)
    assert counted == sum(p.numel() for n, p in loaded.pipe.transformer.named_parameters() if "lora_" in n)

    cuda = model_config.model_copy(update={"device": "cuda"})
    run = RunConfig(model=cuda, data=DataConfig(data_dir=dataset_dir, **CLIP), method=method,
                    train=TrainConfig(output_dir=tmp_path))
    fake_gpu(monkeypatch, 2)
    plan = plan_training(run).memory
    size = plan.estimate
    assert plan.preset == "bf16" and size.adapters == counted * 16
    assert size.weights == sum(p.numel() for p in loaded.pipe.transformer.parameters() if not p.requires_grad) * 2
    fake_gpu(monkeypatch, 1)  # less than the overhead alone
    with pytest.raises(memory.InsufficientMemory, match=r"at 7x32x32; this GPU has 1 GB free"):
        plan_training(run)


@pytest.mark.parametrize("preset", ["bf16", "fp8", "offload", "nf4"])
def test_every_preset_trains_and_its_export_matches_stock_diffusers(model_config, dataset_dir, tmp_path, preset):
    if preset == "nf4" and not torch.cuda.is_available():
        pytest.skip("nf4 needs a CUDA GPU and bitsandbytes")
    config = model_config.model_copy(update={"memory": preset})
    run = RunConfig(model=config, data=DataConfig(data_dir=dataset_dir, **CLIP), method=MethodConfig(rank=4),
                    train=TrainConfig(output_dir=tmp_path / "run", steps=3, learning_rate=1e-2))
    result = train(run, show_progress=False)
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result.losses)

    request = GenerateConfig(prompt="A cat is chasing a dog.", seed=3, steps=2, **CLIP)
    ours = generate(config, result.output_dir, request, tmp_path / "ours.mp4")
    stock = MochiPipeline.from_pretrained(load_model(model_config).folder)
    stock.load_lora_weights(str(result.output_dir), weight_name=LORA_FILENAME)
    if preset == "fp8":  # after the LoRA, so that it keeps its dtype (layerwise casting skips peft layers)
        stock.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    frames = stock(request.prompt, num_frames=7, height=32, width=32, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(3), max_sequence_length=32, output_type="np").frames[0]
    assert (ours.frames == (frames.clip(0, 1) * 255).round().astype("uint8")).all()


def test_fp8_stores_the_base_in_float8_and_keeps_norms_and_adapters(model_config):
    loaded = load_model(model_config.model_copy(update={"memory": "fp8"}))
    transformer = loaded.pipe.transformer
    add_adapters(transformer, loaded.spec, MethodConfig(rank=4))
    block = transformer.transformer_blocks[0]
    assert block.attn1.to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert block.attn1.to_q.lora_A["relation"].weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for n, p in transformer.named_parameters() if "norm" in n)


def test_generation_plans_at_the_model_default_clip(model_config):
    loaded = load_model(model_config)
    assert loaded.memory.preset == "bf16" and "on the CPU" in loaded.memory.reason
    assert isinstance(loaded.defaults, ClipShape)


def test_the_studio_refuses_a_job_that_cannot_fit_before_a_worker_starts(cache_dir, tmp_path, monkeypatch):
    from dreamrelation.config import ModelConfig
    from dreamrelation.studio.service import Studio
    from dreamrelation.studio.workspace import StudioError

    studio = Studio(tmp_path / "home", ModelConfig(name="tiny-random", device="cuda", cache_dir=cache_dir),
                    start_scheduler=False)
    owner = studio.owner_key("session:abc")
    dataset = studio.load_example(owner, "orbits")
    settings = {"num_frames": 7, "height": 32, "width": 32}
    fake_gpu(monkeypatch, 1)
    with pytest.raises(StudioError, match=r"^needs ~\d+ GB with bf16 at 7x32x32; this GPU has 1 GB free: try fewer"):
        studio.start_training(owner, dataset.dataset_id, "quick", settings)
    assert studio.list_jobs(owner) == []
    fake_gpu(monkeypatch, 40)
    job = studio.start_training(owner, dataset.dataset_id, "quick", settings)
    assert job.source["memory"]["preset"] == "bf16"  # the planned preset is the one the worker will use
    assert studio.job_status(owner, job.id).memory == "bf16"
    assert studio.job_status(owner, job.id).memory_note.startswith("memory bf16 (the least lossy preset that fits)")
