"""The exported relation LoRA loads in stock diffusers and reproduces our model's outputs and frames, and so does its
ComfyUI twin on Wan; the model card's snippet is Python that prompts with the caption as written."""

import ast
import os
import re

import pytest
import torch
from diffusers import MochiPipeline, WanPipeline
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file

from dreamrelation import cli
from dreamrelation.config import DataConfig, GenerateConfig, MethodConfig, RunConfig
from dreamrelation.export import LORA_FILENAME, export_comfyui, export_lora, model_card
from dreamrelation.generate import GenerationError, generate, render
from dreamrelation.method.adapters import activate_adapters
from dreamrelation.models import load_model
from dreamrelation.models.wan import ORIGINAL_LORA_NAMES, WanSpecification
from dreamrelation.outputs import RunDir

from helpers import exported_run, trained_like, transformer_inputs


@pytest.mark.parametrize(
    "method",
    [
        MethodConfig(rank=4, alpha=4),
        MethodConfig(rank=4, alpha=12),  # alpha != rank: needs the metadata
        MethodConfig(rank=8, alpha=3, ffn_rank=2, ffn_alpha=5),  # relation and ffn differ
    ],
    ids=["alpha=rank", "alpha!=rank", "ranks-differ"],
)
def test_export_loads_in_stock_diffusers_and_reproduces_outputs(tiny, tmp_path, method):
    transformer = trained_like(tiny, method)
    run = RunConfig(data=DataConfig(data_dir=tmp_path), method=method)
    path = export_lora(MochiPipeline, {"transformer": transformer}, run, tmp_path, ["A dog is chasing a cat."])
    assert path == tmp_path / LORA_FILENAME and (tmp_path / "README.md").exists()

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    assert all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "transformer.transformer_blocks.0.attn1.to_out.0.lora_B.weight" in keys
    assert not any(p in k for k in keys for p in ("to_v", "add_v_proj", "subject"))  # no subject adapter inside

    stock = MochiPipeline.from_pretrained(tiny.folder)
    stock.load_lora_weights(str(tmp_path), weight_name=LORA_FILENAME)
    stock_lora_params = {n for n, _ in stock.transformer.named_parameters() if "lora_" in n}
    assert len(stock_lora_params) == len(keys)  # no missing or unexpected keys
    inputs = transformer_inputs(transformer)
    with torch.no_grad():
        ours = transformer(**inputs)[0]
        theirs = stock.transformer(**inputs)[0]
        base = tiny.pipe.transformer
        activate_adapters(base, [])
        without = base(**inputs)[0]
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    assert (ours - without).abs().max() > 1e-3  # the adapters do change the output


def test_generate_with_the_export_gives_the_frames_of_stock_diffusers(tiny, model_config, tmp_path):
    method = MethodConfig(rank=4, alpha=8, ffn_rank=2)
    transformer = trained_like(tiny, method)
    run = RunConfig(data=DataConfig(data_dir=tmp_path), method=method)
    export_lora(MochiPipeline, {"transformer": transformer}, run, tmp_path, ["A dog is chasing a cat."])
    request = GenerateConfig(prompt="A cat is chasing a dog.", seed=3, steps=3, num_frames=7, height=32, width=32)

    ours = generate(model_config, tmp_path, request, tmp_path / "ours.mp4")
    assert ours.frames.shape == (7, 32, 32, 3) and ours.path.exists()
    in_memory = render(tiny, request)  # the trained adapters in memory, no export involved
    stock = MochiPipeline.from_pretrained(tiny.folder)
    stock.load_lora_weights(str(tmp_path), weight_name=LORA_FILENAME)
    frames = stock(  # no guidance_scale: a request that sets none gets the stock pipeline's too
        "A cat is chasing a dog.",
        num_frames=7, height=32, width=32, num_inference_steps=3,
        generator=torch.Generator().manual_seed(3), max_sequence_length=32, output_type="np",
    ).frames[0]
    stock_frames = (frames.clip(0, 1) * 255).round().astype("uint8")
    assert (ours.frames == stock_frames).all()
    assert abs(ours.frames.astype(int) - in_memory.astype(int)).max() <= 1

    fused = generate(model_config, tmp_path, request.model_copy(update={"fuse_lora": True}), tmp_path / "fused.mp4")
    assert abs(fused.frames.astype(int) - ours.frames.astype(int)).max() <= 2


