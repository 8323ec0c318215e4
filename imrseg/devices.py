"""Choosing the device and numeric precision from user-facing strings."""
from __future__ import annotations

import re

from .errors import InputError

PRECISIONS = ("fp32", "fp16", "bf16")


def resolve_device(spec: str = "auto"):
    """`auto` picks CUDA, then MPS, then CPU; `cpu`, `cuda`, `cuda:N`, `mps` are checked."""
    import torch

    spec = (spec or "auto").strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match:
        if not torch.cuda.is_available():
            raise InputError(f"`device` {spec}: CUDA was requested but this torch sees no CUDA GPU; "
                             "use `device` cpu (or auto)")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise InputError(f"`device` {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    if spec == "mps":
        if not mps_ok:
            raise InputError("`device` mps: MPS is not available here; use `device` cpu (or auto)")
        return torch.device("mps")
    raise InputError(f"`device` {spec}: unknown device; use auto, cpu, cuda, cuda:N or mps")


def default_batch_size(device) -> int:
    """Queries per forward pass when --batch-size is not given, for every command:
    8 on a CUDA GPU, 2 elsewhere (CPU and MPS, where larger batches gain nothing)."""
    return 8 if device.type == "cuda" else 2


def check_precision(precision: str, device) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"`precision` {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise InputError("`precision` fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return precision


def autocast(device, precision: str):
    """A context that runs the network in `precision` (a no-op for fp32)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device running out of memory (CUDA's own error, or a
    RuntimeError saying so, as other back-ends raise it)."""
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def free_cached_memory() -> None:
    """Hand the CUDA allocator's cached blocks back, before retrying smaller."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
