"""Losses against hand computations (docs/method.md §2-3)."""

import math

import torch

from dreamrelation.config import MethodConfig
from dreamrelation.method.losses import (
    RelationalContrastiveLoss,
    background_loss,
    frame_features,
    hybrid_mask_loss,
    info_nce,
    reconstruction_loss,
    relation_mask,
    select_loss_mask,
)


def test_relation_mask_is_the_clipped_union():
    masks = torch.tensor([[[[[1.0, 0.0, 0.5]]], [[[1.0, 0.0, 0.75]]]]])  # (B=1, 2, F=1, H=1, W=3)
    assert torch.equal(relation_mask(masks), torch.tensor([[[[1.0, 0.0, 1.0]]]]))
    assert torch.equal(select_loss_mask(masks, "subject2"), masks[:, 1])
    assert select_loss_mask(masks, None) is None


def test_hybrid_mask_loss_matches_a_hand_computation():
    # B=1, C=2, F=1, H=1, W=2: errors (pred - target) are [[1, 2], [3, 4]] over channels x pixels.
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 2, 1, 1, 2)
    target = torch.zeros_like(pred)
    mask = torch.tensor([0.0, 0.5]).view(1, 1, 1, 2)
    # weights per pixel: 1 + 50 * m^2 = [1, 13.5]; mean over 4 values of w * e^2.
    expected = (1 * 1 + 13.5 * 4 + 1 * 9 + 13.5 * 16) / 4
    assert math.isclose(hybrid_mask_loss(pred, target, mask, 50.0).item(), expected, rel_tol=1e-6)
    # It equals MSE + 50 * masked MSE (the reference's form).
    mse = (1 + 4 + 9 + 16) / 4
    masked = (0.25 * 4 + 0.25 * 16) / 4
    assert math.isclose(expected, mse + 50 * masked)
    assert math.isclose(hybrid_mask_loss(pred, target, None, 50.0).item(), mse)


def test_background_loss_weighs_the_cells_a_subject_touches_by_the_subject_weight():
    # B=1, C=2, F=1, H=1, W=3: errors [[1, 2, 3], [4, 5, 6]]; subject 1 covers half of cell 1, subject 2 cell 2.
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).view(1, 2, 1, 1, 3)
    masks = torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 1.0]]).view(1, 2, 1, 1, 3)
    # Only cell 0 is background (weight 1); cells 1 and 2 weigh 0.25, however little of them a subject covers.
    expected = (1 + 16 + 0.25 * (4 + 25 + 9 + 36)) / 6
    assert math.isclose(background_loss(pred, torch.zeros_like(pred), masks, 0.25).item(), expected, rel_tol=1e-6)
    assert math.isclose(background_loss(pred, torch.zeros_like(pred), masks, 0.0).item(), 17 / 6, rel_tol=1e-6)
    assert math.isclose(background_loss(pred, torch.zeros_like(pred), masks, 1.0).item(), 91 / 6, rel_tol=1e-6)


def test_reconstruction_loss_takes_the_loss_each_mode_names():
    # The setup above: errors [[1, 2, 3], [4, 5, 6]], subject 1 on half of cell 1, subject 2 on cell 2.
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).view(1, 2, 1, 1, 3)
    masks = torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 1.0]]).view(1, 2, 1, 1, 3)
    method = MethodConfig(lambda_mask=2.0, dropout_subject_weight=0.25)

    def loss(which):
        return reconstruction_loss(pred, torch.zeros_like(pred), masks, which, method).item()

    assert math.isclose(loss("background"), (1 + 16 + 0.25 * (4 + 25 + 9 + 36)) / 6, rel_tol=1e-6)
    # Hybrid weights 1 + 2 m²: relation mask [0, 0.5, 1] -> [1, 1.5, 3]; subject 1's mask [0, 0.5, 0] -> [1, 1.5, 1].
    assert math.isclose(loss("relation"), (1 + 16 + 1.5 * (4 + 25) + 3 * (9 + 36)) / 6, rel_tol=1e-6)
    assert math.isclose(loss("subject1"), (1 + 16 + 1.5 * (4 + 25) + (9 + 36)) / 6, rel_tol=1e-6)
    assert math.isclose(loss(None), 91 / 6, rel_tol=1e-6)


def test_info_nce_matches_a_hand_computation():
    anchors = torch.tensor([[1.0, 0.0]])
    positives = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # cosines 1 and 0
    negatives = torch.tensor([[-3.0, 0.0]])  # cosine -1
    tau = 0.5
    expected = math.log(math.exp(2) + math.exp(0) + math.exp(-2)) - math.log(math.exp(2) + math.exp(0))
    assert math.isclose(info_nce(anchors, positives, negatives, tau).item(), expected, rel_tol=1e-6)


def rcl(num_positives=4, num_negatives=10, positive_bank_size=10, negative_bank_size=64, temperature=0.07):
    """The loss with docs/method.md §3's settings unless told otherwise."""
    return RelationalContrastiveLoss(
        num_positives=num_positives, num_negatives=num_negatives, positive_bank_size=positive_bank_size,
        negative_bank_size=negative_bank_size, temperature=temperature,
    )


