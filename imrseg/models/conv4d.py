"""Center-pivot 4D convolution (HSNet): two 2D convolutions, one over the query
positions and one over the support positions, summed.

4D tensors are laid out (B, ha, wa, hb, wb, C): channels innermost. The pass over
the support dimensions then reads its input as a channels-last image batch without
a copy and writes its output in the same layout, and channels-last is where oneDNN
is fast for these few-channel convolutions (several times faster than NCHW). Only
the strided (pruned) input of the query pass is ever transposed."""
from __future__ import annotations

import torch
from torch import nn


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) memory -> an (N, C, H, W) channels-last view."""
    return x.permute(0, 3, 1, 2)


def _as_nhwc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W), preferably channels-last -> (N, H, W, C) (a view when it is)."""
    return x.permute(0, 2, 3, 1)


class CenterPivotConv4d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple, stride: tuple,
                 padding: tuple, bias: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size[:2], stride=stride[:2],
                               padding=padding[:2], bias=bias)
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size[2:], stride=stride[2:],
                               padding=padding[2:], bias=bias)
        self.support_stride = tuple(stride[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ha, wa, hb, wb, C) -> (B, ha, wa, hb', wb', C')."""
        bsz, ha, wa, hb, wb, ch = x.shape
        sh, sw = self.support_stride
        # conv1 sees only the support positions that conv2's stride keeps, so that
        # both halves land on the same (strided) support grid.
        pruned = x[:, :, :, ::sh, ::sw]
        phb, pwb = pruned.shape[3:5]
        by_support = pruned.permute(0, 3, 4, 1, 2, 5).reshape(-1, ha, wa, ch)
        out1 = _as_nhwc(self.conv1(_as_images(by_support)))
        out2 = _as_nhwc(self.conv2(_as_images(x.reshape(-1, hb, wb, ch))))
        out = out2.reshape(bsz, ha, wa, *out2.shape[1:])
        out += out1.reshape(bsz, phb, pwb, ha, wa, -1).permute(0, 3, 4, 1, 2, 5)
        return out


class ChannelsLastGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters) over a (B, ha, wa, hb, wb, C) tensor.

    Per-channel sums are taken over the support positions in the tensor's dtype
    (short contiguous runs) and totalled over the query positions in float64; the
    squares are of values shifted by a per-channel estimate of the mean, so the
    variance suffers no cancellation. The statistics are thus exact to float32
    rounding over millions of values (PyTorch's channels-last kernel is fast but
    off by about 1e-3 here); one fused multiply-add then normalises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, ha, wa, hb, wb, ch = x.shape
        groups, per_group = self.num_groups, ch // self.num_groups
        runs = x.view(bsz, ha * wa, hb * wb, ch)
        n = ha * wa * hb * wb  # values per channel
        partial = torch.float32  # fp16 / bf16 partial sums (under autocast) would lose too much
        shift = runs[:, 0].mean(dim=1, dtype=partial)  # (B, C)
        s1 = runs.sum(dim=2, dtype=partial).sum(dim=1, dtype=torch.float64) - n * shift.double()  # sum of x - shift
        s2 = (runs - shift.view(bsz, 1, 1, ch)).square_().sum(dim=2).sum(dim=1, dtype=torch.float64)
        mean = (s1 + n * shift.double()).view(bsz, groups, per_group).sum(dim=2) / (n * per_group)
        offset = mean.repeat_interleave(per_group, dim=1) - shift.double()  # mean - shift, per channel
        # sum over the group of (x - mean)^2 = s2 - 2 (mean - shift) s1 + n (mean - shift)^2
        var = (s2 - 2 * offset * s1 + n * offset.square()).view(bsz, groups, per_group).sum(dim=2) / (n * per_group)
        scale = torch.rsqrt(var.clamp(min=0) + self.eps).repeat_interleave(per_group, dim=1) * self.weight.double()
        bias = self.bias.double() - mean.repeat_interleave(per_group, dim=1) * scale
        return torch.addcmul(bias.to(x.dtype).view(bsz, 1, 1, 1, 1, ch), x,
                             scale.to(x.dtype).view(bsz, 1, 1, 1, 1, ch))
