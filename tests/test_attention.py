"""Our batched Mochi attention processor equals diffusers' per-sample one."""

import torch
from diffusers import MochiTransformer3DModel
from diffusers.models.attention_processor import MochiAttnProcessor2_0

from dreamrelation.models.mochi import use_batched_attention


def test_batched_processor_matches_the_stock_one_on_a_batch_with_different_text_lengths(tiny):
    stock = MochiTransformer3DModel.from_pretrained(tiny.folder, subfolder="transformer")
    ours = MochiTransformer3DModel.from_pretrained(tiny.folder, subfolder="transformer")
    assert use_batched_attention(ours) == ours.config.num_layers
    assert isinstance(stock.transformer_blocks[0].attn1.processor, MochiAttnProcessor2_0)
    g = torch.Generator().manual_seed(0)
    cfg = stock.config
    inputs = dict(
        hidden_states=torch.randn(3, cfg.in_channels, 2, 4, 4, generator=g),
        encoder_hidden_states=torch.randn(3, 6, cfg.text_embed_dim, generator=g),
        timestep=torch.tensor([100.0, 500.0, 900.0]),
        encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]).bool(),
        return_dict=False,
    )
    with torch.no_grad():
        expected, got = stock(**inputs)[0], ours(**inputs)[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
