"""Text-only pretraining gives the toy T5 per-token outputs that carry each word's role (issue 11's gate)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, T5EncoderModel

from dreamrelation.config import TOY_MODEL_DIR
from dreamrelation.toyworld.text_pretraining import (
    ROLES,
    grammar_captions,
    pretrain_text_encoder,
    role_probe_accuracy,
    split_held_out,
    token_roles,
)


def random_toy_t5():
    """The random T5 and word-level tokenizer scripts/train_toy_base.py starts the toy model from (its seed 0)."""
    from dreamrelation.models.tiny_random import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0, size="toy")
    return pipe.text_encoder.eval(), pipe.tokenizer


@pytest.fixture()
def shipped():
    """The toy model's T5 before its text pretraining, and its tokenizer."""
    return random_toy_t5()


def test_pretraining_lets_a_linear_probe_tell_subject_1_from_subject_2(shipped):
    text_encoder, tokenizer = shipped
    train, held_out = split_held_out(grammar_captions())
    before = role_probe_accuracy(text_encoder, tokenizer, train, held_out)
    metrics = pretrain_text_encoder(text_encoder, tokenizer)
    after = role_probe_accuracy(text_encoder, tokenizer, train, held_out)
    print(f"role probe on held-out captions: {before:.3f} random -> {after:.3f} pretrained; {metrics}")
    assert before < 0.95 <= after


def test_the_shipped_toy_models_t5_carries_each_tokens_role():
    text_encoder = T5EncoderModel.from_pretrained(TOY_MODEL_DIR / "text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(TOY_MODEL_DIR / "tokenizer")
    assert role_probe_accuracy(text_encoder, tokenizer, *split_held_out(grammar_captions())) >= 0.95


def test_the_pretrained_encoder_stays_a_stock_t5_that_round_trips(shipped, tmp_path):
    text_encoder, tokenizer = shipped
    initial = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    rng = torch.get_rng_state()
    pretrain_text_encoder(text_encoder, tokenizer, steps=3, seed=1)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is left alone
    assert type(text_encoder) is T5EncoderModel and not any(p.requires_grad for p in text_encoder.parameters())
    assert any(not torch.equal(initial[k], v) for k, v in text_encoder.state_dict().items())
    text_encoder.save_pretrained(tmp_path)
    loaded = T5EncoderModel.from_pretrained(tmp_path)
    tokens = tokenizer(grammar_captions()[:50], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(text_encoder(**tokens).last_hidden_state, loaded(**tokens).last_hidden_state)
    # Seeded: the same start and seed give the same weights.
    again, _ = random_toy_t5()
    pretrain_text_encoder(again, tokenizer, steps=3, seed=1)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in text_encoder.state_dict().items())


def test_held_out_captions_are_those_of_unseen_pairs_and_relations():
    captions = grammar_captions()
    train, held_out = split_held_out(captions)
    # 30 ordered colour pairs x 9 shape pairs x 8 relations; 6 of the 30 pairs and 2 of the 8 relations held out.
    assert len(set(captions)) == 2160 and (len(train), len(held_out)) == (24 * 9 * 6, 2160 - 24 * 9 * 6)
    assert not set(train) & set(held_out) and sorted(train + held_out) == sorted(captions)
    assert "A red circle approaches a blue square." in train
    assert "A green square swaps places with a blue circle." in train
    for unseen in (
        "A red circle orbits a blue square.",  # a held-out relation
        "A blue triangle jumps over a green circle.",
        "A cyan square approaches a red circle.",  # a held-out colour pair, in either order
        "A red square follows a cyan triangle.",
        "A yellow circle pushes a blue circle.",
        "A magenta triangle bounces off a green square.",
    ):
        assert unseen in held_out


def test_roles_follow_the_tokenizers_tokens(shipped):
    _, tokenizer = shipped
    roles = [ROLES[r] for r in token_roles("A red circle moves away from a blue square.", tokenizer)]
    # a red circle moves away from a blue square . </s>
    assert roles == ["other", "colour1", "shape1", "relation", "relation", "relation", "other", "colour2", "shape2",
                     "other", "other"]
