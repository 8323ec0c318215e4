"""Hypercorrelation between query and support feature taps.

HSNet's correlation of masked features is, per layer,

    relu( <q * m_q, s * m_s> / ((|q * m_q| + eps) (|s * m_s| + eps)) )

with per-position masks m >= 0. Since |q * m_q| = m_q |q|, this equals

    relu(cos(q, s)) * g(m_q |q|) * g(m_s |s|),   g(x) = x / (x + eps),

so the cosine of the unmasked features is computed once per (query, support)
pair and each refinement step only rescales it by per-position factors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EPS = 1e-5  # HSNet's epsilon


@dataclass
class StageFeatures:
    """Unit-normalised taps of one stage and their norms, for one image batch."""

    unit: torch.Tensor  # (B, L, N, C): L taps, N = h * w positions
    norm: torch.Tensor  # (B, L, N)
    size: tuple  # (h, w)

    @classmethod
    def from_taps(cls, taps: list[torch.Tensor]) -> "StageFeatures":
        flat = torch.stack([t.flatten(2).transpose(1, 2) for t in taps], dim=1)
        norm = flat.norm(dim=-1)
        unit = flat / norm.clamp_min(torch.finfo(flat.dtype).tiny).unsqueeze(-1)
        return cls(unit, norm, tuple(taps[0].shape[-2:]))

    def index(self, idx) -> "StageFeatures":
        return StageFeatures(self.unit[idx], self.norm[idx], self.size)


def stage_cosine(query: StageFeatures, support: StageFeatures) -> torch.Tensor:
    """relu(cosine) of every query position against every support position,
    laid out (B, Nq, L, Ns): the order the 4D convolution reads it in."""
    cos = torch.matmul(query.unit, support.unit.transpose(-1, -2)).clamp_(min=0)
    return cos.transpose(1, 2).contiguous()


def resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """(B, h, w) mask to (B, size) as HSNet's feature masking does."""
    return F.interpolate(mask.unsqueeze(1), size, mode="bilinear", align_corners=True).squeeze(1)


def mask_factor(stage: StageFeatures, mask: torch.Tensor) -> torch.Tensor:
    """g(m |f|) per position for an accumulated mask (B, h, w) at the stage's size: (B, L, N)."""
    scaled = stage.norm * mask.flatten(1).unsqueeze(1)
    return scaled / (scaled + EPS)


def masked_correlation(cosine: torch.Tensor, query_factor: torch.Tensor, support_factor: torch.Tensor,
                       query_size, support_size, transpose: bool = False) -> torch.Tensor:
    """One stage of the correlation pyramid, query-major (B, hq, wq, L, hs, ws); with
    `transpose` the support plays the query: (B, hs, ws, L, hq, wq)."""
    bsz, nq, layers, ns = cosine.shape
    q = query_factor.transpose(1, 2).unsqueeze(-1)  # (B, Nq, L, 1)
    s = support_factor.unsqueeze(1)  # (B, 1, L, Ns)
    if transpose:
        out = torch.empty(bsz, ns, layers, nq, dtype=cosine.dtype, device=cosine.device)
        torch.mul(cosine.permute(0, 3, 2, 1), s.permute(0, 3, 2, 1), out=out)
        out.mul_(q.permute(0, 3, 2, 1))
        return out.view(bsz, *support_size, layers, *query_size)
    out = torch.mul(cosine, q)
    out.mul_(s)
    return out.view(bsz, *query_size, layers, *support_size)
