"""The authors' K-shot prediction (their model's `predict_mask_nshot`), written
out as a reference to test imrseg's one refine-and-vote against: every support
runs the whole forward (both branches, every step) with the query, and the
arg-max masks are summed, divided by the largest vote (at least 1) and
thresholded at 0.5."""
from __future__ import annotations

import torch


def predict_mask_nshot(model, query_img: torch.Tensor, support_imgs: torch.Tensor, query_cam: torch.Tensor,
                       support_cams: torch.Tensor, steps: int) -> torch.Tensor:
    """(B,3,400,400) query, (B,K,3,400,400) supports, (B,50,50) and (B,K,50,50) CAMs
    -> (B,400,400) 0/1 float mask."""
    votes = []
    for k in range(support_imgs.shape[1]):
        logits, _ = model(query_img, support_imgs[:, k], query_cam, support_cams[:, k], steps=steps)
        votes.append(logits.argmax(dim=1))
    total = torch.stack(votes, dim=1).sum(dim=1).float()
    max_vote = total.flatten(1).max(dim=1).values.clamp(min=1).view(-1, 1, 1)
    return (total / max_vote >= 0.5).float()
