"""A batched attention processor for Mochi.

diffusers' `MochiAttnProcessor2_0` loops over the batch in Python (each sample keeps only its valid text
tokens). This one runs the whole batch in one `scaled_dot_product_attention` call with a key mask, and zeroes
the outputs of padded text tokens as the stock one pads them, so both give the same result (a test checks it
to 1e-6). `use_batched_attention(transformer)` installs it; it pays off at batch > 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mochi's RoPE on interleaved (even, odd) channel pairs, computed in fp32; x (B, S, heads, dim)."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).to(x.dtype)


class MochiBatchedAttnProcessor:
    """Joint video-text attention for a whole batch at once (drop-in for MochiAttnProcessor2_0)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None):
        """hidden_states (B, N, D) video tokens, encoder_hidden_states (B, L, D_text), attention_mask (B, L)
        bool valid text tokens. Returns (video (B, N, D), text (B, L, D_text)), padded text outputs zero."""
        def heads(x):
            return x.unflatten(2, (attn.heads, -1))

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        query, key = attn.norm_q(query), attn.norm_k(key)
        text_query = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
        text_key = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
        text_value = heads(attn.add_v_proj(encoder_hidden_states))
        if image_rotary_emb is not None:
            query, key = _rotate(query, *image_rotary_emb), _rotate(key, *image_rotary_emb)

        video_tokens = query.shape[1]
        valid = torch.cat(
            [attention_mask.new_ones(attention_mask.shape[0], video_tokens), attention_mask.bool()], dim=1
        )  # (B, N + L)
        joint = [torch.cat(pair, dim=1).transpose(1, 2) for pair in ((query, text_query), (key, text_key), (value, text_value))]
        out = F.scaled_dot_product_attention(*joint, attn_mask=valid[:, None, None, :])
        out = out.transpose(1, 2).flatten(2, 3) * valid[..., None].to(out.dtype)

        video, text = out.split_with_sizes((video_tokens, out.shape[1] - video_tokens), dim=1)
        video = attn.to_out[1](attn.to_out[0](video))
        if hasattr(attn, "to_add_out"):
            text = attn.to_add_out(text)
        return video, text


def use_batched_attention(transformer: torch.nn.Module) -> int:
    """Install MochiBatchedAttnProcessor on every Mochi attention module (diffusers' MochiTransformer3DModel has
    no `set_attn_processor`); returns how many were replaced."""
    from diffusers.models.attention_processor import MochiAttention

    modules = [m for m in transformer.modules() if isinstance(m, MochiAttention)]
    for module in modules:
        module.processor = MochiBatchedAttnProcessor()
    return len(modules)
