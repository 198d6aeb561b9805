"""The two losses of DreamRelation (docs/method.md §2-3): hybrid-mask reconstruction and the space-time
relational contrastive loss with its positive and negative banks."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dreamrelation.config import MethodConfig


def relation_mask(subject_masks: torch.Tensor) -> torch.Tensor:
    """(B, 2, F, H, W) subject masks -> (B, F, H, W) union of both, clipped to [0, 1]."""
    return subject_masks.sum(dim=1).clamp(0.0, 1.0)


def select_loss_mask(subject_masks: torch.Tensor, which: str | None) -> torch.Tensor | None:
    """The loss mask of a training mode: 'relation' (clipped union), 'subject1', 'subject2' or None.

    Takes (B, 2, F, H, W); returns (B, F, H, W) or None.
    """
    if which is None:
        return None
    if which == "relation":
        return relation_mask(subject_masks)
    return subject_masks[:, {"subject1": 0, "subject2": 1}[which]]


def background_loss(pred: torch.Tensor, target: torch.Tensor, subject_masks: torch.Tensor,
                    subject_weight: float) -> torch.Tensor:
    """Squared error weighted 1 on the latent cells no subject touches (relation mask 0) and `subject_weight` on
    the others, averaged over all cells.

    pred, target: (B, C, F, H, W); subject_masks: (B, 2, F, H, W). Returns a scalar.
    """
    background = (relation_mask(subject_masks) <= 0).float().unsqueeze(1)
    weight = background + subject_weight * (1.0 - background)
    return (weight * (pred.float() - target.float()) ** 2).mean()


def hybrid_mask_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, lambda_mask: float):
    """mean((1 + λ_m m²)(pred − target)²), the mask broadcast over channels; plain MSE when mask is None.

    pred, target: (B, C, F, H, W); mask: (B, F, H, W) on the same latent grid. Returns a scalar.
    """
    squared_error = (pred.float() - target.float()) ** 2
    if mask is None:
        return squared_error.mean()
    weight = 1.0 + lambda_mask * mask.float().unsqueeze(1) ** 2
    return (weight * squared_error).mean()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, subject_masks: torch.Tensor, loss_mask: str | None,
                        method: MethodConfig) -> torch.Tensor:
    """The reconstruction loss of a training mode's `loss_mask` (TrainingMode.loss_mask): 'background' (steps
    without the subject adapters, weighted by `method.dropout_subject_weight`), else the hybrid-mask loss with that
    mask (None: plain MSE). pred, target: (B, C, F, H, W); subject_masks: (B, 2, F, H, W). Returns a scalar."""
    if loss_mask == "background":
        return background_loss(pred, target, subject_masks, method.dropout_subject_weight)
    return hybrid_mask_loss(pred, target, select_loss_mask(subject_masks, loss_mask), method.lambda_mask)


def frame_features(pred: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, F, C): the spatial mean of each latent frame."""
    return pred.float().mean(dim=(3, 4)).transpose(1, 2)


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float):
    """Multi-positive InfoNCE on cosine similarity.

    anchors (A, C); positives (A, P, C), P per anchor; negatives (N, C), shared by every anchor.
    Returns mean over anchors of logsumexp(all / τ) − logsumexp(pos / τ).
    """
    anchors = torch.nn.functional.normalize(anchors, dim=-1)
    positives = torch.nn.functional.normalize(positives, dim=-1)
    negatives = torch.nn.functional.normalize(negatives, dim=-1)
    positive_logits = torch.einsum("ac,apc->ap", anchors, positives) / temperature
    negative_logits = anchors @ negatives.T / temperature
    all_logits = torch.cat([positive_logits, negative_logits], dim=1)
    return (torch.logsumexp(all_logits, dim=1) - torch.logsumexp(positive_logits, dim=1)).mean()


class RelationalContrastiveLoss:
    """Space-time relational contrastive loss (RCL) with FIFO banks.

    Anchors are the clip's relational dynamics (consecutive differences of per-frame features); positives
    are dynamics at the same frame index from earlier clips of the relation (the positive bank); negatives
    are the clip's own single-frame features, topped up from the negative bank when more are asked for.
    """

    def __init__(
        self, *, num_positives: int, num_negatives: int, positive_bank_size: int, negative_bank_size: int,
        temperature: float,
    ):
        self.num_positives = num_positives
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.positive_bank: deque[torch.Tensor] = deque(maxlen=positive_bank_size)  # each (F-1, C)
        self.negative_bank: deque[torch.Tensor] = deque(maxlen=negative_bank_size)  # each (C,)

    @classmethod
    def from_config(cls, method: MethodConfig) -> RelationalContrastiveLoss:
        """The loss with the bank sizes, draw counts and temperature of `method` (MethodConfig holds the defaults)."""
        return cls(
            num_positives=method.num_positives,
            num_negatives=method.num_negatives,
            positive_bank_size=method.positive_bank_size,
            negative_bank_size=method.negative_bank_size,
            temperature=method.temperature,
        )

    def __call__(self, pred: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """pred (B, C, F, H, W) with gradients -> scalar loss, or None while the positive bank is empty.

        Random draws (which bank entries, which frames) come from `generator`, so runs are reproducible.
        """
        bank = [entry for entry in self.positive_bank if entry.shape[0] == pred.shape[2] - 1]
        if not bank:
            return None
        losses = []
        for features in frame_features(pred):  # (F, C) per clip
            anchors = features[1:] - features[:-1]
            chosen = torch.randperm(len(bank), generator=generator)[: self.num_positives]
            positives = torch.stack([bank[i] for i in chosen.tolist()], dim=1).to(anchors)  # (F-1, P, C)
            losses.append(info_nce(anchors, positives, self._negatives(features, generator), self.temperature))
        return torch.stack(losses).mean()

    def _negatives(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """n_neg single-frame features (N, C): the clip's own frames first, then the negative bank."""
        own = features[torch.randperm(features.shape[0], generator=generator)[: self.num_negatives]]
        missing = self.num_negatives - own.shape[0]
        if missing <= 0 or not self.negative_bank:
            return own
        chosen = torch.randperm(len(self.negative_bank), generator=generator)[:missing]
        banked = torch.stack([self.negative_bank[i] for i in chosen.tolist()]).to(features)
        return torch.cat([own, banked])

    def update_banks(self, pred: torch.Tensor) -> None:
        """Push this step's detached dynamics (one (F-1, C) entry per clip) and frame features (F per clip)."""
        for features in frame_features(pred.detach()).cpu():
            self.positive_bank.append(features[1:] - features[:-1])
            self.negative_bank.extend(features)

    def state_dict(self) -> dict:
        return {"positive_bank": list(self.positive_bank), "negative_bank": list(self.negative_bank)}

    def load_state_dict(self, state: dict) -> None:
        self.positive_bank.clear()
        self.positive_bank.extend(state["positive_bank"])
        self.negative_bank.clear()
        self.negative_bank.extend(state["negative_bank"])
