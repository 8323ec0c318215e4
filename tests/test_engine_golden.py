"""The network and the CLIP-CAM against the authors' outputs (tests/fixtures/golden)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from authors_reference import predict_mask_nshot
from imrseg.clip.cam import ClipCAM
from imrseg.data.classes import PASCAL_CLASSES

TOL = 1e-4


@pytest.fixture(scope="module")
def golden_net(golden_dir):
    return dict(np.load(golden_dir / "imr_hsnet_resnet50.npz"))


def _input(x: np.ndarray) -> torch.Tensor:
    return F.interpolate(torch.from_numpy(x), (400, 400), mode="bilinear", align_corners=True)


def test_refinement_steps_match_authors(recipe_net, golden_net):
    g = golden_net
    query, support = _input(g["base_query"]), _input(g["base_support"][:, 0])
    q_cam, s_cam = torch.from_numpy(g["cam_query"]), torch.from_numpy(g["cam_support"][:, 0])
    with torch.inference_mode():
        # Step t of a 3-step run is the final output of a t-step run.
        q_steps, s_steps = recipe_net.refine(recipe_net.encode(query), recipe_net.encode(support),
                                             q_cam, s_cam, steps=3)
        for t in range(3):
            for name, logits in (("query", q_steps[t]), ("support", s_steps[t])):
                full = F.interpolate(logits, (400, 400), mode="bilinear", align_corners=True)
                diff = np.abs(full[:, :, ::4, ::4].numpy() - g[f"logits_{name}_stage{t + 1}"]).max()
                assert diff <= TOL, f"{name} step {t + 1}: max abs diff {diff}"


def test_forward_returns_400px_logits_of_last_step(recipe_net, golden_net):
    g = golden_net
    with torch.inference_mode():
        lq, ls = recipe_net(_input(g["base_query"]), _input(g["base_support"][:, 0]),
                            torch.from_numpy(g["cam_query"]), torch.from_numpy(g["cam_support"][:, 0]), steps=1)
    assert lq.shape == ls.shape == (2, 2, 400, 400)
    assert np.abs(lq[:, :, ::4, ::4].numpy() - g["logits_query_stage1"]).max() <= TOL
    assert np.abs(ls[:, :, ::4, ::4].numpy() - g["logits_support_stage1"]).max() <= TOL


def test_five_shot_vote_matches_authors(recipe_net, golden_net):
    """imrseg's one refine-and-vote (`IMRHSNet.segment`) and the authors' procedure
    written out in tests/authors_reference.py both give the golden 5-shot mask."""
    g = golden_net
    supports = torch.stack([_input(g["base_support"][:, k]) for k in range(5)], dim=1)
    query_cam, support_cams = torch.from_numpy(g["cam_query"]), torch.from_numpy(g["cam_support"])
    with torch.inference_mode():
        reference = predict_mask_nshot(recipe_net, _input(g["base_query"]), supports, query_cam, support_cams, steps=2)
        shots = [(recipe_net.encode(supports[:, k]), support_cams[:, k]) for k in range(5)]
        voted = recipe_net.segment(recipe_net.encode(_input(g["base_query"])), query_cam, shots, steps=2)
    expected = np.unpackbits(g["pred_5shot_stage2"]).reshape(2, 400, 400)
    assert reference.shape == (2, 400, 400)
    assert (reference.numpy().astype(np.uint8) != expected).sum() == 0
    pred = torch.stack([r.mask for r in voted])
    assert pred.shape == (2, 400, 400)
    assert (pred.numpy().astype(np.uint8) != expected).sum() == 0


@pytest.fixture(scope="module")
def golden_cam(golden_dir):
    return dict(np.load(golden_dir / "clip_cam_rn50.npz")), Image.open(golden_dir / "cam_input.png")


def test_clip_preprocessing_matches(recipe_clip, golden_cam):
    g, image = golden_cam
    x = ClipCAM(recipe_clip).preprocess(image)
    assert np.abs(x.numpy() - g["input_tensor_224"][0]).max() <= TOL


def test_clip_probabilities_match(recipe_clip, golden_cam):
    g, image = golden_cam
    cam = ClipCAM(recipe_clip)
    with torch.no_grad():
        probs = cam.probabilities(cam.batch([image]), cam.text_features(PASCAL_CLASSES))
    assert np.abs(probs.numpy() - g["probs"]).max() <= TOL


def test_grad_cams_match_in_one_batch(recipe_clip, golden_cam):
    g, image = golden_cam
    cam = ClipCAM(recipe_clip)
    maps224 = cam.maps([image, image], PASCAL_CLASSES, [11, 14])
    maps50 = cam([image, image], PASCAL_CLASSES, [11, 14], size=50)
    for i, target in enumerate((11, 14)):
        assert np.abs(maps224[i] - g[f"cam224_target{target}"]).max() <= TOL
        assert np.abs(maps50[i].numpy() - g[f"cam50_target{target}"]).max() <= TOL
