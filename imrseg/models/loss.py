"""The training objective of IMR-HSNet (the paper's Eq. 7, as the authors' code
computes it): every refinement step's query and support predictions are each
scored against their ground-truth mask, and the scores are summed (all step
weights lambda_t = 1 and the support weight w_s = 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def step_cross_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every pixel of (B,2,h,w) step logits upsampled to the
    (B,H,W) 0/1 mask's size, as the authors' `compute_objective` (bilinear,
    align_corners=True)."""
    size = tuple(mask.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size, mode="bilinear", align_corners=True)
    return F.cross_entropy(logits, mask.long())


def refinement_loss(query_logits: list, support_logits: list, query_mask: torch.Tensor,
                    support_mask: torch.Tensor) -> torch.Tensor:
    """Sum over the steps of CE(query) + CE(support); the lists are `refine`'s
    per-step logits (every step's support logits included)."""
    if any(s is None for s in support_logits):
        raise ValueError("refinement_loss needs every step's support logits (refine with with_support=True)")
    total = 0
    for q_logit, s_logit in zip(query_logits, support_logits):
        # Summed in the authors' order: running total + query term + support term.
        total = total + step_cross_entropy(q_logit, query_mask) + step_cross_entropy(s_logit, support_mask)
    return total
