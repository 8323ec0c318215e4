"""Loading the authors' `best_model.pt` files, and refusing everything else clearly."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from imrseg.errors import CheckpointError
from imrseg.models import IMRHSNet


@pytest.fixture(scope="module")
def official_file(recipe_net, tmp_path_factory):
    # The authors save `nn.DataParallel(model).state_dict()`: every key prefixed `module.`.
    path = tmp_path_factory.mktemp("ckpt") / "best_model.pt"
    torch.save({f"module.{k}": v for k, v in recipe_net.state_dict().items()}, path)
    return path


def test_official_checkpoint_loads_strictly(official_file, recipe_net):
    model = IMRHSNet.from_official(official_file)
    assert model.backbone_name == "resnet50"
    loaded, original = model.state_dict(), recipe_net.state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)


def test_state_dict_and_vgg_backbone_inferred():
    net = IMRHSNet("vgg16")
    model = IMRHSNet.from_official({f"module.{k}": v for k, v in net.state_dict().items()})
    assert model.backbone_name == "vgg16"
    assert not hasattr(model, "conv1024_512")


def test_parameter_names_are_the_authors(golden_dir):
    for backbone in ("resnet50", "vgg16"):
        lines = (golden_dir / f"keys_{backbone}.txt").read_text().splitlines()
        expected = {name: shape for name, shape in (line.split("\t") for line in lines if line)}
        ours = {k: str(tuple(v.shape)) for k, v in IMRHSNet(backbone).state_dict().items()}
        assert ours == expected


def test_truncated_file(official_file, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(official_file.read_bytes()[: os.path.getsize(official_file) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable PyTorch checkpoint"):
        IMRHSNet.from_official(cut)


def test_wrong_model(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="not an IMR-HSNet checkpoint"):
        IMRHSNet.from_official(path)


def test_mismatched_keys_are_named(recipe_net):
    state = dict(recipe_net.state_dict())
    del state["convz0.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        IMRHSNet.from_official(state)
    message = str(err.value)
    assert "resnet50 backbone" in message and "convz0.weight" in message and "extra.weight" in message


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/imrseg-pwned",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_with_code_is_refused_and_not_run(tmp_path, protocol):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"module.state": Payload()}, f, protocol=protocol)
    if os.path.exists("/tmp/imrseg-pwned"):
        os.remove("/tmp/imrseg-pwned")
    with pytest.raises(CheckpointError, match="refused to load") as err:
        IMRHSNet.from_official(path)
    assert not os.path.exists("/tmp/imrseg-pwned")
    assert "weights_only" not in str(err.value)  # PyTorch's advice to load it unsafely is not relayed


def test_non_tensor_entries_are_refused(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"module.state": "a string", "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        IMRHSNet.from_official(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        IMRHSNet.from_official(tmp_path / "nope.pt")


@pytest.mark.parametrize("name, content", [
    ("notes.txt", b"hello world\n"),
    ("cut.pkl", b"\x80\x02}q\x00"),
    ("bad.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json......}"),
])
def test_files_of_another_kind_are_one_line_checkpoint_errors(tmp_path, name, content):
    from imrseg.hub import resolve_weights

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as err:
        resolve_weights(str(path))
    assert str(err.value).count(str(path)) == 1 and "\n" not in str(err.value)

