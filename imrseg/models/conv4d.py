"""Center-pivot 4D convolution (HSNet): two 2D convolutions, one over the query
positions and one over the support positions, summed."""
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
        bsz, inch, ha, wa, hb, wb = x.shape
        sh, sw = self.support_stride
        # conv1 sees only the support positions that conv2's stride keeps, so that
        # both halves land on the same (strided) support grid.
        pruned = x[..., ::sh, ::sw] if (sh, sw) != (1, 1) else x
        phb, pwb = pruned.shape[-2:]
        out1 = self.conv1(pruned.permute(0, 4, 5, 1, 2, 3).reshape(-1, inch, ha, wa))
        outch, oha, owa = out1.shape[-3:]
        out1 = out1.view(bsz, phb, pwb, outch, oha, owa).permute(0, 3, 4, 5, 1, 2)

        out2 = self.conv2(x.permute(0, 2, 3, 1, 4, 5).reshape(-1, inch, hb, wb))
        ohb, owb = out2.shape[-2:]
        out2 = out2.view(bsz, ha, wa, outch, ohb, owb).permute(0, 3, 1, 2, 4, 5)
        return (out1 + out2).contiguous()
