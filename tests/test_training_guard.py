"""`imrseg train`'s run folder under the guard, tried as a hostile user would: links,
strangers' files and another run in its place are refused before anything trains;
a run asked for with other data or settings is refused naming what differs; a
damaged or crafted checkpoint is one line naming it; a loss that turns NaN stops the
run with RUN/last as last saved and nothing non-finite written; masks of another
size than their image are refused as `imrseg eval` refuses them; and a run killed
at a write, then run again, ends as if it had never been killed."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imrseg.cli import main
from imrseg.clip.cache import CamSource
from imrseg.clip.vocabulary import folder_vocabulary
from imrseg.data.episodes import Episode
from imrseg.data.folder import open_folder
from imrseg.durable import LOCK_FILE, is_temporary, read_results
from imrseg.errors import ImrsegError, InputError
from imrseg.guard import MANIFEST
from imrseg.models import IMRHSNet
from imrseg.training.checkpoints import RunFolder
from imrseg.training.data import EpisodeLoader
from imrseg.training.loop import Reporter, Validation, fit
from imrseg.training.plot import curves_png
from imrseg.training.settings import TrainSettings
from training_fixtures import make_shapes, mask_cam

WRAPPER = Path(__file__).parent / "kill_at_write.py"
RUN_FILES = ("run.json", "last/checkpoint.pt", "last/backbone.safetensors", "best/config.json",
             "best/model.safetensors", "best/README.md", "metrics.jsonl", "curves.png")


def _data(root: Path) -> Path:
    """Two classes of two 64x48 pictures: one to train on (one step of both an epoch),
    one to validate on."""
    return make_shapes(root, per_class=2, size=(64, 48), classes=["red_disc", "yellow_disc"])


def _args(data: Path, weights: dict, out: Path, epochs: int = 2, **options) -> list[str]:
    values = {"benchmark": "folder", "data-root": data, "val-classes": "yellow_disc", "init": weights["weights"],
              "clip-weights": weights["clip"], "steps": 1, "batch-size": 2, "epochs": epochs, "val-episodes": 1,
              "lr": 4e-3, "seed": 1, "device": "cpu", "out": out, **options}
    return ["train", *[str(a) for k, v in values.items() for a in (f"--{k}", v)], "--quiet"]


def _cli(args: list, cache: Path) -> SimpleNamespace:
    """`imrseg` in this process: exit code and stderr."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMRSEG_CACHE", str(cache))
        patch.setattr(sys, "argv", ["imrseg", *map(str, args)])
        patch.setattr(sys, "stderr", err)
        with pytest.raises(SystemExit) as exit_:
            main()
    return SimpleNamespace(code=exit_.value.code, err=err.getvalue())


def _refused(result, message: str) -> None:
    assert result.code == 2, result.err
    assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err


def _tree(folder: Path) -> dict:
    """Each regular file below `folder` (but the lock a run leaves) and its content."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != LOCK_FILE}


# ---------------------------------------------------------- the folder, refused
@pytest.mark.parametrize("name, setup, message", [
    ("run", lambda run, outside: (run / "last").symlink_to(outside, target_is_directory=True),
     "last: is a symbolic link inside --out"),
    ("run", lambda run, outside: (run / "best").symlink_to(outside, target_is_directory=True),
     "best: is a symbolic link inside --out"),
    ("run", lambda run, outside: ((run / "best").mkdir(),
                                  (run / "best" / "README.md").symlink_to(outside / "mine.txt")),
     "README.md: is a symbolic link inside --out"),
    ("run\nodd", lambda run, outside: (run / "last").symlink_to(outside, target_is_directory=True),
     "run\\nodd/last: is a symbolic link"),
    ("run", lambda run, outside: (run / "last").write_text("mine"), "last: is not a folder"),
    ("run", lambda run, outside: (run / "last" / "checkpoint.pt").mkdir(parents=True), "checkpoint.pt: is not a file"),
    ("run", lambda run, outside: (run / "metrics.jsonl").write_text("mine"),
     "metrics.jsonl: exists and was not written by imrseg"),
])
def test_links_and_strangers_files_in_the_run_folder_are_refused(tmp_path, recipe_weight_files, name, setup,
                                                                 message):
    """Issue 18 defect 3: a symbolic link at RUN/last or RUN/best was followed, and the
    checkpoints written outside RUN. Refused now before anything trains, nothing
    written outside, no file of the user's replaced."""
    data, run, outside = _data(tmp_path / "data"), tmp_path / name, tmp_path / "outside"
    outside.mkdir()
    (outside / "mine.txt").write_text("mine")
    run.mkdir()
    setup(run, outside)
    before = _tree(run), _tree(outside)
    _refused(_cli(_args(data, recipe_weight_files, run), tmp_path / "cache"), message)
    assert (_tree(run), _tree(outside)) == before
    assert not (tmp_path / "cache").exists()  # refused before any CAM was computed


