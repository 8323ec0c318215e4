"""Recomputation in training (`IMRHSNet.refine(recompute=True)`, `TrainSettings.recompute`,
`imrseg train --recompute/--no-recompute`): each branch's 4D correlations and learner
are computed again in the backward pass instead of being kept, which must give the
very same loss and gradients while keeping a fraction of the activations, leave
inference as it was, and be a way of running, not part of the weights nor of the
run's identity."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from imrseg.models import IMRHSNet
from imrseg.models import imr_hsnet
from imrseg.models.voting import upsample_logits
from imrseg.training.identity import run_identity
from imrseg.training.loop import _Objective
from imrseg.training.settings import TrainSettings
from recipe import apply_recipe, saved_bytes_and_gradients

# Measured on the CPU, fp32, ResNet-50, one 400x400 episode, 2 steps: 1800 MiB of
# saved activations without recomputation, 190 MiB with it (9.5x less).
SAVED_RATIO = 8
SAVED_MIB_WITH_RECOMPUTE = 256


def _episode(seed: int = 0) -> tuple:
    """One smooth random episode at the network's 400x400: images, CAMs, 0/1 masks."""
    g = torch.Generator().manual_seed(seed)

    def smooth(channels, size, cells):
        return F.interpolate(torch.rand(1, channels, cells, cells, generator=g), size, mode="bilinear",
                             align_corners=True)

    images = [(smooth(3, (400, 400), 24) - 0.45) / 0.25 for _ in range(2)]
    cams = [smooth(1, (50, 50), 5)[:, 0] for _ in range(2)]
    masks = [(smooth(1, (400, 400), 6)[:, 0] > 0.6).long() for _ in range(2)]
    return (*images, *cams, *masks)


@pytest.fixture(scope="module")
def both_ways():
    """The same training step (2 refinement steps, both branches) without and with recomputation."""
    net = apply_recipe(IMRHSNet("resnet50")).train()
    inputs = _episode()
    return [(loss, grads, saved) for saved, loss, grads in
            (saved_bytes_and_gradients(net, inputs, 2, recompute) for recompute in (False, True))]


def test_recompute_gives_the_very_same_loss_and_gradients(both_ways):
    (loss_kept, grads_kept, _), (loss_again, grads_again, _) = both_ways
    assert torch.equal(loss_kept, loss_again)
    assert grads_kept and set(grads_kept) == set(grads_again)
    assert any(name.startswith("hpn_learner.") for name in grads_again)
    for name, grad in grads_kept.items():
        assert torch.equal(grad, grads_again[name]), name


def test_recompute_keeps_a_fraction_of_the_activations(both_ways):
    (_, _, kept), (_, _, again) = both_ways
    assert again * SAVED_RATIO <= kept, (kept / 2**20, again / 2**20)
    assert again <= SAVED_MIB_WITH_RECOMPUTE * 2**20, again / 2**20


def test_inference_is_untouched(recipe_net, monkeypatch):
    """Without autograd nothing is recomputed (the checkpointing is never entered), so
    `recompute` cannot change inference."""
    inputs = _episode(1)[:4]
    with torch.no_grad():
        expected = recipe_net(*inputs, steps=2)

    def refused(*args, **kwargs):
        raise AssertionError("checkpointed without autograd")

    monkeypatch.setattr(imr_hsnet, "checkpoint", refused)
    with torch.no_grad():
        query = recipe_net.encode(inputs[0])
        support = recipe_net.encode(inputs[1])
        for recompute in (True, False):
            q_steps, s_steps = recipe_net.refine(query, support, inputs[2], inputs[3], 2, recompute=recompute)
            assert torch.equal(upsample_logits(q_steps[-1]), expected[0])
            assert torch.equal(upsample_logits(s_steps[-1]), expected[1])


def test_recompute_is_not_in_the_weights():
    net = IMRHSNet("resnet50")
    names = set(net.state_dict())
    assert not any("recompute" in name or "checkpoint" in name for name in names)


def test_the_loop_passes_the_setting_on():
    seen = []
    net = SimpleNamespace(loss=lambda *batch, recompute: seen.append((batch, recompute)) or torch.zeros(()))
    for recompute in (False, True):
        _Objective(net, recompute)("a", "b")
    assert seen == [(("a", "b"), False), (("a", "b"), True)]
    assert TrainSettings("pascal", 0).recompute  # on unless asked otherwise


def test_a_run_may_change_it_when_continued(tmp_path):
    """Not part of what defines a run: the same identity either way."""
    split = SimpleNamespace(sha256="1" * 64)
    val = SimpleNamespace(sha256="2" * 64, class_names=["aeroplane", "bicycle"], class_ids=[0, 1])
    data = SimpleNamespace(root=tmp_path)
    on, off = (TrainSettings("pascal", 0, recompute=r).resolved("resnet50") for r in (True, False))
    assert on.recipe() == off.recipe()
    assert run_identity(on, split, val, data) == run_identity(off, split, val, data)


@pytest.mark.parametrize("flag, expected", [([], True), (["--recompute"], True), (["--no-recompute"], False)])
def test_the_command_sets_it(monkeypatch, tmp_path, flag, expected):
    import imrseg.training
    from imrseg.cli import main

    got = []
    monkeypatch.setattr(imrseg.training, "train", lambda settings, reporter: got.append(settings)
                        or SimpleNamespace(best=None))
    monkeypatch.setattr(sys, "argv", ["imrseg", "train", "--benchmark", "folder", "--data-root", str(tmp_path),
                                      "--out", str(tmp_path / "run"), "--quiet", *flag])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, None)
    assert [s.recompute for s in got] == [expected]