def test_from_config_takes_every_setting_of_the_method():
    method = MethodConfig(num_positives=2, num_negatives=7, positive_bank_size=3, negative_bank_size=5, temperature=0.5)
    loss = RelationalContrastiveLoss.from_config(method)
    assert (loss.num_positives, loss.num_negatives, loss.temperature) == (2, 7, 0.5)
    assert (loss.positive_bank.maxlen, loss.negative_bank.maxlen) == (3, 5)
    default = RelationalContrastiveLoss.from_config(MethodConfig())
    assert (default.num_positives, default.num_negatives, default.temperature) == (4, 10, 0.07)  # the paper's
    assert (default.positive_bank.maxlen, default.negative_bank.maxlen) == (10, 64)


def clip(values):
    """Per-frame features (F, C) -> a (1, C, F, 1, 1) prediction whose spatial means are those features."""
    return torch.tensor(values).T[None, :, :, None, None]


def test_contrastive_loss_uses_dynamics_as_anchors_and_frames_as_negatives():
    loss = rcl(num_positives=1, num_negatives=3, temperature=1.0)
    generator = torch.Generator().manual_seed(0)
    assert loss(clip([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), generator) is None  # no term with an empty bank
    loss.update_banks(clip([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]))  # banked dynamics: (1,0), (0,1)
    pred = clip([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # dynamics (0,1), (-1,0)
    got = loss(pred, generator).item()
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    anchors = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    positives = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # the bank entry at the same frame index
    expected = info_nce(anchors, positives, features, 1.0).item()  # 3 negatives = the 3 own frames, any order
    assert math.isclose(got, expected, rel_tol=1e-6)
    # And info_nce itself by hand for anchor 0: cos to positive (1,0) = 0; to frames: 0, 1/sqrt2, 1.
    a0 = math.log(math.exp(0) + math.exp(0) + math.exp(1 / math.sqrt(2)) + math.exp(1)) - 0.0
    a1 = math.log(math.exp(0) + math.exp(-1) + math.exp(-1 / math.sqrt(2)) + math.exp(0)) - 0.0
    assert math.isclose(expected, (a0 + a1) / 2, rel_tol=1e-6)


def rows(tensor):
    return sorted(tuple(row) for row in tensor.tolist())


def test_negative_bank_tops_up_when_more_negatives_are_asked_for_than_frames():
    banked = [[0.0, 0.0], [1.0, 0.0], [2.0, 2.0]]
    own = torch.tensor([[1.0, 1.0], [0.0, 1.0], [3.0, 0.0]])
    # 6 negatives from 3 own frames: all 3 own frames first (in any order), then all 3 banked frames.
    loss = rcl(num_negatives=6)
    loss.update_banks(clip(banked))
    negatives = loss._negatives(own, torch.Generator().manual_seed(0))
    assert rows(negatives[:3]) == rows(own) and rows(negatives[3:]) == rows(torch.tensor(banked))
    # 5: the own frames, then 2 different banked ones.
    loss = rcl(num_negatives=5)
    loss.update_banks(clip(banked))
    negatives = loss._negatives(own, torch.Generator().manual_seed(0))
    topped_up = rows(negatives[3:])
    assert rows(negatives[:3]) == rows(own) and len(set(topped_up)) == 2 and set(topped_up) <= set(map(tuple, banked))
    # 2, fewer than the frames: 2 different own frames, nothing from the bank.
    loss = rcl(num_negatives=2)
    loss.update_banks(clip(banked))
    picked = rows(loss._negatives(own, torch.Generator().manual_seed(0)))
    assert len(set(picked)) == 2 and set(picked) <= set(map(tuple, own.tolist()))


def test_banks_are_fifo_with_their_sizes_and_detached():
    loss = rcl(positive_bank_size=2, negative_bank_size=4)
    for step in range(3):
        pred = torch.full((1, 2, 3, 1, 1), float(step), requires_grad=True)
        loss.update_banks(pred * torch.arange(1.0, 4.0).view(1, 1, 3, 1, 1))
    assert len(loss.positive_bank) == 2 and len(loss.negative_bank) == 4
    assert torch.equal(loss.positive_bank[0], torch.full((2, 2), 1.0))  # step 1: diffs of 1,2,3 -> 1
    assert torch.equal(loss.positive_bank[-1], torch.full((2, 2), 2.0))
    assert torch.equal(loss.negative_bank[-1], torch.full((2,), 6.0))
    assert not any(t.requires_grad for t in list(loss.positive_bank) + list(loss.negative_bank))
    restored = rcl(positive_bank_size=2, negative_bank_size=4)
    restored.load_state_dict(loss.state_dict())
    assert [t.tolist() for t in restored.positive_bank] == [t.tolist() for t in loss.positive_bank]


def test_contrastive_loss_has_gradients_through_the_prediction():
    loss = rcl(num_positives=2, num_negatives=3)
    loss.update_banks(torch.randn(1, 4, 3, 2, 2))
    pred = torch.randn(1, 4, 3, 2, 2, requires_grad=True)
    loss(pred, torch.Generator().manual_seed(0)).backward()
    assert pred.grad.abs().sum() > 0
    assert frame_features(pred).shape == (1, 3, 4)