def test_a_second_run_into_the_folder_is_refused(tmp_path, recipe_weight_files):
    data, run = _data(tmp_path / "data"), tmp_path / "run"
    with RunFolder(run).opened():
        _refused(_cli(_args(data, recipe_weight_files, run), tmp_path / "cache"),
                 "another imrseg run is writing into this folder")


def test_the_run_folder_is_not_in_the_data(tmp_path, recipe_weight_files):
    """Every folder of the data root is a class: a run folder there would be one."""
    data = _data(tmp_path / "data")
    for out in (data, data / "runs" / "one"):
        _refused(_cli(_args(data, recipe_weight_files, out), tmp_path / "cache"),
                 "inside --data-root, where every folder is a class")
    assert sorted(p.name for p in data.iterdir()) == ["red_disc", "yellow_disc"]


# ------------------------------------------------------- a finished run, again
def _wrapped(when: str, log: Path, args: list, cache: Path) -> subprocess.CompletedProcess:
    """The command through kill_at_write.py, in a new process."""
    out = args[args.index("--out") + 1]
    env = {**os.environ, "IMRSEG_CACHE": str(cache)}
    return subprocess.run([sys.executable, str(WRAPPER), out, when, str(log), "--", *args], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, recipe_weight_files):
    """A finished two-epoch run (one step an epoch) made through the wrapper, killed
    nowhere: its folder, its outcome and its writes into the folder, in order."""
    root = tmp_path_factory.mktemp("uninterrupted")
    data, cache, log = _data(root / "data"), root / "cache", root / "writes.jsonl"
    done = _wrapped("0", log, _args(data, recipe_weight_files, root / "run"), cache)
    assert done.returncode == 0, done.stderr
    writes = [row["path"] for row in read_results(log)]
    return SimpleNamespace(data=data, cache=cache, run=root / "run", outcome=_outcome(root / "run"), writes=writes,
                           weights=recipe_weight_files)


