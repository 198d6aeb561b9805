"""The exported relation LoRA loads in stock diffusers and reproduces our model's outputs and frames."""

import ast
import re

import pytest
import torch
from diffusers import MochiPipeline
from huggingface_hub import ModelCard
from safetensors import safe_open

from dreamrelation.config import DataConfig, GenerateConfig, MethodConfig, RunConfig
from dreamrelation.export import LORA_FILENAME, export_lora, model_card
from dreamrelation.generate import GenerationError, generate, render
from dreamrelation.method.adapters import activate_adapters, add_adapters
from dreamrelation.models import load_model

from helpers import transformer_inputs


def trained_like(tiny, method):
    """Adapters with random (non-zero) weights, as after training."""
    transformer = tiny.pipe.transformer
    add_adapters(transformer, tiny.spec, method)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    activate_adapters(transformer, ["relation", "ffn"])
    return transformer


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
    path = export_lora(MochiPipeline, transformer, run, tmp_path, ["A dog is chasing a cat."])
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
    export_lora(MochiPipeline, transformer, run, tmp_path, ["A dog is chasing a cat."])
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
