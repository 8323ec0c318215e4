"""Test fixture: deterministic weights derived from parameter names alone (the recipe of the
golden reference outputs). They make any model with the official parameter names
reproducible without downloading anything; as segmentations they are noise."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

SEED_PREFIX = "25:"


def recipe_tensor(name: str, shape) -> torch.Tensor:
    shape = tuple(shape)
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    rng = np.random.default_rng(zlib.crc32((SEED_PREFIX + name).encode("utf-8")))
    if name.endswith("running_var"):
        value = 1 + 0.1 * np.abs(rng.standard_normal(shape))
    elif name.endswith("running_mean"):
        value = 0.1 * rng.standard_normal(shape)
    elif len(shape) >= 2:
        value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    elif name.endswith("weight"):
        value = 1 + 0.1 * rng.standard_normal(shape)
    elif name.endswith("bias"):
        value = 0.01 * rng.standard_normal(shape)
    else:
        value = 0.1 * rng.standard_normal(shape)
    return torch.from_numpy(np.asarray(value, dtype=np.float32))


def recipe_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: recipe_tensor(name, t.shape) for name, t in model.state_dict().items()}


def apply_recipe(model: torch.nn.Module) -> torch.nn.Module:
    model.load_state_dict(recipe_state_dict(model), strict=True)
    return model


def write_recipe_weight_files(folder, net: torch.nn.Module | None = None) -> dict[str, str]:
    """An authors'-format best_model.pt and a CLIP state dict file in `folder`, both
    recipe weights, for the commands' --weights / --clip-weights."""
    import open_clip

    from imrseg.models import IMRHSNet

    net = net if net is not None else apply_recipe(IMRHSNet("resnet50"))
    folder = Path(folder)
    net_file, clip_file = folder / "best_model.pt", folder / "clip_rn50.pt"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, net_file)
    torch.save(apply_recipe(open_clip.create_model("RN50-quickgelu", pretrained=None)).state_dict(), clip_file)
    return {"weights": str(net_file), "clip": str(clip_file)}


def saved_bytes_and_gradients(net, inputs, steps: int, recompute: bool) -> tuple[int, torch.Tensor, dict]:
    """(bytes autograd saved for the backward pass, each storage once since views share
    it; loss; gradients) of one training forward and backward of `net.loss`."""
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    net.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = net.loss(*inputs, steps, recompute=recompute)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return sum(saved.values()), loss.detach(), grads
