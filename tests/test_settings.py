"""Settings that mean the same in every front-end: training presets, rank -> alpha, generation defaults."""

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
from peft.tuners.lora import LoraLayer

from dreamrelation import cli
from dreamrelation.config import DataConfig, GenerateConfig, MethodConfig, ModelConfig, RunConfig
from dreamrelation.method.adapters import add_adapters, adapter_specs
from dreamrelation.models import load_model, resolve_model
from dreamrelation.models.base import (
    ClipShape,
    GenerationDefaults,
    read_generation_defaults,
    write_clip_defaults,
)
from dreamrelation.models.mochi import MochiSpecification
from dreamrelation.models.wan import WanSpecification
from dreamrelation.generate import with_model_defaults
from dreamrelation.studio.training import build_run

PROMPT = "A red circle approaches a blue square."


def cli_run(*argv: str) -> RunConfig:
    return cli.build_run_config(cli.build_parser().parse_args(["train", *argv]))


# --- presets ----------------------------------------------------------------------------------------------


def test_the_cli_and_the_app_build_the_same_quick_run(tmp_path):
    run = cli_run("--data", str(tmp_path), "--preset", "quick")
    assert run == build_run(ModelConfig(), tmp_path, "quick")
    # By hand: the quick preset's values; the rest are the settings' defaults (alpha = the rank).
    assert (run.train.steps, run.train.learning_rate, run.train.warmup_steps, run.train.checkpoint_every) == (
        1600, 1e-3, 200, 25)
    assert (run.method.lambda_mask, run.method.relation_share, run.method.subject_dropout) == (5, 1.0, 0.5)
    assert run.method.dropout_subject_weight == 1.0
    assert (run.method.rank, run.method.resolved_alpha, run.method.subject_adapters) == (16, 16.0, True)


def test_the_cli_default_is_the_paper_preset_which_is_runconfigs_defaults(tmp_path):
    expected = RunConfig(data=DataConfig(data_dir=tmp_path))
    assert cli_run("--data", str(tmp_path)) == expected == build_run(ModelConfig(), tmp_path, "paper")
    assert (expected.train.steps, expected.method.rank, expected.method.resolved_alpha) == (2000, 16, 16.0)


def test_flags_override_the_preset_as_the_apps_settings_do(tmp_path):
    run = cli_run("--data", str(tmp_path), "--preset", "quick", "--steps", "7", "--rank", "4")
    assert run == build_run(ModelConfig(), tmp_path, "quick", {"steps": 7, "rank": 4})
    assert (run.train.steps, run.train.learning_rate, run.method.rank, run.method.resolved_alpha) == (7, 1e-3, 4, 4.0)


def test_a_config_file_sits_between_the_preset_and_the_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{data_dir: '{tmp_path}'}}\ntrain: {{steps: 50, learning_rate: 0.001}}\n")
    run = cli_run("--config", str(config), "--preset", "quick", "--lr", "0.003")
    assert (run.train.steps, run.train.learning_rate, run.train.checkpoint_every) == (50, 0.003, 25)


def test_an_unknown_preset_is_one_line_in_the_cli_and_a_value_error_in_the_app(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--data", str(tmp_path), "--preset", "turbo"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err == "dreamrelation train: error: argument --preset: invalid choice: 'turbo' (choose from 'paper', 'quick')\n"
    with pytest.raises(ValueError, match=r"^unknown preset 'turbo'; choose one of paper, quick$"):
        build_run(ModelConfig(), tmp_path, "turbo")


# --- rank -> alpha ----------------------------------------------------------------------------------------


def test_alpha_follows_the_rank_unless_set():
    assert MethodConfig().resolved_alpha == 16.0  # the paper's rank 16, alpha 16
    assert MethodConfig(rank=8).alpha is None and MethodConfig(rank=8).resolved_alpha == 8.0
    assert MethodConfig(rank=8, alpha=3).resolved_alpha == 3.0
    method = MethodConfig(rank=4, ffn_rank=2)
    assert method.resolved_ffn_alpha == 4.0  # the ffn adapter keeps the relation adapter's alpha
    assert {spec.name: (spec.rank, spec.alpha) for spec in adapter_specs(method)} == {
        "relation": (4, 4.0), "subject1": (4, 4.0), "subject2": (4, 4.0), "ffn": (2, 4.0)}


def test_the_cli_and_the_app_give_a_rank_the_same_alpha(tmp_path):
    cli_method = cli_run("--data", str(tmp_path), "--rank", "4").method
    app_method = build_run(ModelConfig(), tmp_path, "paper", {"rank": 4}).method
    assert cli_method == app_method and app_method.resolved_alpha == 4.0
    assert cli_run("--data", str(tmp_path), "--rank", "4", "--alpha", "16").method.resolved_alpha == 16.0


@pytest.mark.parametrize("saved_alpha, scale", [(None, 1.0), (8.0, 2.0)], ids=["alpha-unset", "alpha-8"])
def test_a_saved_config_reloaded_with_another_rank_keeps_its_alpha_rule(tiny, tmp_path, saved_alpha, scale):
    """config.yaml of the defaults (rank 16) + `--rank 4`: an unset alpha follows the new rank (scale 1), a
    set one stays (8 / 4 = 2), on the adapters peft actually adds."""
    saved = RunConfig(data=DataConfig(data_dir=tmp_path), method=MethodConfig(alpha=saved_alpha))
    (tmp_path / "config.yaml").write_text(saved.to_yaml())
    run = cli_run("--config", str(tmp_path / "config.yaml"), "--rank", "4")
    assert (run.method.rank, run.method.alpha) == (4, saved_alpha)
    add_adapters(tiny.pipe.transformer, tiny.spec, run.method)
    layers = [m for m in tiny.pipe.transformer.modules() if isinstance(m, LoraLayer)]
    assert layers and set().union(*(layer.scaling for layer in layers)) == {"relation", "subject1", "subject2", "ffn"}
    assert {value for layer in layers for value in layer.scaling.values()} == {scale}


# --- generation defaults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, pipeline, expected", [
    (MochiSpecification, "MochiPipeline", GenerationDefaults(steps=64, guidance_scale=4.5)),
    (WanSpecification, "WanPipeline", GenerationDefaults(steps=50, guidance_scale=5.0)),
])
def test_a_familys_generation_defaults_are_its_diffusers_pipelines(spec, pipeline, expected):
    import diffusers

    parameters = inspect.signature(getattr(diffusers, pipeline).__call__).parameters
    assert spec.generation == expected
    assert (parameters["num_inference_steps"].default, parameters["guidance_scale"].default) == (
        expected.steps, expected.guidance_scale)


