"""HSNet's hypercorrelation pyramid encoder: squeeze each stage's 4D correlation
with center-pivot convolutions, then mix the stages top-down. 4D tensors are
(B, ha, wa, hb, wb, C), as in `conv4d`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv4d import CenterPivotConv4d, ChannelsLastGroupNorm
from .correlation import records_grad

SQUEEZE_CHANNELS = (16, 64, 128)


def _building_block(in_channels: int, out_channels, kernel_sizes, support_strides, groups: int = 4):
    layers = []
    for idx, (outch, ksz, stride) in enumerate(zip(out_channels, kernel_sizes, support_strides)):
        inch = in_channels if idx == 0 else out_channels[idx - 1]
        layers += [
            CenterPivotConv4d(inch, outch, (ksz,) * 4, (1, 1, stride, stride), (ksz // 2,) * 4),
            ChannelsLastGroupNorm(groups, outch),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def _resize_query_dims(corr: torch.Tensor, size) -> torch.Tensor:
    # HSNet calls this `interpolate_support_dims`, but it resizes the query (ha, wa) grid.
    bsz, ha, wa, hb, wb, ch = corr.shape
    images = corr.permute(0, 3, 4, 1, 2, 5).reshape(bsz * hb * wb, ha, wa, ch).permute(0, 3, 1, 2)
    images = F.interpolate(images, size, mode="bilinear", align_corners=True)
    return images.permute(0, 2, 3, 1).reshape(bsz, hb, wb, *size, ch).permute(0, 3, 4, 1, 2, 5)


def _add(squeezed: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    # In place saves a copy at inference; under autograd the squeezed tensor is the
    # output of an in-place ReLU that its backward reads, so it must stay intact.
    return squeezed + other if records_grad(squeezed, other) else squeezed.add_(other)


class HPNLearner(nn.Module):
    """`in_channels`: layers per stage, deepest first (e.g. (3, 6, 4) for ResNet-50)."""

    def __init__(self, in_channels):
        super().__init__()
        c1, c2, c3 = SQUEEZE_CHANNELS
        self.encoder_layer4 = _building_block(in_channels[0], [c1, c2, c3], [3, 3, 3], [2, 2, 2])
        self.encoder_layer3 = _building_block(in_channels[1], [c1, c2, c3], [5, 3, 3], [4, 2, 2])
        self.encoder_layer2 = _building_block(in_channels[2], [c1, c2, c3], [5, 5, 3], [4, 4, 2])
        self.encoder_layer4to3 = _building_block(c3, [c3, c3, c3], [3, 3, 3], [1, 1, 1])
        self.encoder_layer3to2 = _building_block(c3, [c3, c3, c3], [3, 3, 3], [1, 1, 1])

    def forward(self, corr_pyramid) -> torch.Tensor:
        """(corr_l4, corr_l3, corr_l2), each (B, ha, wa, hb, wb, L) -> (B, 128, Hq, Wq) at the
        layer-2 query size."""
        sqz4 = self.encoder_layer4(corr_pyramid[0])
        sqz3 = self.encoder_layer3(corr_pyramid[1])
        sqz2 = self.encoder_layer2(corr_pyramid[2])
        mix43 = self.encoder_layer4to3(_add(sqz3, _resize_query_dims(sqz4, sqz3.shape[1:3])))
        mix432 = self.encoder_layer3to2(_add(sqz2, _resize_query_dims(mix43, sqz2.shape[1:3])))
        return mix432.mean(dim=(3, 4)).permute(0, 3, 1, 2).contiguous()
