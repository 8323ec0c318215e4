"""`imrseg.training.fit` on a tiny set of coloured shapes with the full-size
network on the CPU: an interrupted and resumed run ends with the weights of an
uninterrupted one, finished epochs are never redone, the run folder holds what
it should, and a few dozen iterations teach the network to beat its CLIP-CAMs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imrseg.errors import InputError, Note
from imrseg.clip.cache import CamSource
from imrseg.clip.vocabulary import folder_vocabulary
from imrseg.data.folder import open_folder
from imrseg.evaluation.loop import EvalSettings, evaluate
from imrseg.data.training_episodes import training_episodes
from imrseg.models import IMRHSNet
from imrseg.training.checkpoints import RunFolder
from imrseg.training.data import EpisodeLoader
from imrseg.training.loop import Reporter, TrainingInterrupted, Validation, fit
from imrseg.training.settings import TrainSettings
from training_fixtures import make_shapes, mask_cam

pytestmark = pytest.mark.slow


class Record(Reporter):
    """Losses and epochs as the loop reports them; asks to stop after `stop_after` steps."""

    def __init__(self, stop_after: int | None = None):
        self.losses, self.epochs, self.stop_after = [], [], stop_after

    def epoch_start(self, epoch, epochs, steps, done):
        self.epochs.append((epoch, done))

    def step(self, loss):
        self.losses.append(loss)

    def stop(self) -> bool:
        return self.stop_after is not None and len(self.losses) >= self.stop_after


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = make_shapes(tmp_path_factory.mktemp("shapes") / "data", per_class=2,
                       classes=["red_disc", "green_square", "yellow_disc"])
    data, split, val = open_folder(root, ["yellow_disc"])
    cams = CamSource(mask_cam(), folder_vocabulary(data.class_names), "mask-cam", tmp_path_factory.mktemp("cache"))
    return data, split, val, cams


def _net(seed: int):
    torch.manual_seed(seed)
    return IMRHSNet("resnet50", "folder", None, 1, ["yellow_disc"])


def _fit(shapes, out, epochs=2, seed=0, reporter=None, **recipe):
    data, split, val, cams = shapes
    settings = TrainSettings.paper("folder", None, "resnet50", steps=1, epochs=epochs,
                                   **{"batch_size": 2, "val_episodes": 1, **recipe})
    reporter = reporter or Record()
    net = _net(seed)
    state = fit(settings, net, split, EpisodeLoader(data, "folder", cams, workers=2), Validation(val, data, 1),
                RunFolder(out), "cpu", reporter=reporter, stop=reporter.stop, origin="test")
    return net, state, reporter


@pytest.fixture(scope="module")
def whole(shapes, tmp_path_factory):
    """An uninterrupted two-epoch run (two steps an epoch), shared by the tests that
    compare with it or need a run folder: its network, state, log and folder."""
    folder = tmp_path_factory.mktemp("whole") / "run"
    net, state, log = _fit(shapes, folder)
    return SimpleNamespace(net=net, state=state, log=log, folder=folder)


def _trained(net) -> dict:
    return {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.")}


def test_interrupted_run_ends_with_the_uninterrupted_weights(shapes, whole, tmp_path, monkeypatch):
    """4 training images, batch 2: two steps an epoch. Stopped after step 3 (mid epoch 2),
    then continued by a fresh process-like start (another initialisation, which the saved
    state replaces)."""
    whole, whole_state, whole_log = whole.net, whole.state, whole.log
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 1 of 2"):
        _fit(shapes, tmp_path / "cut", reporter=Record(stop_after=3))
    resumed, state, log = _fit(shapes, tmp_path / "cut", seed=1)
    assert log.epochs == [(1, 1)] and len(log.losses) == 1  # only the missing step
    assert log.losses == whole_log.losses[3:]
    for name, value in _trained(whole).items():
        assert torch.equal(value, _trained(resumed)[name]), name
    assert [r["train_loss"] for r in state.history] == [r["train_loss"] for r in whole_state.history]
    assert [r["val_miou"] for r in state.history] == [r["val_miou"] for r in whole_state.history]
    assert state.optimizer_steps == whole_state.optimizer_steps == 4

    # A larger --epochs continues (epoch 3 only); the same number again does nothing.
    _, longer, log = _fit(shapes, tmp_path / "cut", epochs=3)
    assert log.epochs == [(2, 0)] and len(longer.history) == 3 and longer.history[:2] == state.history
    _, same, log = _fit(shapes, tmp_path / "cut", epochs=3)
    assert log.epochs == [] and log.losses == [] and same.history == longer.history

    # The run folder: metrics rows, curves, best/ in the Hub layout, loadable as --weights.
    run = RunFolder(tmp_path / "cut")
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows == longer.history
    assert set(rows[0]) >= {"epoch", "train_loss", "val_miou", "val_fb_iou", "seconds"}
    assert Image.open(run.curves).size[0] > 500
    from imrseg.hub import resolve_weights

    best_epoch = max(rows, key=lambda r: r["val_miou"])["epoch"]
    model, info = resolve_weights(str(run.best))
    assert (info.backbone, info.benchmark, info.fold, info.steps) == ("resnet50", "folder", None, 1)
    assert info.class_names == ["yellow_disc"]
    card = (run.best / "README.md").read_text()
    assert f"(epoch {best_epoch})" in card and info.sha256 in card
    assert (run.best / "README.md").read_bytes() == _pushed(run.best, monkeypatch)["README.md"]


def _pushed(folder, monkeypatch) -> dict:
    """The files `imrseg weights push` would commit for `folder` (the Hub client faked)."""
    import huggingface_hub

    from imrseg.hub.publish import push_folder

    files = {}

    class Api:
        def __init__(self, endpoint=None):
            pass

        def create_repo(self, *args, **kwargs):
            pass

        def create_commit(self, repo_id, operations, commit_message):
            assert "trained with imrseg train" in commit_message
            for op in operations:
                data = op.path_or_fileobj
                files[op.path_in_repo] = data if isinstance(data, bytes) else Path(data).read_bytes()
            return SimpleNamespace(commit_url="https://hub/commit", oid="0" * 40)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    push_folder(folder, "me/mine")
    return files


def test_micro_batches_make_the_same_step(shapes):
    """Gradient accumulation: the same step from one forward pass of 2 episodes as from
    two of 1, up to float32 rounding: the losses agree to 1e-6, the gradients to 1e-3 of
    their norm (the 4D convolutions' bias gradients are sums over millions of positions
    that mostly cancel, and one pass of 2 sums them in another order than two of 1)."""
    from imrseg.distributed import Shard
    from imrseg.training.loop import _Objective, _accumulate

    data, split, _, cams = shapes
    net = _net(0).train()
    batch = EpisodeLoader(data, "folder", cams, workers=2).load(training_episodes(split, 0)[:2])
    settings = TrainSettings.paper("folder", None, "resnet50", steps=1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    grads, losses = [], []
    for size in (2, 1):
        net.zero_grad(set_to_none=True)
        losses.append(_accumulate(_Objective(net), batch, size, 2, scaler, settings, Shard()).item())
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for name, grad in grads[0].items():
        assert (grads[1][name] - grad).abs().max() <= 1e-3 * grad.norm(), name


def test_out_of_memory_halves_the_forward_passes(shapes, whole, tmp_path, monkeypatch):
    """A forward pass of 2 that runs out of GPU memory (faked here) is redone as two of 1:
    the same steps as the uninterrupted run's first epoch (the same episodes and
    initialisation), said once."""
    from imrseg.training import loop

    whole_state, whole_log = whole.state, whole.log
    accumulate = loop._accumulate

    def small_memory(objective, batch, size, *args):
        if size > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return accumulate(objective, batch, size, *args)

    monkeypatch.setattr(loop, "_accumulate", small_memory)
    with pytest.warns(Note, match="out of GPU memory: continuing with 1 episodes a forward pass"):
        _, halved, log = _fit(shapes, tmp_path / "halved", epochs=1)
    assert log.losses == pytest.approx(whole_log.losses[:2], rel=1e-5)
    assert halved.optimizer_steps == whole_state.history[0]["optimizer_steps"] == 2


def test_a_run_with_other_settings_is_not_continued(shapes, whole, tmp_path):
    """A larger `epochs` would continue the run (see above); another `lr` is refused."""
    shutil.copytree(whole.folder, tmp_path / "run")
    with pytest.raises(InputError, match=r"other settings \(`lr` 0.0004 there, 0.001 now\)"):
        _fit(shapes, tmp_path / "run", epochs=3, lr=1e-3)


def test_training_beats_the_cams(tmp_path):
    """36 iterations on the shapes (three classes of six images, one episode a step),
    their CAMs firing on the objects' cores: the loss falls, and on the held-out class
    the refined masks beat the CAMs thresholded at 0.5 (the paper's Table 4 baseline)
    after every epoch. The backbone is random (no ImageNet weights here) and lr 2e-3
    (five times the paper's) makes so few iterations enough. The activations are kept
    rather than recomputed (the very same steps, `test_recompute`, in less time)."""
    root = make_shapes(tmp_path / "data", per_class=6)
    data, split, val = open_folder(root, ["yellow_disc"])
    cams = CamSource(mask_cam(), folder_vocabulary(data.class_names), "mask-cam", None)
    settings = TrainSettings.paper("folder", None, "resnet50", steps=1, epochs=2, batch_size=1, lr=2e-3,
                                   val_episodes=6, recompute=False)
    net, log = _net(0), Record()
    state = fit(settings, net, split, EpisodeLoader(data, "folder", cams, workers=2), Validation(val, data, 2),
                RunFolder(tmp_path / "run"), "cpu", reporter=log)
    cam = evaluate(EvalSettings("folder", None, 1, 6, 0, 1, "cam", batch_size=2), val, data, None, cams).miou
    per_epoch = [row["val_miou"] for row in state.history]
    early, late = np.mean(log.losses[:9]), np.mean(log.losses[-9:])
    print(f"loss, first and last 9 iterations: {early:.3f} -> {late:.3f}; validation mIoU per epoch "
          f"{[round(v, 1) for v in per_epoch]}, CAM >= 0.5: {cam:.1f}")
    assert len(log.losses) == 36 and late < 0.7 * early
    assert min(per_epoch) > cam + 5 and max(per_epoch) > cam + 15


def test_a_fresh_run_needs_imagenet_weights(tmp_path, monkeypatch):
    """Without --init the backbone comes from a local file or torchvision's download;
    offline, one line says what to pass instead."""
    import urllib.error

    import torchvision.models._api
    from torchvision.models import resnet50

    from imrseg.errors import CheckpointError, NetworkError
    from imrseg.training.model import initial_model

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(NetworkError, match="resnet50-0676ba61.pth: download of torchvision's ImageNet resnet50 "
                                           "weights failed .*; pass `backbone_weights` with that file") as exc:
        initial_model(None, "pascal", 0, 2, ["aeroplane"])
    assert "\n" not in str(exc.value)

    torch.manual_seed(3)
    file = tmp_path / "resnet50.pth"
    torch.save(resnet50().state_dict(), file)
    net, origin = initial_model(None, "pascal", 0, 2, ["aeroplane"], backbone_weights=file)
    assert torch.equal(net.backbone.conv1.weight, torch.load(file)["conv1.weight"])
    assert origin.startswith("ImageNet resnet50: ") and str(file) in origin
    with pytest.raises(CheckpointError, match="not torchvision's vgg16 ImageNet weights"):
        initial_model("vgg16", "pascal", 0, 2, ["aeroplane"], backbone_weights=file)
