"""The relation LoRA triplet: placement, zero-init equivalence with stock diffusers, per-mode gradients."""

import pytest
import torch

from dreamrelation.config import MethodConfig
from dreamrelation.method.adapters import activate_adapters, add_adapters, adapter_parameters, training_modes

from helpers import transformer_inputs


def lora_targets(transformer, adapter):
    return sorted(transformer.peft_config[adapter].target_modules)


def test_adapters_sit_exactly_on_the_listed_projections(tiny):
    transformer = tiny.pipe.transformer
    add_adapters(transformer, tiny.spec, MethodConfig())
    blocks = len(transformer.transformer_blocks)
    last = blocks - 1
    # The last block is context-pre-only: its text queries reach nothing, so no adapter goes there.
    expect_relation = sorted(
        [f"transformer_blocks.{i}.attn1.{p}" for i in range(blocks) for p in ("to_q", "to_k", "add_k_proj")]
        + [f"transformer_blocks.{i}.attn1.add_q_proj" for i in range(last)]
    )
    expect_values = sorted(f"transformer_blocks.{i}.attn1.{p}" for i in range(blocks) for p in ("to_v", "add_v_proj"))
    # The last Mochi block is context-pre-only: it has no to_add_out.
    expect_ffn = sorted(
        [f"transformer_blocks.{i}.attn1.to_out.0" for i in range(blocks)]
        + [f"transformer_blocks.{i}.attn1.to_add_out" for i in range(last)]
    )
    assert lora_targets(transformer, "relation") == expect_relation
    assert lora_targets(transformer, "subject1") == expect_values
    assert lora_targets(transformer, "subject2") == expect_values
    assert lora_targets(transformer, "ffn") == expect_ffn
    assert not any("time_embed" in t for a in transformer.peft_config for t in lora_targets(transformer, a))
    for name in ("relation", "subject1", "subject2", "ffn"):
        params = adapter_parameters(transformer, name)
        assert params and all(p.dtype == torch.float32 for p in params.values())
        config = transformer.peft_config[name]
        assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 16, 0.0)
        # B starts at zero: the adapter changes nothing at step 0.
        assert all(torch.count_nonzero(p) == 0 for k, p in params.items() if "lora_B" in k)


def test_zero_initialised_adapters_leave_the_output_of_stock_diffusers_unchanged(tiny_family):
    tiny = tiny_family
    stock = type(tiny.pipe.transformer).from_pretrained(tiny.folder, subfolder="transformer")
    transformer = tiny.pipe.transformer
    add_adapters(transformer, tiny.spec, MethodConfig())
    activate_adapters(transformer, ["relation", "subject1", "subject2", "ffn"])
    inputs = transformer_inputs(transformer)
    with torch.no_grad():
        assert torch.equal(transformer(**inputs)[0], stock(**inputs)[0])


@pytest.mark.parametrize("mode_index", [0, 1, 2])
def test_only_the_adapters_of_a_mode_get_gradients(tiny_family, mode_index):
    tiny = tiny_family
    transformer = tiny.pipe.transformer
    method = MethodConfig()
    add_adapters(transformer, tiny.spec, method)
    mode = training_modes(method)[mode_index]
    # Non-zero B everywhere so every adapter would receive gradient if it took part.
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    activate_adapters(transformer, mode.adapters)
    transformer(**transformer_inputs(transformer))[0].square().mean().backward()
    for name in ("relation", "subject1", "subject2", "ffn"):
        grads = [p.grad for p in adapter_parameters(transformer, name).values()]
        if name in mode.adapters:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads), name
    assert all(p.grad is None for n, p in transformer.named_parameters() if "lora_" not in n)


def test_inactive_adapters_change_no_output(tiny):
    transformer = tiny.pipe.transformer
    add_adapters(transformer, tiny.spec, MethodConfig())
    inputs = transformer_inputs(transformer)
    activate_adapters(transformer, ["subject1", "ffn"])
    with torch.no_grad():
        before = transformer(**inputs)[0]
        for p in adapter_parameters(transformer, "subject2").values():
            p.normal_(0, 1.0)
        for p in adapter_parameters(transformer, "relation").values():
            p.normal_(0, 1.0)
        assert torch.equal(transformer(**inputs)[0], before)


def test_adapter_outputs_add_up_with_alpha_over_rank(tiny):
    """y = W x + sum_active (alpha / r) B A x on one projection, by hand."""
    transformer = tiny.pipe.transformer
    add_adapters(transformer, tiny.spec, MethodConfig(rank=4, alpha=8))
    layer = transformer.transformer_blocks[0].attn1.to_v
    with torch.no_grad():
        for name in ("subject1", "subject2"):
            layer.lora_B[name].weight.normal_()
    x = torch.randn(3, layer.in_features)
    activate_adapters(transformer, ["subject1", "subject2"])
    expected = layer.base_layer(x) + sum(
        2.0 * layer.lora_B[n].weight @ layer.lora_A[n].weight @ x.T for n in ("subject1", "subject2")
    ).T
    torch.testing.assert_close(layer(x), expected)


def test_modes_follow_the_method_switches():
    assert [m.name for m in training_modes(MethodConfig())] == ["relation", "subject1", "subject2"]
    assert training_modes(MethodConfig())[0].adapters == ("relation", "subject1", "subject2", "ffn")
    assert training_modes(MethodConfig())[1].loss_mask == "subject1"
    assert training_modes(MethodConfig(mask_loss=False))[0].loss_mask is None
    only = training_modes(MethodConfig(subject_adapters=False))
    assert [(m.name, m.adapters) for m in only] == [("relation", ("relation", "ffn"))]
    assert training_modes(MethodConfig())[2].adapters == ("subject2", "ffn")
    apart = training_modes(MethodConfig(subject_modes_train_ffn=False))
    assert [m.adapters for m in apart] == [("relation", "subject1", "subject2", "ffn"), ("subject1",), ("subject2",)]
    direct = training_modes(MethodConfig(mode="direct-lora"))
    assert [(m.adapters, m.loss_mask) for m in direct] == [(("direct",), None)]