def test_generate_rejects_bad_requests_before_loading_anything(model_config, tmp_path):
    request = GenerateConfig(prompt="A dog.", steps=2)
    with pytest.raises(GenerationError, match="no relation LoRA"):
        generate(model_config, tmp_path / "missing", request, tmp_path / "x.mp4")
    (tmp_path / "bad.safetensors").write_text("not a tensor file")
    with pytest.raises(GenerationError, match="not a readable"):
        generate(model_config, tmp_path / "bad.safetensors", request, tmp_path / "x.mp4")
    with pytest.raises(GenerationError, match=".mp4"):
        generate(model_config, None, request, tmp_path / "x.gif")
    with pytest.raises(ValueError, match="prompt is empty"):
        GenerateConfig(prompt="   ")


def test_the_model_cards_snippet_is_python_that_prompts_with_the_caption_as_written(tmp_path):
    caption = 'A "dog" isn\'t chasing the cat\'s C:\\toy \\n.'
    card = model_card(RunConfig(data=DataConfig(data_dir=tmp_path)), "MochiPipeline", [caption])
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    calls = [node for node in ast.walk(ast.parse(snippet))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "pipe"]
    assert [call.args[0].value for call in calls] == [caption]
    metadata = ModelCard(card).data  # the front matter is YAML the Hub reads
    assert metadata.library_name == "diffusers"
    assert metadata.tags == ["lora", "text-to-video", "dreamrelation", "relation"]


# --- ComfyUI format -----------------------------------------------------------------------------------------


def _diffusers_keys(state):
    """A pipeline-level LoRA state (`transformer.` keys, as diffusers' converter gives it) as the transformer's."""
    return {key.removeprefix("transformer."): value for key, value in state.items()}


def test_the_comfyui_keys_are_what_diffusers_converts_back_to_ours():
    """Every row of the table, both ways: an original-format LoRA that diffusers' own converter turns into ours
    comes back key for key, and an `.alpha` comes back as diffusers folds it into the weights."""
    generator = torch.Generator().manual_seed(0)
    original = {}
    for block in (0, 1):
        for name in ORIGINAL_LORA_NAMES.values():
            original[f"diffusion_model.blocks.{block}.{name}.lora_A.weight"] = torch.randn(4, 6, generator=generator)
            original[f"diffusion_model.blocks.{block}.{name}.lora_B.weight"] = torch.randn(6, 4, generator=generator)
    ours = _diffusers_keys(_convert_non_diffusers_wan_lora_to_diffusers(dict(original)))
    modules = {key.rpartition(".lora_")[0] for key in ours}
    back = WanSpecification().original_lora_state(ours, {module: 4 for module in modules})
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)

    alphas = {module: 6 if module == "blocks.1.attn2.to_out.0" else 4 for module in modules}
    with_alpha = WanSpecification().original_lora_state(ours, alphas)
    assert with_alpha.keys() - back.keys() == {"diffusion_model.blocks.1.cross_attn.o.alpha"}
    a, b = (f"blocks.1.attn2.to_out.0.lora_{m}.weight" for m in "AB")
    expected = 6 / 4 * ours[b] @ ours[a]  # before the converter, which scales the tensors in place
    folded = _diffusers_keys(_convert_non_diffusers_wan_lora_to_diffusers(with_alpha))
    torch.testing.assert_close(folded[b] @ folded[a], expected)


def _stock_frames(folder, lora_file):
    """Frames of a fresh stock WanPipeline that loaded `lora_file`, and the LoRA parameters it made."""
    pipe = WanPipeline.from_pretrained(folder)
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name)
    parameters = {name for name, _ in pipe.transformer.named_parameters() if "lora_" in name}
    frames = pipe("A cat is chasing a dog.", num_frames=5, height=32, width=32, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(3), max_sequence_length=32, output_type="np").frames[0]
    return torch.from_numpy(frames), parameters


