"""The network a run starts from: a checkpoint to fine-tune (`init`, any
weights spec, its backbone included), or, as the authors start, a fresh
network on an ImageNet backbone: a local file (`backbone_weights`) or
torchvision's IMAGENET1K_V1 download, the weights of the authors'
resnet50-19c8e357.pth and vgg16-397923af.pth."""
from __future__ import annotations

import os
import urllib.error

import torch

from ..durable import file_sha256
from ..errors import CheckpointError, InputError, NetworkError, one_line, param
from ..models import IMRHSNet

IMAGENET = {"resnet50": ("ResNet50_Weights", "resnet50-19c8e357.pth"),
            "vgg16": ("VGG16_Weights", "vgg16-397923af.pth")}


def imagenet_backbone(backbone: str, path: str | os.PathLike | None = None) -> tuple[dict, str]:
    """(torchvision state dict, where it came from) of the ImageNet backbone."""
    from ..models.checkpoint import read_state_dict

    if path is not None:
        return read_state_dict(path), f"{os.fspath(path)} (sha256 {file_sha256(path)})"
    import torchvision.models

    weights = getattr(torchvision.models, IMAGENET[backbone][0]).IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise NetworkError(f"{weights.url}: download of torchvision's ImageNet {backbone} weights failed "
                           f"({one_line(getattr(exc, 'reason', exc))}); pass {param('backbone_weights')} with that "
                           f"file (or the authors' {IMAGENET[backbone][1]}), or a checkpoint to fine-tune as "
                           f"{param('init')}") from None
    return state, f"torchvision {backbone} IMAGENET1K_V1 ({weights.url.rsplit('/', 1)[-1]})"


def initial_model(backbone: str | None, benchmark: str, fold: int | None, steps: int, class_names: list[str],
                  init: str | None = None, backbone_weights: str | os.PathLike | None = None, seed: int = 0,
                  namespace: str | None = None) -> tuple[IMRHSNet, str]:
    """(network for this run, a description of its starting point). The run's
    benchmark, fold, steps and classes go into its config; `backbone` None takes
    the checkpoint's (or ResNet-50)."""
    if init is not None:
        from ..hub import resolve_weights
        from ..models.checkpoint import load_into

        if backbone_weights is not None:
            raise InputError(f"{param('init')} and {param('backbone_weights')} exclude each other: the backbone "
                             f"comes from {param('init')}")
        source, info = resolve_weights(init, namespace)
        if backbone is not None and backbone != info.backbone:
            raise InputError(f"{param('init')} {init}: a {info.backbone} checkpoint, but {param('backbone')} "
                             f"{backbone} was given")
        model = IMRHSNet(info.backbone, benchmark, fold, steps, class_names)
        load_into(model, source.state_dict(), info.spec)
        return model, f"{info.spec} (sha256 {info.sha256})"
    backbone = backbone or "resnet50"
    torch.manual_seed(seed)  # PyTorch's default initialisation of the layers, as the authors'
    model = IMRHSNet(backbone, benchmark, fold, steps, class_names)
    state, origin = imagenet_backbone(backbone, backbone_weights)
    try:
        model.backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{origin}: not torchvision's {backbone} ImageNet weights "
                              f"({one_line(exc)[:300]})") from None
    return model, f"ImageNet {backbone}: {origin}"
