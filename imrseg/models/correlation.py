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
        # float32 even under autocast: squared fp16 features overflow in the norm.
        flat = torch.stack([t.flatten(2).transpose(1, 2) for t in taps], dim=1).float()
        norm = flat.norm(dim=-1)
        unit = flat / norm.clamp_min(torch.finfo(flat.dtype).tiny).unsqueeze(-1)
        return cls(unit, norm, tuple(taps[0].shape[-2:]))

    def index(self, idx) -> "StageFeatures":
        return StageFeatures(self.unit[idx], self.norm[idx], self.size)


def stage_cosine(query: StageFeatures, support: StageFeatures) -> torch.Tensor:
    """relu(cosine) of every query position against every support position, laid out
    (B, Nq, Ns, L): channels innermost, as the 4D convolutions read it."""
    cos = torch.matmul(query.unit, support.unit.transpose(-1, -2)).clamp_(min=0)
    return cos.permute(0, 2, 3, 1).contiguous()


def resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """(B, h, w) mask to (B, size) as HSNet's feature masking does."""
    return F.interpolate(mask.unsqueeze(1), size, mode="bilinear", align_corners=True).squeeze(1)


def mask_factor(stage: StageFeatures, mask: torch.Tensor) -> torch.Tensor:
    """g(m |f|) per position for an accumulated mask (B, h, w) at the stage's size: (B, L, N)."""
    scaled = stage.norm * mask.flatten(1).unsqueeze(1)
    return scaled / (scaled + EPS)


def masked_correlation(cosine: torch.Tensor, query_factor: torch.Tensor, support_factor: torch.Tensor,
                       query_size, support_size, transpose: bool = False,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """One stage of the correlation pyramid, (B, hq, wq, hs, ws, L); with `transpose`
    the support plays the query: (B, hs, ws, hq, wq, L). `out`, a tensor of as many
    elements, is reused for the result (a fresh 100 MB buffer per step costs more
    in page faults than the multiplication itself). When autograd records the
    factors (training), `out` must be None: the result is then a fresh tensor, as
    it is under torch.compile."""
    bsz, nq, ns, layers = cosine.shape
    q = query_factor.transpose(1, 2).unsqueeze(2)  # (B, Nq, 1, L)
    s = support_factor.transpose(1, 2).unsqueeze(1)  # (B, 1, Ns, L)
    if transpose:
        cosine, q, s = cosine.transpose(1, 2), s.transpose(1, 2), q.transpose(1, 2)
        nq, ns, query_size, support_size = ns, nq, support_size, query_size
    grad = records_grad(cosine, q, s)
    if grad and out is not None:
        raise ValueError("masked_correlation: `out` cannot be used while autograd records the factors")
    if grad or torch.compiler.is_compiling():
        # The same two float32 products as below, so training (and what torch.compile
        # traces: it cannot view a reused buffer) sees eager inference's numbers;
        # contiguous, as the 4D convolutions read it (a transposed cosine gives a
        # transposed product).
        result = (cosine * q * s).contiguous()
    else:
        if out is None:
            out = torch.empty(cosine.numel(), dtype=cosine.dtype, device=cosine.device)
        result = out.view(bsz, nq, ns, layers)
        torch.mul(cosine, q, out=result)
        result.mul_(s)
    return result.view(bsz, *query_size, *support_size, layers)


def records_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on `tensors` (so in-place or `out=`
    shortcuts on them, or on what a later layer saves of them, are not allowed)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
