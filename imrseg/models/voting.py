"""Refining a query against each of K supports and voting: the one place where
the authors' K-shot rule is applied, for the predictor and the evaluation alike.

Each support refines the query on its own; the K arg-max masks, upsampled
bilinearly to the size the mask is wanted at, are summed, divided by the largest
vote (at least 1) and thresholded at 0.5 (the authors' `predict_mask_nshot`).
Zero-shot is the case where the query is its own single support. Each result
also carries its confidence score (`imrseg.scores`), made from the same
upsampled probabilities."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..scores import evidence, mask_score

INPUT_SIZE = (400, 400)


@dataclass
class Segmentation:
    """One query's voted result at the size asked for."""

    step_masks: list  # (H, W) bool after each step (only the last one unless every_step)
    prob: torch.Tensor  # (H, W) float32: last step's foreground probability, mean over the shots
    score: float  # imrseg.scores: agreement of the shots and the last two steps on the mask

    @property
    def mask(self) -> torch.Tensor:
        return self.step_masks[-1]


def upsample_logits(logits: torch.Tensor, size=None) -> torch.Tensor:
    return F.interpolate(logits, size or INPUT_SIZE, mode="bilinear", align_corners=True)


def vote(masks: torch.Tensor) -> torch.Tensor:
    """(B,K,H,W) 0/1 masks -> (B,H,W) float 0/1: summed, divided by max(max vote, 1),
    thresholded at 0.5, as the authors' `predict_mask_nshot`."""
    if masks.shape[1] == 1:
        return masks[:, 0].float()
    total = masks.sum(dim=1)
    max_vote = total.flatten(1).max(dim=1).values.clamp(min=1).view(-1, 1, 1)
    return (total.float() / max_vote >= 0.5).float()


def refine_and_vote(model, query, query_cams: torch.Tensor, shots: Sequence[tuple] | None, steps: int,
                    sizes: Sequence[tuple[int, int]], every_step: bool = False) -> list[Segmentation]:
    """`query`: ImageFeatures of B queries with their (B,50,50) CAMs; `shots`: K pairs
    (support ImageFeatures, CAMs), each of batch 1 (shared by every query) or B (one
    support per query); None for zero-shot. `sizes`: per query the (H, W) to return
    its masks at. No support branch runs at the last step: no output needs it."""
    if shots is None:
        shots = [(query, query_cams)]  # the query is its own support: `refine` runs one branch
    per_shot = [model.refine(query, feats, query_cams, cams, steps, with_support=False)[0] for feats, cams in shots]
    # Masks of every step or of the last; probabilities of the last two (for the score).
    wanted = range(steps) if every_step else range(max(steps - 2, 0), steps)
    results = []
    for b, size in enumerate(sizes):
        masks, probs = [], []
        for t in wanted:
            logits = torch.cat([upsample_logits(shot[t][b:b + 1].float(), size) for shot in per_shot])
            if every_step or t == steps - 1:
                masks.append(vote(logits.argmax(dim=1)[None])[0].bool())
            if t >= steps - 2:
                probs.append(logits.softmax(dim=1)[:, 1])
        results.append(Segmentation(masks, probs[-1].mean(dim=0), mask_score(evidence(probs), masks[-1])))
    return results