def test_a_pipeline_folder_may_declare_its_generation_defaults(tmp_path):
    family = GenerationDefaults(steps=64, guidance_scale=4.5)
    assert read_generation_defaults(tmp_path, family) == family  # no dreamrelation.json
    write_clip_defaults(tmp_path, ClipShape(7, 32, 32, 24))
    assert read_generation_defaults(tmp_path, family) == family  # clip defaults only
    write_clip_defaults(tmp_path, ClipShape(7, 32, 32, 24), GenerationDefaults(steps=12, guidance_scale=2.5))
    assert read_generation_defaults(tmp_path, family) == GenerationDefaults(steps=12, guidance_scale=2.5)
    assert resolve_model(ModelConfig(name="toy")).generation == GenerationDefaults(steps=30, guidance_scale=3.0)


def test_a_request_leaves_steps_and_guidance_to_the_model_unless_it_sets_them():
    loaded = SimpleNamespace(generation=GenerationDefaults(steps=30, guidance_scale=6.0))
    assert (GenerateConfig(prompt=PROMPT).steps, GenerateConfig(prompt=PROMPT).guidance_scale) == (None, None)
    resolved = with_model_defaults(loaded, GenerateConfig(prompt=PROMPT))
    assert (resolved.steps, resolved.guidance_scale) == (30, 6.0)
    resolved = with_model_defaults(loaded, GenerateConfig(prompt=PROMPT, steps=5, guidance_scale=0))
    assert (resolved.steps, resolved.guidance_scale) == (5, 0.0)  # CFG 0 is a setting, not "unset"


@pytest.fixture(scope="module")
def toy():
    return load_model(ModelConfig(name="toy", device="cpu"))


def test_cli_generate_samples_at_the_toy_models_declared_defaults(toy, tmp_path, monkeypatch):
    monkeypatch.setattr("dreamrelation.generate.load_model", lambda model: toy)
    assert cli.main(["generate", "--prompt", PROMPT, "--output", str(tmp_path / "x.mp4"), "--frames", "7"]) == 0
    assert (len(toy.pipe.scheduler.timesteps), toy.pipe.guidance_scale) == (30, 3.0)


def test_the_apps_generation_tab_and_gallery_use_the_models_defaults(toy, tmp_path):
    from dreamrelation.studio import Studio
    from ui.layout import build_demo

    studio = Studio(tmp_path / "home", ModelConfig(name="toy", device="cpu"), start_scheduler=False)
    fields = {block.elem_id: block.value for block in build_demo(studio).blocks.values()
              if getattr(block, "elem_id", None) in ("gen-steps", "gen-cfg")}
    assert fields == {"gen-steps": 30, "gen-cfg": 3.0}
    studio.generator._loaded = toy  # the module's copy: loaded once
    record = studio.generator.generate(None, GenerateConfig(prompt=PROMPT, num_frames=7), tmp_path / "gen", {})
    assert (record.settings["steps"], record.settings["guidance_scale"]) == (30, 3.0)
    assert len(toy.pipe.scheduler.timesteps) == 30
