"""The library checks its arguments as the command line does: every public entry
refuses a wrong value up front with an InputError (a wrong type with a TypeError)
naming the parameter, and never with another exception from deep inside; torch's
precision settings are the caller's again after every call, under either API."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from conftest import write_image
from imrseg.clip.cam import ClipCAM
from imrseg.errors import InputError
from imrseg.evaluation import BenchmarkSettings, run_benchmark
from imrseg.predictor import Predictor
from imrseg.runner import ClassSpec, RunSettings, run_folder
from imrseg.training import TrainSettings, train

FEW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


class Unloaded(torch.nn.Module):
    """Stands for the network where only the arguments are checked: no forward runs."""

    steps = 2


def _image(size=(32, 24), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def unloaded():
    """A predictor of one zero-shot class whose every prediction would need CLIP."""
    predictor = Predictor(Unloaded())
    predictor.set_zero_shot(["dog"])
    return predictor


@pytest.fixture(scope="module")
def ready(recipe_net, recipe_clip):
    predictor = Predictor(recipe_net, ClipCAM(recipe_clip), steps=1)
    predictor.set_support([_image(seed=1)], "dog")
    return predictor


# -------------------------------------------------------------- the Predictor itself
@pytest.mark.parametrize("precision", ["FP32", "fp64", "", " fp32"])
def test_an_unknown_precision_is_refused_not_run_as_bf16(precision):
    with pytest.raises(InputError, match=f"^`precision` {precision!r}: expected one of fp32, tf32, fp16, bf16"):
        Predictor(Unloaded(), precision=precision)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"device": "gpu"}, InputError, "^`device` gpu: unknown device"),
    ({"device": 3}, TypeError, "^`device` must be a str or torch.device, not int"),
    ({"steps": -3}, InputError, "^`steps` must be 1 or more, not -3"),
    ({"steps": 0}, InputError, "^`steps` must be 1 or more, not 0"),
    ({"steps": 1.5}, TypeError, "^`steps` must be an int, not float"),
    ({"vocabulary": "cat"}, TypeError, "^`vocabulary` must be a list or tuple, not str"),
    ({"precision": "fp16"}, InputError, "^`precision` fp16 needs a GPU"),
])
def test_the_predictor_checks_its_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Predictor(Unloaded(), **kwargs)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"weights": 123}, TypeError, "^`weights` must be a str, not int"),
    ({"clip": b"RN50"}, TypeError, "^`clip` must be a str, not bytes"),
    ({"template": "{c:>50000000}"}, InputError, "^`template` '{c:>50000000}' has {c:>50000000}"),
    ({"cam_mode": "centre"}, InputError, "^`cam_mode` 'centre' is not a CAM mode"),
    ({"device": "gpu"}, InputError, "^`device` gpu: unknown device"),
    ({"precision": "FP32"}, InputError, "^`precision` 'FP32'"),
    ({"steps": 0}, InputError, "^`steps` must be 1 or more"),
])
def test_from_pretrained_checks_before_reading_any_weights(tmp_path, kwargs, error, message):
    # Weights that do not exist: a check that came after reading them would say so instead.
    kwargs = {"weights": str(tmp_path / "missing.pt"), "device": "cpu", **kwargs}
    with pytest.raises(error, match=message):
        Predictor.from_pretrained(**kwargs)


@pytest.mark.parametrize("call, error, message", [
    (lambda p: p.predict(None), TypeError, "^`image` must be a PIL image, not NoneType"),
    (lambda p: p.predict("a.jpg"), TypeError, "^`image` must be a PIL image, not str"),
    (lambda p: p.predict(np.zeros((8, 8, 3), np.uint8)), TypeError, "^`image` must be a PIL image, not ndarray"),
    (lambda p: p.predict(Image.new("RGB", (0, 0))), InputError, "^`image`: image has zero width or height"),
    (lambda p: p.predict(_image(), size=(0, 0)), InputError, "^`size` 0x0: image has zero width or height"),
    (lambda p: p.predict(_image(), size=(10**6, 10**6)), InputError, "over the limit of 178956970"),
    (lambda p: p.predict(_image(), size=640), TypeError, "^`size` must be a list or tuple, not int"),
    (lambda p: p.predict(_image(), steps=0), InputError, "^`steps` must be 1 or more, not 0"),
    (lambda p: p.predict_batch([]), InputError, "^`images` is empty"),
    (lambda p: p.predict_batch(_image()), TypeError, "^`images` must be a list or tuple, not Image"),
    (lambda p: p.predict_batch([_image()], sizes=[(4, 4), (4, 4)]), InputError, "^`sizes`: 2 sizes for 1 images"),
    (lambda p: p.predict_classes([_image()], keep="prob"), TypeError, "^`keep` must be a list or tuple, not str"),
    (lambda p: p.predict_zero_shot([_image()], None), TypeError, "^`label` must be a str, not NoneType"),
    (lambda p: p.set_zero_shot("dog"), TypeError, "^`labels` must be a list or tuple, not str"),
    (lambda p: p.set_zero_shot(["dog", " "]), InputError, "^the label is empty"),
    (lambda p: p.set_support([_image()], None), TypeError, "^`label` must be a str, not NoneType"),
    (lambda p: p.set_support(_image(), "dog"), TypeError, "^`images` must be a list or tuple"),
    (lambda p: p.set_support([_image((32, 24))], "dog", [np.ones((12, 16), bool)]), InputError,
     "^`masks`\\[0\\] of 'dog': mask is 16x12 but its support image 0 is 32x24"),
    (lambda p: p.set_support([_image((32, 24))], "dog", [np.ones((24, 32, 3), bool)]), InputError,
     "^`masks`\\[0\\] of 'dog': mask is of shape \\(24, 32, 3\\)"),
    (lambda p: p.set_support([_image()], "dog", [[[1]]]), TypeError, "^`masks` must be a numpy array, not list"),
    (lambda p: p.set_supports([("dog", [_image()])]), TypeError, "^`classes` must be a dict"),
])
def test_wrong_calls_are_refused_naming_the_parameter(unloaded, call, error, message):
    with pytest.raises(error, match=message):
        call(unloaded)
    assert unloaded.labels == ["dog"]  # refused before anything changed


# ------------------------------------------------------------ the settings objects
@pytest.mark.parametrize("make, error, message", [
    (lambda: RunSettings(queries="q.jpg", label="cat"), TypeError, "^`queries` must be a list or tuple of a path"),
    (lambda: RunSettings(steps="2"), TypeError, "^`steps` must be an int or None, not str"),
    (lambda: RunSettings(label=3), TypeError, "^`label` must be a str or None, not int"),
    (lambda: RunSettings(classes=(ClassSpec("cat", ("s.jpg",)), "dog")), TypeError, "^`classes` must be"),
    (lambda: ClassSpec(None), TypeError, "^`label` must be a str, not NoneType"),
    (lambda: BenchmarkSettings("pascal", 3), TypeError, "^`data_root` must be a path, not int"),
    (lambda: TrainSettings("pascal", fold="0"), TypeError, "^`fold` must be an int or None, not str"),
    (lambda: TrainSettings("pascal", seed=True), TypeError, "^`seed` must be an int, not bool"),
])
def test_settings_refuse_values_of_the_wrong_type(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_settings_keep_paths_given_as_text():
    run = RunSettings(queries=["q.jpg"], out="o", label="cat", supports=["s.jpg"])
    assert run.queries == (Path("q.jpg"),) and run.out == Path("o")
    assert run.classes[0].supports[0].name == "s.jpg"


@pytest.mark.parametrize("entry", [run_folder, train, run_benchmark])
def test_the_runs_take_their_settings_object_only(entry):
    with pytest.raises(TypeError, match="^`settings` must be a"):
        entry({"label": "cat"})


def test_fp16_on_the_cpu_is_refused_with_the_other_arguments(tmp_path, monkeypatch):
    """Not after the weights are hashed, and with no output folder left behind."""
    from typer.testing import CliRunner

    from imrseg.cli import _register, app

    _register()
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "s.jpg", (32, 24))
    write_image(tmp_path / "q.jpg", (32, 24), seed=1)
    result = CliRunner().invoke(app, ["segment", "-l", "cat", "-s", "s.jpg", "-q", "q.jpg", "-o", "out",
                                      "--device", "cpu", "--precision", "fp16", "--weights", "missing.pt"])
    assert result.exit_code == 2
    assert result.output == "imrseg: error: --precision fp16 needs a GPU; use fp32 or bf16 on the CPU\n"
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="^`precision` fp16 needs a GPU"):
        RunSettings(queries=("q.jpg",), label="cat", supports=("s.jpg",), device="cpu", precision="fp16").check()


@pytest.mark.parametrize("template", ["{c:>50000000}", "a {c!r}", "{c:{x}}"])
def test_the_prompt_template_takes_no_format_spec(tmp_path, template):
    from typer.testing import CliRunner

    from imrseg.cli import _register, app

    _register()
    write_image(tmp_path / "s.jpg", (32, 24))
    result = CliRunner().invoke(app, ["segment", "-l", "cat", "-s", str(tmp_path / "s.jpg"), "-q",
                                      str(tmp_path / "s.jpg"), "-o", str(tmp_path / "out"),
                                      "--prompt-template", template])
    assert result.exit_code == 2
    assert result.output.startswith(f"imrseg: error: --prompt-template {template!r} has ")
    assert "no format spec or conversion" in result.output
    with pytest.raises(InputError, match="no format spec or conversion"):
        ClipCAM(Unloaded(), template=template)


# ------------------------------------------------------------------ properties
IMAGES = st.one_of(
    st.builds(lambda w, h: Image.new("RGB", (w, h), (90, 20, 200)), st.integers(0, 40), st.integers(0, 40)),
    st.builds(lambda w, h: Image.new("L", (w, h)), st.integers(1, 20), st.integers(1, 20)),
    st.sampled_from([None, "a.jpg", b"", 3, np.zeros((4, 4, 3), np.uint8)]))
SIZES = st.one_of(st.none(), st.tuples(st.integers(-2, 48), st.integers(-2, 48)),
                  st.sampled_from([(10**6, 10**6), (1.5, 2), "4x4", (4,), 5]))
STEPS = st.one_of(st.none(), st.integers(-2, 1), st.sampled_from(["1", 1.0, True]))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(image=IMAGES, size=SIZES, steps=STEPS)
def test_predict_gives_a_mask_or_an_input_error(ready, image, size, steps):
    try:
        prediction = ready.predict(image, steps=steps, size=size)
    except (InputError, TypeError):
        return
    width, height = size if size is not None else image.size
    assert prediction.mask.shape == (height, width) and prediction.mask.dtype == bool


@FEW
@given(images=st.one_of(st.lists(IMAGES, max_size=3), IMAGES),
       masks=st.one_of(st.none(), st.lists(st.one_of(
           st.builds(lambda h, w: np.ones((h, w), bool), st.integers(0, 30), st.integers(0, 40)),
           st.builds(lambda h, w: np.ones((h, w, 3), np.uint8), st.integers(1, 4), st.integers(1, 4)),
           st.sampled_from([None, 1, [[0, 1]]])), max_size=3)),
       labels=st.one_of(st.lists(st.one_of(st.text(max_size=8), st.none(), st.integers()), max_size=3),
                        st.text(max_size=4)),
       keep=st.one_of(st.lists(st.sampled_from(["prob", "cam", "steps", "mask", 1])), st.sampled_from(["prob", 7])))
def test_the_entries_give_results_or_input_errors(unloaded, images, masks, labels, keep):
    """Every outcome of arbitrary supports, labels, queries and `keep` is a result or an
    InputError/TypeError; a call that passes its checks here reaches the missing CLIP."""
    predictor = Predictor(Unloaded())
    for call in (lambda: predictor.set_supports({label: (images, masks) for label in labels}
                                                if isinstance(labels, list) else labels),
                 lambda: predictor.set_zero_shot(labels),
                 lambda: unloaded.predict_classes(images, keep=keep),
                 lambda: unloaded.predict_batch(images, sizes=masks)):
        try:
            call()
        except (InputError, TypeError):
            pass


@FEW
@given(fields=st.fixed_dictionaries({}, optional={
    "label": st.one_of(st.none(), st.text(max_size=6), st.integers()),
    "supports": st.one_of(st.lists(st.sampled_from(["s.jpg", 3, None])), st.text(max_size=3)),
    "queries": st.one_of(st.lists(st.sampled_from(["q.jpg", "q"])), st.sampled_from(["q.jpg", None])),
    "steps": STEPS, "batch_size": STEPS, "max_pixels": st.one_of(st.none(), st.integers(-2, 2)),
    "precision": st.sampled_from(["fp32", "bf16", "fp16", "FP32", None]),
    "device": st.sampled_from(["cpu", "auto", "gpu", 0]),
    "prompt_template": st.sampled_from(["{c}", "{c:5}", "{x}", "{", "a {c}", 1]),
    "min_area": st.integers(-1, 2), "coco": st.booleans(), "zero_shot": st.booleans()}))
def test_run_settings_check_or_refuse(tmp_path_factory, fields):
    out = tmp_path_factory.getbasetemp() / "settings-out"
    try:
        RunSettings(out=out, **fields).check()
    except (InputError, TypeError):
        pass


# ------------------------------------------------------------ torch's precision API
def _precision_settings() -> dict:
    """Every precision setting torch reads, by both APIs; a getter that raises reads as such."""
    backends = torch.backends
    getters = {
        "all": lambda: backends.fp32_precision, "matmul": lambda: backends.cuda.matmul.fp32_precision,
        "cudnn": lambda: backends.cudnn.fp32_precision, "conv": lambda: backends.cudnn.conv.fp32_precision,
        "rnn": lambda: backends.cudnn.rnn.fp32_precision, "mkldnn": lambda: backends.mkldnn.fp32_precision,
        "mkldnn matmul": lambda: backends.mkldnn.matmul.fp32_precision,
        "mkldnn conv": lambda: backends.mkldnn.conv.fp32_precision,
        "matmul allow_tf32": lambda: backends.cuda.matmul.allow_tf32,
        "cudnn allow_tf32": lambda: backends.cudnn.allow_tf32,
        "matmul precision": torch.get_float32_matmul_precision}
    if not hasattr(backends, "fp32_precision"):  # an older torch: only its TF32 flags
        getters = {name: get for name, get in getters.items() if "allow_tf32" in name or name == "matmul precision"}
    values = {}
    for name, get in getters.items():
        try:
            values[name] = get()
        except RuntimeError as exc:
            values[name] = f"raises: {exc}"
    return values


@pytest.fixture
def torch_defaults():
    """Torch's settings as a fresh process has them, again after the test."""
    yield
    backends = torch.backends
    torch.set_float32_matmul_precision("highest")
    backends.cudnn.allow_tf32 = True
    if hasattr(backends, "fp32_precision"):
        backends.fp32_precision = "none"
        for setting in (backends.cudnn, backends.mkldnn, backends.cuda.matmul, backends.mkldnn.matmul,
                        backends.mkldnn.conv):
            setting.fp32_precision = "none"
        backends.cudnn.conv.fp32_precision = backends.cudnn.rnn.fp32_precision = "tf32"


