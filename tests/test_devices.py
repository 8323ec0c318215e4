"""Device, precision and the one batch-size default every command uses."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_image
from imrseg.cli import _register, app
from imrseg.devices import check_precision, default_batch_size, resolve_device
from imrseg.errors import InputError


@pytest.mark.parametrize("device, expected", [("cpu", 2), ("cuda", 8), ("cuda:1", 8), ("mps", 2)])
def test_one_batch_size_rule_for_every_device(device, expected):
    assert default_batch_size(torch.device(device)) == expected


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(InputError, match="^`precision` fp16 needs a GPU"):
        check_precision("fp16", torch.device("cpu"))
    assert check_precision("bf16", torch.device("cpu")) == "bf16"


def test_unknown_device_is_one_line():
    with pytest.raises(InputError, match="^`device` tpu: unknown device"):
        resolve_device("tpu")


def test_the_command_names_the_device_flag(tmp_path, monkeypatch):
    _register()
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "s.jpg", (32, 24))
    write_image(tmp_path / "q.jpg", (32, 24), seed=1)
    result = CliRunner().invoke(app, ["segment", "-l", "cat", "-s", "s.jpg", "-q", "q.jpg", "-o", "out",
                                      "--device", "tpu"])
    assert result.exit_code == 2
    assert result.output == "imrseg: error: --device tpu: unknown device; use auto, cpu, cuda, cuda:N or mps\n"
