"""benchmarks/train_step.py: the presets run end to end at tiny sizes and print both rows and the ratio (not the
numbers); the full-size presets have their published sizes and latent grids, check their code path on the CPU with
--blocks and fail fast without it."""

import pytest

from helpers import load_script

TINY = ["--steps", "2", "--warmup", "1", "--height", "32", "--width", "32"]


@pytest.fixture(autouse=True)
def model_cache(cache_dir, monkeypatch):
    """The Wan 2.2 presets bind their family to a tiny-random pipeline, built in the session's cache, not the user's
    (the benchmark's child processes inherit the variable)."""
    monkeypatch.setenv("DREAMRELATION_CACHE", str(cache_dir))


def table_rows(output: str) -> list[list[str]]:
    """The cells of every body row of the markdown table (header and separator left out)."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [line.strip("| ").split(" | ") for line in lines[2:]]


def check_table(output: str, preset: str) -> None:
    rows = table_rows(output)
    assert [row[0] for row in rows] == ["(a) plain LoRA", "(b) DreamRelation", "(b)/(a)"]
    assert rows[0][1] == "direct" and rows[1][1] == "relation+subject1+subject2+ffn"
    assert float(rows[2][3]) > 0
    assert f"Preset {preset} on cpu" in output


WAN_TEXT = "text (32 tokens, 12 valid, zero-padded, no mask),"


@pytest.mark.parametrize("preset, frames, expected", [
    ("small", "13", ["-> latents (12, 3, 4, 4), text (32 tokens, 12 valid),"]),
    # Wan's VAE: 16 channels, 4x in time with a causal first frame, 8x in space; text zero-padded, unmasked.
    ("small-wan", "9", [f"-> latents (16, 3, 4, 4), {WAN_TEXT}", "cross-attention to every text token"]),
    # The sigmas come from the expert's range, as `--experts high` trains it (Wan2.2-T2V-A14B's boundary).
    ("small-wan22", "9", [f"-> latents (16, 3, 4, 4), {WAN_TEXT}",
                          "Trains the high-noise expert: sigma in [0.875, 1] (as --experts high)."]),
], ids=["small-mochi", "small-wan", "small-wan22"])
def test_small_preset_runs(capsys, preset, frames, expected):
    script = load_script("benchmarks/train_step.py")
    script.main(["--preset", preset, "--frames", frames, *TINY])
    output = capsys.readouterr().out
    check_table(output, preset)
    for line in expected:
        assert line in output


def test_wan_1_3b_preset_code_path_on_cpu_with_two_blocks(capsys):
    script = load_script("benchmarks/train_step.py")
    script.main(["--preset", "wan2.1-1.3b", "--device", "cpu", "--blocks", "2", "--frames", "9", "--steps", "1",
                 "--warmup", "1", "--height", "32", "--width", "32"])
    output = capsys.readouterr().out
    check_table(output, "wan2.1-1.3b")
    assert "text (512 tokens, 30 valid, zero-padded, no mask), gradient checkpointing on" in output
    assert "Built with --blocks 2 (" in output and "bfloat16" in output
    assert "Trains the" not in output  # one transformer for every noise level


def test_wan22_5b_preset_code_path_on_cpu_with_one_block(capsys):
    script = load_script("benchmarks/train_step.py")
    script.main(["--preset", "wan2.2-5b", "--device", "cpu", "--blocks", "1", "--frames", "5", "--steps", "1",
                 "--warmup", "1", "--height", "32", "--width", "32"])
    output = capsys.readouterr().out
    check_table(output, "wan2.2-5b")
    # TI2V-5B's VAE: 48 channels and 16x in space (32x32 pixels -> 2x2 latents), 4x in time.
    assert "-> latents (48, 2, 2, 2), text (512 tokens, 30 valid, zero-padded, no mask)" in output
    assert "Built with --blocks 1 (" in output


@pytest.mark.parametrize("preset, billions, latents", [
    ("wan2.1-1.3b", 1.42, (16, 21, 60, 104)),
    ("wan2.2-5b", 5.00, (48, 31, 44, 80)),
    ("wan2.2-a14b-high", 14.29, (16, 21, 60, 104)),
])
def test_full_size_wan_presets_have_their_published_size_and_latent_grid(preset, billions, latents):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    script = load_script("benchmarks/train_step.py")
    config = {"wan2.1-1.3b": script.WAN_1_3B, "wan2.2-5b": script.WAN22_5B, "wan2.2-a14b-high": script.WAN_14B}[preset]
    with init_empty_weights():  # the full-size architecture, without its memory
        transformer = WanTransformer3DModel(**config)
    assert sum(p.numel() for p in transformer.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)
    assert script.latent_shape(script.parse_args(["--preset", preset]), transformer) == latents


def test_presets_name_their_family_and_check_shapes():
    script = load_script("benchmarks/train_step.py")
    assert {name: preset.spec.pipeline_class_name for name, preset in script.PRESETS.items()} == {
        "small": "MochiPipeline", "mochi-1": "MochiPipeline", "small-wan": "WanPipeline", "small-wan22": "WanPipeline",
        "wan2.1-1.3b": "WanPipeline", "wan2.2-5b": "WanPipeline", "wan2.2-a14b-high": "WanPipeline",
    }
    args = script.parse_args(["--preset", "wan2.1-1.3b"])
    assert (args.device, args.frames, args.height, args.width, args.blocks) == ("cuda", 81, 480, 832, None)
    args = script.parse_args(["--preset", "wan2.2-5b"])
    assert (args.device, args.frames, args.height, args.width) == ("cuda", 121, 704, 1280)
    experts = [(e.component, e.name, e.sigma_low, e.sigma_high) for e in script.PRESETS["wan2.2-a14b-high"].spec.experts]
    assert experts == [("transformer", "high", 0.875, 1.0), ("transformer_2", "low", 0.0, 0.875)]
    script.parse_args(["--preset", "small-wan", "--height", "48"])
    with pytest.raises(SystemExit):
        script.parse_args(["--preset", "wan2.2-5b", "--height", "48"])  # 16x VAE and 2x2 patches: multiples of 32
    with pytest.raises(SystemExit):
        script.parse_args(["--preset", "small-wan", "--frames", "25", "--frames", "19"])  # Wan takes 4k+1
    with pytest.raises(SystemExit):
        script.parse_args(["--preset", "small", "--frames", "9"])  # Mochi takes 6k+1
    with pytest.raises(SystemExit):
        script.parse_args(["--preset", "small", "--blocks", "2"])  # the tiny-random pipeline's size is fixed


@pytest.mark.parametrize("preset", ["mochi-1", "wan2.1-1.3b", "wan2.2-5b", "wan2.2-a14b-high"])
def test_full_size_presets_fail_fast_on_cpu_without_blocks(preset):
    script = load_script("benchmarks/train_step.py")
    with pytest.raises(SystemExit) as exit_info:
        script.check_device(script.parse_args(["--preset", preset, "--device", "cpu"]))
    message = str(exit_info.value)
    assert message.startswith(f"train_step.py: --preset {preset} runs only on a CUDA GPU") and "\n" not in message
    assert "--blocks" in message