def _new_api(setting: str, value: str):
    def set_it():
        if not hasattr(torch.backends, "fp32_precision"):
            pytest.skip("this torch has no per-operation precision settings")
        owner = {"all": torch.backends, "matmul": torch.backends.cuda.matmul, "conv": torch.backends.cudnn.conv}
        owner[setting].fp32_precision = value
    return set_it


CALLERS = {
    "new matmul tf32": _new_api("matmul", "tf32"),
    "new all tf32": _new_api("all", "tf32"),
    "new conv ieee": _new_api("conv", "ieee"),
    "legacy medium": lambda: torch.set_float32_matmul_precision("medium"),
    "legacy high": lambda: torch.set_float32_matmul_precision("high"),
    "legacy flags": lambda: (setattr(torch.backends.cuda.matmul, "allow_tf32", True),
                             setattr(torch.backends.cudnn, "allow_tf32", False)),
}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_the_callers_precision_settings_read_back_the_same(torch_defaults, caller, precision):
    from imrseg.devices import float32_mode

    CALLERS[caller]()
    before = _precision_settings()
    with float32_mode(precision):
        torch.ones(4, 4) @ torch.ones(4, 4)
    assert _precision_settings() == before
    with pytest.raises(KeyError):
        with float32_mode(precision):
            raise KeyError
    # Equal, raising getters included: a getter that read before reads the same now.
    assert _precision_settings() == before


