"""Golden parity on a CUDA GPU: the network, the CLIP-CAM and a training step in
IEEE fp32 (TF32 off, `devices.float32_mode`) meet the tolerances the CPU meets, and
bf16/fp16 masks agree with fp32 ones. Skipped without a GPU; the CPU runs the same
checks in test_engine_golden.py and test_training_golden.py."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from imrseg.clip.cam import ClipCAM
from imrseg.data.classes import PASCAL_CLASSES
from imrseg.devices import autocast, float32_mode
from imrseg.predictor import Predictor
from imrseg.transforms import normalise, to_device
from test_engine_golden import TOL
from test_training_golden import ATOL, LOSS_RTOL, NORM_RTOL

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# bf16/fp16 masks against fp32 ones (an H200 gave 99.86% and more).
MASK_AGREEMENT = 0.995


def network_input(x: np.ndarray, device) -> torch.Tensor:
    return F.interpolate(torch.from_numpy(x), (400, 400), mode="bilinear", align_corners=True).to(device)


def test_the_predictor_computes_in_ieee_fp32(recipe_net):
    """On any device: TF32 is off while a fp32 predictor computes, on for tf32, and
    the caller's flags are back afterwards."""
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [flag.allow_tf32 for flag in flags]
    try:
        for precision, inside in (("fp32", False), ("tf32", True)):
            for flag in flags:
                flag.allow_tf32 = not inside
            with Predictor(recipe_net, precision=precision).inference():
                assert [flag.allow_tf32 for flag in flags] == [inside, inside]
            assert [flag.allow_tf32 for flag in flags] == [not inside, not inside]
    finally:
        for flag, value in zip(flags, saved):
            flag.allow_tf32 = value


@pytest.fixture(scope="module")
def cuda_net(recipe_net):
    return copy.deepcopy(recipe_net).cuda()


@pytest.fixture(scope="module")
def golden_net(golden_dir):
    return dict(np.load(golden_dir / "imr_hsnet_resnet50.npz"))


@pytest.mark.cuda
@cuda
def test_network_matches_authors_on_the_gpu(cuda_net, golden_net):
    g = golden_net
    with torch.inference_mode(), float32_mode("fp32"):
        q_steps, s_steps = cuda_net.refine(cuda_net.encode(network_input(g["base_query"], "cuda")),
                                           cuda_net.encode(network_input(g["base_support"][:, 0], "cuda")),
                                           torch.from_numpy(g["cam_query"]).cuda(),
                                           torch.from_numpy(g["cam_support"][:, 0]).cuda(), steps=3)
    for t in range(3):
        for name, logits in (("query", q_steps[t]), ("support", s_steps[t])):
            full = F.interpolate(logits, (400, 400), mode="bilinear", align_corners=True).cpu()
            diff = np.abs(full[:, :, ::4, ::4].numpy() - g[f"logits_{name}_stage{t + 1}"]).max()
            assert diff <= TOL, f"{name} step {t + 1}: max abs diff {diff}"


@pytest.mark.cuda
@cuda
def test_cams_match_authors_on_the_gpu(recipe_clip, golden_dir):
    g = dict(np.load(golden_dir / "clip_cam_rn50.npz"))
    image = Image.open(golden_dir / "cam_input.png")
    cam = ClipCAM(copy.deepcopy(recipe_clip), device="cuda")
    with float32_mode("fp32"):
        maps224 = cam.maps([image, image], PASCAL_CLASSES, [11, 14])
        maps50 = cam([image, image], PASCAL_CLASSES, [11, 14], size=50)
    for i, target in enumerate((11, 14)):
        assert np.abs(maps224[i] - g[f"cam224_target{target}"]).max() <= TOL
        assert np.abs(maps50[i].cpu().numpy() - g[f"cam50_target{target}"]).max() <= TOL


@pytest.mark.cuda
@cuda
def test_a_training_step_matches_authors_on_the_gpu(golden_dir):
    from imrseg.models import IMRHSNet
    from recipe import apply_recipe

    g = dict(np.load(golden_dir / "train_resnet50_stage2.npz"))
    model = apply_recipe(IMRHSNet("resnet50")).cuda().train()
    with float32_mode("fp32"):
        loss = model.loss(network_input(g["base_query"], "cuda"), network_input(g["base_support"], "cuda"),
                          torch.from_numpy(g["cam_query"]).cuda(), torch.from_numpy(g["cam_support"]).cuda(),
                          torch.from_numpy(g["mask_query"]).long().cuda(),
                          torch.from_numpy(g["mask_support"]).long().cuda(), steps=int(g["stage"]))
        loss.backward()
    assert abs(loss.item() - g["loss"]) <= LOSS_RTOL * abs(g["loss"])
    grads = {name: p.grad.cpu() for name, p in model.named_parameters() if p.grad is not None}
    for name, norm in zip(g["grad_names"].tolist(), g["grad_norms"]):
        assert abs(grads[name].double().norm().item() - norm) <= NORM_RTOL * norm, name
    for key in (k for k in g if k.startswith("grad:")):
        assert np.abs(grads[key.removeprefix("grad:")].numpy() - g[key]).max() <= ATOL, key


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_masks_agree_with_fp32(cuda_net, golden_net, precision):
    g = golden_net
    query = cuda_net.encode(network_input(g["base_query"], "cuda"))
    shots = [(cuda_net.encode(network_input(g["base_support"][:, 0], "cuda")),
              torch.from_numpy(g["cam_support"][:, 0]).cuda())]
    cam = torch.from_numpy(g["cam_query"]).cuda()
    masks = {}
    for mode in ("fp32", precision):
        with torch.inference_mode(), float32_mode(mode), autocast(torch.device("cuda"), mode):
            masks[mode] = torch.stack([r.mask for r in cuda_net.segment(query, cam, shots, steps=2)]).cpu()
    assert (masks["fp32"] == masks[precision]).float().mean().item() >= MASK_AGREEMENT


@cuda
def test_pixels_normalised_on_the_gpu_equal_the_cpus():
    """uint8 batches cross through pinned memory and are normalised on the GPU: the
    same values as on the CPU, bit for bit."""
    pixels = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    on_gpu = normalise(to_device(list(pixels), torch.device("cuda")))
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), normalise(pixels))