@pytest.mark.slow
def test_another_run_is_refused_naming_what_differs(uninterrupted, tmp_path):
    """Issue 18 defect 8: `train` run again with other validation classes (or another
    data root) resumed silently. Refused now naming the difference, the folder left
    as it was; the same command goes on with it."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted.run, run)
    before = _tree(run)
    moved = tmp_path / "moved"
    shutil.copytree(uninterrupted.data, moved)
    for change, message in [
            ({"val-classes": "red_disc"}, "other settings (--val-classes yellow_disc there, red_disc now; "),
            ({"data-root": moved}, f"other settings (--data-root {uninterrupted.data.resolve()} there, "
                                   f"{moved.resolve()} now); run it with its own settings to continue it, or "
                                   "choose another --out"),
            ({"lr": 1e-3}, "other settings (--lr 0.004 there, 0.001 now)"),
            ({"steps": 2}, "other settings (--steps 1 there, 2 now)")]:
        args = _args(uninterrupted.data, uninterrupted.weights, run, **change)
        _refused(_cli(args, uninterrupted.cache), message)
        assert _tree(run) == before
    result = _cli(_args(uninterrupted.data, uninterrupted.weights, run), uninterrupted.cache)
    assert result.code == 0, result.err
    assert _tree(run) == before  # finished: nothing to redo, nothing rewritten

    # Without its run.json, the checkpoint says what the run is (and run.json is not
    # written over with another run's settings).
    (run / "run.json").unlink()
    _refused(_cli(_args(uninterrupted.data, uninterrupted.weights, run, **{"val-classes": "red_disc"}),
                  uninterrupted.cache), "other settings (--val-classes yellow_disc there, red_disc now; ")
    assert not (run / "run.json").exists()
    result = _cli(_args(uninterrupted.data, uninterrupted.weights, run), uninterrupted.cache)
    assert result.code == 0, result.err
    assert _tree(run) == before


def _damaged(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    else:  # crafted: a well-formed checkpoint holding what it must not
        saved = torch.load(path, weights_only=True)
        if how == "nan":
            saved["state"]["loss_sum"] = float("nan")
        else:
            name = next(iter(saved["model"]))
            saved["model"][name] = torch.zeros(3)
        torch.save(saved, path)


@pytest.mark.slow
@pytest.mark.parametrize("file, how, message", [
    ("last/checkpoint.pt", "truncated", "last/checkpoint.pt: not a readable PyTorch checkpoint"),
    ("last/checkpoint.pt", "garbage", "last/checkpoint.pt: not a readable PyTorch checkpoint"),
    ("last/backbone.safetensors", "truncated", "last/backbone.safetensors: not a readable safetensors file"),
    ("last/backbone.safetensors", "garbage", "last/backbone.safetensors: not a readable safetensors file"),
    ("last/checkpoint.pt", "nan", "checkpoint.pt: field \"state\": field \"loss_sum\" must be a finite number"),
    ("last/checkpoint.pt", "shape", "last/checkpoint.pt: does not match IMR-HSNet"),
    ("run.json", "garbage", "run.json: not readable JSON"),
])
def test_a_damaged_or_crafted_checkpoint_is_one_line(uninterrupted, tmp_path, file, how, message):
    """Issue 18 defect 9: a truncated or hostile RUN/last/checkpoint.pt or
    backbone.safetensors gave `internal error: TypeError: load_error() missing 1
    required positional argument`. (And run.json, read back first.)"""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted.run, run)
    _damaged(run / file, how)
    _refused(_cli(_args(uninterrupted.data, uninterrupted.weights, run, epochs=3), uninterrupted.cache), message)


# -------------------------------------------------------------- divergence
def test_curves_leave_out_what_is_missing():
    """A history with None (or NaN) values is drawn without them."""
    history = [{"epoch": 1, "train_loss": None, "val_miou": None},
               {"epoch": 2, "train_loss": 0.5, "val_miou": float("nan")},
               {"epoch": 3, "train_loss": 0.4, "val_miou": 20.0}]
    for rows in (history, history[:1], []):
        image = Image.open(io.BytesIO(curves_png(rows)))
        assert image.format == "PNG" and image.size[0] > 500


@pytest.mark.slow
def test_a_loss_that_turns_nan_stops_the_run_with_last_kept(tmp_path):
    """Issue 18 defect 10: a diverging run failed at the end of every epoch in
    plot_curves and wrote NaN into metrics.jsonl. Now a NaN loss stops it at once, and
    weights that turn NaN (gradients NaN, the loss still finite) are never saved:
    RUN/last stays as last saved, metrics.jsonl holds finite rows only."""
    root = _data(tmp_path / "data")
    data, split, val = open_folder(root, ["yellow_disc"])
    cams = CamSource(mask_cam(), folder_vocabulary(data.class_names), "mask-cam", tmp_path / "cache")
    settings = TrainSettings.paper("folder", None, "resnet50", steps=1, epochs=2, batch_size=1, val_episodes=1)
    out = tmp_path / "run"

    def fit_with(poison):
        torch.manual_seed(0)
        net = IMRHSNet("resnet50", "folder", None, 1, ["yellow_disc"])
        steps, loss = [], net.loss

        def poisoned(*batch, **options):
            steps.append(len(steps) + 1)
            return poison(net, len(steps), loss(*batch, **options))

        net.loss = poisoned
        return fit(settings, net, split, EpisodeLoader(data, "folder", cams, workers=1), Validation(val, data, 1),
                   RunFolder(out), "cpu", reporter=Reporter())

    # Two steps an epoch: epoch 2's first step makes a NaN loss.
    with pytest.raises(ImrsegError, match=r"the training loss is nan at epoch 2, step 1: the training diverged; "
                                          r".*last keeps the run as last saved") as caught:
        fit_with(lambda net, step, loss: loss * float("nan") if step == 3 else loss)
    assert "\n" not in str(caught.value)
    saved = (out / "last" / "checkpoint.pt").read_bytes()
    state = torch.load(io.BytesIO(saved), weights_only=True)["state"]
    assert (state["epoch"], state["position"], len(state["history"])) == (1, 0, 1)
    rows = read_results(out / "metrics.jsonl")  # refuses NaN
    assert [r["epoch"] for r in rows] == [1]

    # Continued: epoch 2's second (last) step makes NaN gradients of a finite loss.
    def nan_gradients(net, step, loss):
        if step == 2:
            next(iter(net.trainable_parameters())).register_hook(lambda grad: grad * float("nan"))
        return loss

    with pytest.raises(ImrsegError, match="the weights are no longer finite after optimiser step 4"):
        fit_with(nan_gradients)
    assert (out / "last" / "checkpoint.pt").read_bytes() == saved
    assert read_results(out / "metrics.jsonl") == rows
    assert not [p for p in out.rglob("*") if is_temporary(p.name)]


# ---------------------------------------------------------------- masks
def test_masks_of_another_size_are_refused_as_eval_refuses_them(tmp_path):
    """Issue 18 defect 11: `train` resized a transposed (48x64) mask of a 64x48 image
    silently, while `eval` refuses it. Both read masks through one check now, and
    say the same."""
    from imrseg.evaluation.loop import EvalSettings, evaluate

    root = _data(tmp_path / "data")
    for name in ("red_disc", "yellow_disc"):
        mask = root / name / "1.png"
        Image.fromarray(np.asarray(Image.open(mask)).T.copy()).save(mask)
    data, split, val = open_folder(root, ["yellow_disc"])
    with pytest.raises(InputError, match=r"red_disc/1\.png: mask is 48x64, its image is 64x48$") as trained:
        EpisodeLoader(data, "folder", cams=None, workers=1).load(
            [Episode(0, 0, "red_disc/1.jpg", ("red_disc/2.jpg",))])
    cams = CamSource(mask_cam(), folder_vocabulary(data.class_names), "mask-cam", None)
    with pytest.raises(InputError) as evaluated:
        evaluate(EvalSettings("folder", None, 1, 2, 0, 1, "cam", batch_size=1), val, data, None, cams)
    assert str(evaluated.value) == str(trained.value).replace("red_disc", "yellow_disc")


def test_an_rgb_class_map_is_refused_as_eval_refuses_it(tmp_path):
    """PASCAL's masks are class indices: an RGB picture in their place is refused by
    training as by evaluation (the same reader)."""
    from imrseg.data.datasets import BenchmarkData

    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClassAug").mkdir()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(voc / "JPEGImages" / "a.jpg")
    Image.new("RGB", (64, 48), (128, 0, 0)).save(voc / "SegmentationClassAug" / "a.png")
    loader = EpisodeLoader(BenchmarkData.open("pascal", tmp_path), "pascal", cams=None, workers=1)
    with pytest.raises(InputError, match=r"a\.png: a RGB image, expected a single-channel class-index mask"):
        loader.load([Episode(0, 0, "a", ("a",))])


# ------------------------------------------------------------ killed at a write
def _outcome(run: Path) -> dict:
    """What a run leaves, less its timings: the files (no temporary one), the manifest's
    names, each file's bytes, metrics rows and checkpoint contents without seconds and
    RNG states (each process starts from a random seed; the weights, compared, would
    show any draw that mattered)."""
    def tensors(value):
        if isinstance(value, torch.Tensor):
            return (str(value.dtype), tuple(value.shape), hashlib.sha256(value.numpy().tobytes()).hexdigest())
        if isinstance(value, dict):
            return {k: tensors(v) for k, v in value.items() if k not in ("seconds", "rng")}
        if isinstance(value, list):
            return [tensors(v) for v in value]
        return value

    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    outcome = {"files": files, "manifest": sorted({row["file"] for row in read_results(run / MANIFEST)})}
    for name in RUN_FILES:
        path = run / name
        if name == "metrics.jsonl":
            outcome[name] = [{k: v for k, v in row.items() if k != "seconds"} for row in read_results(path)]
        elif name == "last/checkpoint.pt":
            outcome[name] = tensors(torch.load(path, weights_only=True))
        else:
            outcome[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return outcome


def _kill_and_continue(uninterrupted, tmp_path, kills: list[str]) -> None:
    """The same command killed at each of `kills` in turn (each in a new process that
    continues the last), then run to its end: the outcome of the uninterrupted run."""
    run = tmp_path / "run"
    args = _args(uninterrupted.data, uninterrupted.weights, run)
    for when in kills:
        killed = _wrapped(when, tmp_path / "writes.jsonl", args, uninterrupted.cache)
        assert killed.returncode == -9, (when, killed.returncode, killed.stderr[-2000:])
    finished = _wrapped("0", tmp_path / "writes.jsonl", args, uninterrupted.cache)
    assert finished.returncode == 0, (kills, finished.stderr[-2000:])
    assert _outcome(run) == uninterrupted.outcome, kills


@pytest.mark.slow
def test_killed_at_writes_the_same_command_ends_as_if_never_killed(uninterrupted, tmp_path):
    """Issue 18's kill test, at three moments in turn: the run folder's first write (the
    manifest, torn), between best/'s weights and its card, and before epoch 2's
    metrics.jsonl (last/ already saved: a continued run must still write it)."""
    writes = uninterrupted.writes
    assert writes.count("last/checkpoint.pt") == 4 and writes.count("metrics.jsonl") == 2
    assert writes.count("best/model.safetensors") == 2  # epoch 2 validates better (mIoU 0, then 37)
    _kill_and_continue(uninterrupted, tmp_path, [f"{MANIFEST}#1", "best/README.md#1", "metrics.jsonl#2"])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("IMRSEG_KILL_EVERY_WRITE"),
                    reason="about two runs per write (half an hour on 2 cores); set IMRSEG_KILL_EVERY_WRITE=1")
def test_killed_at_every_write_the_same_command_ends_as_if_never_killed(uninterrupted, tmp_path):
    """Issue 18's kill test, every write of the run enumerated: killed at the N-th, then
    run again, for each N in turn."""
    for number in range(1, len(uninterrupted.writes) + 1):
        _kill_and_continue(uninterrupted, tmp_path / str(number), [str(number)])
