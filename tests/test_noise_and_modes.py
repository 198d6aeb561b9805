"""Noise-level sampling and the training-mode draw, against hand computations."""

import collections

import pytest
import torch

from dreamrelation.config import MethodConfig, TrainConfig
from dreamrelation.method.adapters import draw_mode, training_modes
from dreamrelation.train.noise_levels import sample_sigmas, shift_sigmas


def test_uniform_sigmas_are_the_generators_plain_uniform_draw():
    drawn = sample_sigmas(TrainConfig(), 5, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, torch.rand(5, generator=torch.Generator().manual_seed(3)))


def test_shifted_sigmas_apply_the_flow_shift_to_the_uniform_draw():
    train = TrainConfig(sigma_sampling="shifted", sigma_shift=3.0)
    drawn = sample_sigmas(train, 5, torch.Generator().manual_seed(3))
    u = torch.rand(5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(drawn, 3 * u / (1 + 2 * u))
    assert shift_sigmas(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist() == pytest.approx([0.0, 0.75, 1.0])


def test_logit_normal_sigmas_are_the_sigmoid_of_a_normal_draw():
    train = TrainConfig(sigma_sampling="logit-normal", sigma_logit_mean=1.5, sigma_logit_std=0.5)
    drawn = sample_sigmas(train, 4000, torch.Generator().manual_seed(0))
    logits = torch.logit(drawn.double())
    assert ((drawn > 0) & (drawn < 1)).all()
    assert logits.mean().item() == pytest.approx(1.5, abs=0.03)
    assert logits.std().item() == pytest.approx(0.5, abs=0.03)


def _counts(method: MethodConfig, draws: int = 6000) -> collections.Counter:
    modes, generator = training_modes(method), torch.Generator().manual_seed(0)
    return collections.Counter(draw_mode(modes, method, generator).name for _ in range(draws))


def test_the_default_draw_is_uniform_over_the_three_modes():
    counts = _counts(MethodConfig())
    assert set(counts) == {"relation", "subject1", "subject2"}
    assert all(abs(n / 6000 - 1 / 3) < 0.03 for n in counts.values())


def test_relation_share_sets_the_relation_modes_frequency_and_splits_the_rest():
    counts = _counts(MethodConfig(relation_share=0.6))
    assert counts["relation"] / 6000 == pytest.approx(0.6, abs=0.03)
    assert counts["subject1"] / 6000 == pytest.approx(0.2, abs=0.03)
    assert counts["subject2"] / 6000 == pytest.approx(0.2, abs=0.03)
    assert _counts(MethodConfig(relation_share=1.0), 200) == {"relation": 200}


def test_subject_dropout_leaves_the_subject_adapters_out_of_that_share_of_relation_steps():
    method, generator = MethodConfig(relation_share=1.0, subject_dropout=0.25), torch.Generator().manual_seed(0)
    modes = training_modes(method)
    drawn = [draw_mode(modes, method, generator) for _ in range(4000)]
    assert {m.name for m in drawn} == {"relation"}
    without = sum(m.adapters == ("relation", "ffn") for m in drawn)
    assert without / 4000 == pytest.approx(0.25, abs=0.03)
    assert all(m.adapters == modes[0].adapters for m in drawn if m.adapters != ("relation", "ffn"))
    # Off, the draw is the paper's, number for number.
    plain, again = MethodConfig(), torch.Generator().manual_seed(1)
    reference = torch.Generator().manual_seed(1)
    assert [draw_mode(training_modes(plain), plain, again).name for _ in range(50)] == [
        ("relation", "subject1", "subject2")[int(torch.randint(3, (1,), generator=reference))] for _ in range(50)]


def test_dropout_subject_weight_gives_the_steps_without_subject_adapters_the_background_loss():
    method = MethodConfig(relation_share=1.0, subject_dropout=0.5, dropout_subject_weight=0.0)
    modes, generator = training_modes(method), torch.Generator().manual_seed(0)
    drawn = [draw_mode(modes, method, generator) for _ in range(400)]
    without = [m for m in drawn if m.adapters == ("relation", "ffn")]
    assert 150 < len(without) < 250
    assert {m.loss_mask for m in without} == {"background"}
    assert {m.loss_mask for m in drawn if m not in without} == {"relation"}
    # The draw itself does not change: the same steps go without the subject adapters as with the weight unset.
    unset = MethodConfig(relation_share=1.0, subject_dropout=0.5)
    again = torch.Generator().manual_seed(0)
    assert [draw_mode(modes, unset, again).adapters for _ in range(400)] == [m.adapters for m in drawn]
    # Without the mask loss (the run may have no masks) those steps keep the plain loss.
    plain = MethodConfig(relation_share=1.0, subject_dropout=0.5, dropout_subject_weight=0.0, mask_loss=False)
    assert {draw_mode(training_modes(plain), plain, generator).loss_mask for _ in range(50)} == {None}
