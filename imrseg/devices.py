"""Choosing the device and numeric precision from user-facing strings.

Precisions: `fp32` is IEEE fp32 on every device, the authors' numbers (TF32 is
turned off for matmuls and convolutions while imrseg computes, whatever a
program set globally); `tf32` is fp32 storage with TensorFloat-32 matmuls and
convolutions on CUDA GPUs that have them (the same as fp32 elsewhere); `bf16` and
`fp16` run the network under autocast (fp16 on a GPU only). `float32_mode` sets the
TF32 flags for a block and restores the caller's; `autocast` is the network's
context."""
from __future__ import annotations

import contextlib
import re

from .arguments import type_error
from .errors import InputError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
# GPU memory one query of a batch takes at inference, by precision (measured on an H200:
# about 3.4 GiB at fp32 batch 8 and 4.4 GiB at bf16 batch 16, CLIP-CAM and backbone included).
QUERY_MEMORY_MIB = {"fp32": 420, "tf32": 420, "bf16": 280, "fp16": 280}
# The most queries per batch chosen by default: more gains nothing measurable.
MAX_DEFAULT_BATCH = 64


def device_of(device):
    """A torch.device as it is; a string as `resolve_device` reads it."""
    import torch

    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise type_error("device", device, "a str or torch.device")
    return resolve_device(device)


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


def default_batch_size(device, precision: str = "fp32") -> int:
    """Queries per forward pass when `batch_size` is not given, for every command:
    on a CUDA GPU as many as half its memory holds at `precision` (at most
    MAX_DEFAULT_BATCH), 2 elsewhere (CPU and MPS, where larger batches gain nothing)."""
    if device.type != "cuda":
        return 2
    import torch

    total_mib = torch.cuda.get_device_properties(device).total_memory / 2**20
    return batch_for_memory(total_mib, precision)


def batch_for_memory(total_mib: float, precision: str) -> int:
    """The default batch for a GPU of `total_mib` MiB: half of it for the batch."""
    return max(1, min(MAX_DEFAULT_BATCH, int(total_mib / 2 // QUERY_MEMORY_MIB[precision])))


def check_precision_name(precision: str) -> str:
    """`precision`, one of PRECISIONS (what any device may be asked for)."""
    if not isinstance(precision, str):
        raise type_error("precision", precision, "a str")
    if precision not in PRECISIONS:
        raise InputError(f"`precision` {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def check_precision(precision: str, device) -> str:
    """`precision`, known and possible on `device`."""
    check_precision_name(precision)
    if precision == "fp16" and device.type == "cpu":
        raise InputError("`precision` fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return precision


@contextlib.contextmanager
def float32_mode(precision: str):
    """TF32 off for `fp32` (IEEE fp32 matmuls and convolutions), on for the fast modes,
    for the block; what the caller had is restored after it, exactly. A torch with the
    per-operation precision settings (`torch.backends.fp32_precision`) is set through
    them, an older one through its TF32 flags: mixing the two makes torch's getters raise."""
    import torch

    if hasattr(torch.backends, "fp32_precision"):
        with _fp32_precision(torch, precision):
            yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = precision != "fp32"
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


@contextlib.contextmanager
def _fp32_precision(torch, precision: str):
    """float32_mode through torch's per-operation settings. What a caller set through the
    older calls (`set_float32_matmul_precision`, cuDNN's `allow_tf32`) is kept in agreement
    for the block, as torch checks that both agree when it reads either, and given back;
    then every per-operation setting this changes is put back as it was. An older setting
    the caller left unreadable (already disagreeing) is left so."""
    backends = torch.backends
    ieee = precision == "fp32"
    # CUDA's for every precision (cuDNN's recurrent ones too, which torch checks with its
    # convolutions'); oneDNN's (CPU) only turned to IEEE for fp32, as TF32 is CUDA's.
    every = (backends.cuda.matmul, backends.cudnn.conv, backends.cudnn.rnn, backends.mkldnn.matmul,
             backends.mkldnn.conv)
    settings = every if ieee else every[:3]
    before = [s.fp32_precision for s in every]
    older = []  # (setter, the caller's value, the block's value)
    for get, put, value in ((torch.get_float32_matmul_precision, torch.set_float32_matmul_precision,
                             "highest" if ieee else "high"),
                            (lambda: backends.cudnn.allow_tf32, lambda v: setattr(backends.cudnn, "allow_tf32", v),
                             not ieee)):
        try:
            older.append((put, get(), value))
        except RuntimeError:  # the caller's settings already disagree: theirs to keep
            pass
    try:
        for put, _, value in older:
            put(value)
        for setting in settings:
            setting.fp32_precision = "ieee" if ieee else "tf32"
        if not ieee:  # set_float32_matmul_precision turned oneDNN's matmul too: the caller's again
            backends.mkldnn.matmul.fp32_precision = before[3]
        yield
    finally:
        for put, value, _ in older:
            put(value)
        for setting, value in zip(every, before):
            setting.fp32_precision = value


def autocast(device, precision: str):
    """A context that runs the network in `precision` (a no-op for fp32 and tf32,
    whose TF32 flags `float32_mode` sets)."""
    import torch

    if precision in ("fp32", "tf32"):
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