@pytest.mark.parametrize(
    "method, alphas",
    [
        (MethodConfig(rank=4), {}),  # alpha = rank everywhere: no .alpha keys
        # Relation alpha 6 on rank 4, ffn alpha 3 on rank 2: every module carries its alpha.
        (MethodConfig(rank=4, alpha=6, ffn_rank=2, ffn_alpha=3), {"self_attn.q": 6.0, "cross_attn.o": 3.0}),
    ],
    ids=["alpha=rank", "alpha!=rank"],
)
def test_the_comfyui_export_generates_in_stock_wan_what_the_diffusers_file_does(
        wan, wan_config, tmp_path, method, alphas):
    lora = exported_run(wan, wan_config, method, tmp_path)
    comfyui = export_comfyui(lora, wan.spec)
    assert comfyui == tmp_path / "relation_lora_comfyui.safetensors"
    assert comfyui.stat().st_mode & 0o777 == 0o644
    original = load_file(comfyui)
    assert all(key.startswith("diffusion_model.") for key in original)
    found = {key: float(value) for key, value in original.items() if key.endswith(".alpha")}
    expected = {f"diffusion_model.blocks.{i}.{name}.alpha": alpha
                for i in range(len(wan.pipe.transformer.blocks)) for name, alpha in alphas.items()}
    modules = [key for key in original if key.endswith(".lora_A.weight")]
    assert expected.items() <= found.items() and len(found) == (len(modules) if alphas else 0)

    ours, our_parameters = _stock_frames(wan.folder, lora)
    theirs, their_parameters = _stock_frames(wan.folder, comfyui)
    assert their_parameters == our_parameters and len(their_parameters) == len(original) - len(found)
    if alphas:
        # diffusers folds alpha/rank into lora_A and lora_B on loading, where peft scales the product at run
        # time: the same function, rounded differently.
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    else:
        assert torch.equal(theirs, ours)


def test_cli_export_gives_a_wan_runs_comfyui_file_and_refuses_other_families_in_one_line(
        wan, wan_config, tiny, model_config, tmp_path, capsys):
    lora = exported_run(wan, wan_config, MethodConfig(rank=4), tmp_path / "wan")
    assert cli.main(["export", str(tmp_path / "wan")]) == 0  # --format diffusers: the file training wrote
    assert capsys.readouterr().out == f"{lora}\n"
    assert cli.main(["export", str(tmp_path / "wan"), "--format", "comfyui"]) == 0
    written = tmp_path / "wan" / "relation_lora_comfyui.safetensors"
    assert capsys.readouterr().out == f"{written}\n"
    direct = load_file(export_comfyui(lora, wan.spec, tmp_path / "direct.safetensors"))
    assert load_file(written).keys() == direct.keys()
    elsewhere = tmp_path / "new-folder" / "wan_comfyui.safetensors"
    assert cli.main(["export", str(tmp_path / "wan"), "--format", "comfyui", "--output", str(elsewhere)]) == 0
    assert capsys.readouterr().out == f"{elsewhere}\n" and load_file(elsewhere).keys() == direct.keys()

    exported_run(tiny, model_config, MethodConfig(rank=4), tmp_path / "other")
    assert cli.main(["export", str(tmp_path / "other"), "--format", "comfyui"]) == 2
    assert capsys.readouterr().err == (
        "dreamrelation: error: this model family has no ComfyUI format; export the diffusers file\n")
    assert not (tmp_path / "other" / "relation_lora_comfyui.safetensors").exists()
    assert cli.main(["export", str(tmp_path / "missing"), "--format", "comfyui"]) == 2
    assert capsys.readouterr().err == (f"dreamrelation: error: no relation LoRA at {tmp_path / 'missing'}: pass a "
                                       f"training output folder or its {LORA_FILENAME}\n")


def test_the_apps_downloads_of_a_wan_relation_hold_its_comfyui_file(wan, wan_config, tmp_path):
    from dreamrelation.studio import Studio

    studio = Studio(tmp_path / "home", wan_config, start_scheduler=False)
    owner = studio.owner_key("session:alice")
    job = studio.scheduler.submit(owner, "chasing", RunConfig(model=wan_config, data=DataConfig(data_dir=tmp_path)))
    lora = exported_run(wan, wan_config, MethodConfig(rank=4), job.output_dir)
    studio.workspace.store.update(job.id, state="done")
    files = studio.relation_files(owner, job.id)
    assert files == [lora, RunDir(job.output_dir).config, job.output_dir / "relation_lora_comfyui.safetensors"]
    assert all(key.startswith("diffusion_model.") for key in load_file(files[2]))
    os.utime(files[2], (0, 0))  # older than the LoRA, as after a resumed job exported it anew: written again
    assert studio.relation_files(owner, job.id) == files and files[2].stat().st_mtime >= lora.stat().st_mtime
