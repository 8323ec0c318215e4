"""Backbone feature taps, as HSNet takes them.

ResNet-50: the output of each bottleneck of layers 2-4 before its final ReLU
(HSNet's `feat_ids = 4..16`, 13 maps). VGG-16: `features` 17, 19, 21, 24, 26, 28
(conv outputs before their ReLU) and 30 (the last max-pool), 7 maps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50, vgg16


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    stage_sizes: tuple  # taps per correlation stage, deepest stage first
    mid_channels: int  # channels of the summed stage-3 taps fed to the IMR module


SPECS = {
    "resnet50": BackboneSpec("resnet50", (3, 6, 4), 1024),
    "vgg16": BackboneSpec("vgg16", (1, 3, 3), 512),
}
VGG_TAPS = (17, 19, 21, 24, 26, 28, 30)


def build_backbone(name: str) -> nn.Module:
    """The backbone, frozen: the authors never train it (its features are computed
    without gradients), so its parameters take no gradient and no optimiser step."""
    if name == "resnet50":
        net = resnet50(weights=None)
    elif name == "vgg16":
        net = vgg16(weights=None)
    else:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(SPECS)}")
    return net.requires_grad_(False)


def _resnet_taps(net: nn.Module, img: torch.Tensor) -> list[torch.Tensor]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(img))))
    taps = []
    for stage, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
        for block in layer:
            out = F.relu(block.bn1(block.conv1(x)))
            out = F.relu(block.bn2(block.conv2(out)))
            out = block.bn3(block.conv3(out))
            out = out + (block.downsample(x) if block.downsample is not None else x)
            if stage > 0:
                taps.append(out)
            x = F.relu(out)
    return taps


def _vgg_taps(net: nn.Module, img: torch.Tensor) -> list[torch.Tensor]:
    taps, x = [], img
    for idx, module in enumerate(net.features[: VGG_TAPS[-1] + 1]):
        # torchvision's ReLUs work in place; a non-inplace ReLU keeps the taps intact.
        x = F.relu(x) if isinstance(module, nn.ReLU) else module(x)
        if idx in VGG_TAPS:
            taps.append(x)
    return taps


def extract_taps(name: str, net: nn.Module, img: torch.Tensor) -> list[torch.Tensor]:
    return _resnet_taps(net, img) if name == "resnet50" else _vgg_taps(net, img)


def stage_slices(spec: BackboneSpec, n_taps: int) -> list[slice]:
    """Slices of the tap list for each correlation stage, deepest first."""
    out, end = [], n_taps
    for size in spec.stage_sizes:
        out.append(slice(end - size, end))
        end -= size
    return out