@pytest.mark.parametrize("caller", ["new matmul tf32", "legacy medium"])
def test_predict_works_whatever_precision_api_the_caller_used(torch_defaults, ready, caller):
    CALLERS[caller]()
    before = _precision_settings()
    prediction = ready.predict(_image((20, 16), seed=2))
    assert prediction.mask.shape == (16, 20)
    assert _precision_settings() == before


# ------------------------------------------------------------ a checkpoint's sizes
def test_a_checkpoint_is_checked_from_its_header_before_a_tensor_is_read(recipe_weight_files, tmp_path,
                                                                         monkeypatch):
    """A model.safetensors whose header declares other names or sizes than the model's is
    refused from the header: no tensor of it is read into memory."""
    import safetensors.torch
    from safetensors.torch import load_file, save_file

    from imrseg.errors import CheckpointError
    from imrseg.hub import WEIGHTS_FILE, resolve_weights
    from imrseg.hub.publish import import_official

    folder = tmp_path / "hub"
    import_official(recipe_weight_files["weights"], folder, "pascal", 0)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    name = next(k for k, v in tensors.items() if v.dim() == 4)
    tensors[name] = torch.zeros(2048, *tensors[name].shape[1:])  # declared larger than the model's
    save_file(tensors, str(folder / WEIGHTS_FILE))

    def read_all(*args, **kwargs):
        raise AssertionError("the tensors were read before their sizes were checked")

    monkeypatch.setattr(safetensors.torch, "load_file", read_all)
    with pytest.raises(CheckpointError, match=f"1 shape mismatches \\(e.g. {name} \\(2048, "):
        resolve_weights(str(folder))
