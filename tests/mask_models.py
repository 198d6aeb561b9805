"""Tiny random-weight mask models (GroundingDINO, OWLv2, SAM2) saved like Hub models, shared by the mask tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    CLIPTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2Processor,
    Sam2VideoConfig,
    Sam2VideoModel,
)
from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil
from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

WORDS = ["a", "dog", "cat", "person", "horse", "is", "chasing", "riding", "."]
SAM2_SIZE = 128  # the tiny SAM2's square input


def save_tiny_grounding_dino(path: Path, words: list[str] = WORDS) -> Path:
    """A tiny GroundingDINO (d_model is a multiple of 32 for its GroupNorm; two decoder layers) with a word-level
    BERT tokenizer over `words` and the PIL image processor, saved into `path`."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate([*special, *words])})
    config = GroundingDinoConfig(
        backbone_config=dict(
            model_type="swin", embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
            out_indices=[2, 3, 4],
        ),
        text_config=dict(
            model_type="bert", vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=64,
        ),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=8, max_text_len=32,
        encoder_n_points=1, decoder_n_points=1,
    )  # fmt: skip
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def save_tiny_owlv2(path: Path) -> Path:
    """A tiny OWLv2 with a character-level CLIP tokenizer (OWLv2 masks queries whose first token id is 0, so the
    start token must not be id 0), saved into `path`."""
    symbols = ["!", "<|startoftext|>", "<|endoftext|>", *(w + "</w>" for w in WORDS), *"abcdefghijklmnopqrstuvwxyz"]
    tokenizer = CLIPTokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=[])
    config = Owlv2Config(
        text_config=dict(
            vocab_size=len(symbols), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
            max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        ),
        vision_config=dict(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    Owlv2ForObjectDetection(config).save_pretrained(path)
    image_processor = Owlv2ImageProcessorPil(size={"height": 32, "width": 32})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def tiny_sam2_config(size: int = SAM2_SIZE) -> Sam2VideoConfig:
    """A few-channel SAM2 video config. Two port constraints: the memory attention's key width is fixed at 64,
    so memory_encoder_output_channels must be 64, and object pointers are split into memory-width pieces, so the
    hidden size must be a multiple of it larger than 64."""
    return Sam2VideoConfig(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=16,
                blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=[16, 32, 64, 128],
                num_attention_heads_per_stage=[1, 1, 1, 1],
                window_size_per_stage=[4, 4, 4, 2],
                global_attention_blocks=[3],  # not a stage's first block: those shrink their window by 2
                window_positional_embedding_background_size=[2, 2],
                image_size=[size, size],
            ),
            backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
            fpn_hidden_size=128,
        ),
        prompt_encoder_config=dict(hidden_size=128, image_size=size, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=size,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[size // 16] * 2,
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )


def save_tiny_sam2(path: Path) -> Path:
    """A saved tiny SAM2 whose random weights give non-trivial masks: the default init (std 0.02) gives logits
    near 0 and "no object" scores, so weights are redrawn with unit-gain scale and objects are always present."""
    torch.manual_seed(0)
    model = Sam2VideoModel(tiny_sam2_config())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * param.shape[1:].numel() ** -0.5)
            elif name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
    model.save_pretrained(path)
    return path
