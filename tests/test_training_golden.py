"""One training step (the loss of the paper's Eq. 7 and its gradients) against the
authors' code (tests/fixtures/golden/train_resnet50_stage2.npz, see its README),
and the guarantee that making the forward differentiable left inference as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# The README's tolerances (what the authors' own code meets across thread counts).
LOSS_RTOL = 1e-5
NORM_RTOL = 1e-3
SUM_TO_NORM = 5e-2
ATOL = 1e-4


def _input(x: np.ndarray) -> torch.Tensor:
    return F.interpolate(torch.from_numpy(x), (400, 400), mode="bilinear", align_corners=True)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return dict(np.load(golden_dir / "train_resnet50_stage2.npz"))


@pytest.fixture(scope="module")
def trained_step(golden):
    """A fresh recipe-weight model (the session's `recipe_net` stays untouched) in
    training mode, one loss and backward; `refine` is wrapped to keep the logits
    of that same forward."""
    from imrseg.models import IMRHSNet
    from recipe import apply_recipe

    g = golden
    model = apply_recipe(IMRHSNet("resnet50")).train()
    seen = {}
    refine = model.refine

    def keep_logits(*args, **kwargs):
        seen["logits"] = refine(*args, **kwargs)
        return seen["logits"]

    model.refine = keep_logits
    loss = model.loss(_input(g["base_query"]), _input(g["base_support"]), torch.from_numpy(g["cam_query"]),
                      torch.from_numpy(g["cam_support"]), torch.from_numpy(g["mask_query"]).long(),
                      torch.from_numpy(g["mask_support"]).long(), steps=int(g["stage"]))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return model, loss, grads, seen["logits"]


def test_training_mode_keeps_backbone_frozen(trained_step):
    model = trained_step[0]
    assert model.training and not model.backbone.training
    assert not any(m.training for m in model.backbone.modules())
    assert all(m.training for name, m in model.named_modules() if not name.startswith("backbone"))
    assert not any(p.requires_grad for p in model.backbone.parameters())
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    trainable = model.trainable_parameters()
    assert trainable and all(p.requires_grad and id(p) not in backbone_ids for p in trainable)
    assert len(trainable) + len(backbone_ids) == len(list(model.parameters()))


def test_loss_matches_authors(trained_step, golden):
    loss = trained_step[1]
    assert loss.dim() == 0
    assert abs(loss.item() - golden["loss"]) <= LOSS_RTOL * abs(golden["loss"])


def test_exactly_the_authors_parameters_get_gradients(trained_step, golden):
    grads = trained_step[2]
    assert set(grads) == set(golden["grad_names"].tolist())
    assert not any(name.startswith("backbone.") for name in grads)


def test_gradient_norms_and_sums_match_authors(trained_step, golden):
    grads = trained_step[2]
    for name, norm, total in zip(golden["grad_names"].tolist(), golden["grad_norms"], golden["grad_sums"]):
        grad = grads[name].double()
        assert abs(grad.norm().item() - norm) <= NORM_RTOL * norm, name
        # Sums cancel, so they are compared on the norm's scale.
        assert abs(grad.sum().item() - total) <= SUM_TO_NORM * norm, name


def test_whole_gradients_match_authors(trained_step, golden):
    grads = trained_step[2]
    keys = [k for k in golden if k.startswith("grad:")]
    assert keys
    for key in keys:
        diff = np.abs(grads[key.removeprefix("grad:")].numpy() - golden[key]).max()
        assert diff <= ATOL, f"{key}: max abs diff {diff}"


def test_last_step_logits_match_authors(trained_step, golden):
    q_steps, s_steps = trained_step[3]
    assert len(q_steps) == len(s_steps) == int(golden["stage"])
    for name, logits in (("query", q_steps[-1]), ("support", s_steps[-1])):
        full = F.interpolate(logits.detach(), (400, 400), mode="bilinear", align_corners=True)
        diff = np.abs(full[:, :, ::4, ::4].numpy() - golden[f"logits_{name}"]).max()
        assert diff <= ATOL, f"{name}: max abs diff {diff}"


def test_inference_is_the_same_with_autograd_on(recipe_net, golden_dir):
    """The training path (fresh tensors, no in-place shortcuts) computes the very
    numbers of the inference path, and both still match the authors' inference."""
    g = dict(np.load(golden_dir / "imr_hsnet_resnet50.npz"))
    args = (_input(g["base_query"]), _input(g["base_support"][:, 0]), torch.from_numpy(g["cam_query"]),
            torch.from_numpy(g["cam_support"][:, 0]))
    assert not recipe_net.training
    with torch.inference_mode():
        q_fast, s_fast = recipe_net(*args, steps=2)
    with torch.enable_grad():
        q_grad, s_grad = recipe_net(*args, steps=2)
    assert q_grad.requires_grad
    assert torch.equal(q_grad.detach(), q_fast) and torch.equal(s_grad.detach(), s_fast)
    assert np.abs(q_fast[:, :, ::4, ::4].numpy() - g["logits_query_stage2"]).max() <= ATOL
    assert np.abs(s_fast[:, :, ::4, ::4].numpy() - g["logits_support_stage2"]).max() <= ATOL
