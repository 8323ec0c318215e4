"""Center-pivot 4D convolution (HSNet): two 2D convolutions, one over the query
positions and one over the support positions, summed.

4D tensors are kept query-major, (B, ha, wa, C, hb, wb): the pass over the support
dimensions then reads its input and writes its output in place, and only the
strided (pruned) copy that the query pass needs is ever transposed."""
from __future__ import annotations

import torch
from torch import nn


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
        """(B, ha, wa, C, hb, wb) -> (B, ha, wa, C', hb', wb')."""
        bsz, ha, wa, inch, hb, wb = x.shape
        sh, sw = self.support_stride
        # conv1 sees only the support positions that conv2's stride keeps, so that
        # both halves land on the same (strided) support grid.
        pruned = x[..., ::sh, ::sw]
        phb, pwb = pruned.shape[-2:]
        out1 = self.conv1(pruned.permute(0, 4, 5, 3, 1, 2).reshape(-1, inch, ha, wa))
        out2 = self.conv2(x.reshape(-1, inch, hb, wb))
        outch = out2.shape[1]
        out = out2.view(bsz, ha, wa, outch, *out2.shape[-2:])
        out += out1.view(bsz, phb, pwb, outch, *out1.shape[-2:]).permute(0, 4, 5, 3, 1, 2)
        return out


class QueryMajorGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters) over a query-major (B, ha, wa, C, hb, wb) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, ha, wa, ch, hb, wb = x.shape
        groups = x.view(bsz, ha * wa, self.num_groups, ch // self.num_groups, hb * wb)
        var, mean = torch.var_mean(groups, dim=(1, 3, 4), unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, 1, self.num_groups, -1, 1)
        shift = self.bias.view(1, 1, self.num_groups, -1, 1) - mean * scale
        return torch.addcmul(shift, groups, scale).view(x.shape)
