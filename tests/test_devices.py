"""Device, precision and the one batch-size default every command uses."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_image
from imrseg.cli import _register, app
from imrseg.devices import (MAX_DEFAULT_BATCH, QUERY_MEMORY_MIB, batch_for_memory, check_precision,
                            default_batch_size, float32_mode, resolve_device)
from imrseg.errors import InputError


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_one_batch_size_rule_off_the_gpu(device):
    assert default_batch_size(torch.device(device)) == 2


@pytest.mark.parametrize("gib, precision, expected", [
    (80, "fp32", MAX_DEFAULT_BATCH), (80, "bf16", MAX_DEFAULT_BATCH), (16, "fp32", 8192 // QUERY_MEMORY_MIB["fp32"]),
    (24, "bf16", 12288 // QUERY_MEMORY_MIB["bf16"]), (0.5, "fp32", 1)])
def test_the_gpu_batch_follows_its_memory(monkeypatch, gib, precision, expected):
    class Properties:
        total_memory = int(gib * 2**30)

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties)
    assert default_batch_size(torch.device("cuda", 1), precision) == expected == batch_for_memory(gib * 1024,
                                                                                                  precision)
    assert 1 <= expected <= MAX_DEFAULT_BATCH


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("tf32", True), ("bf16", True), ("fp16", True)])
@pytest.mark.parametrize("before", [False, True])
def test_fp32_turns_tf32_off_and_restores_the_callers_flags(precision, tf32, before):
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = before
        with float32_mode(precision):
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (tf32, tf32)
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (before, before)
        with pytest.raises(KeyError):
            with float32_mode(precision):
                raise KeyError
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (before, before)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


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
