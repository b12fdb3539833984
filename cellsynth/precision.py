"""Mixed precision on the CPU and on CUDA: which low-precision type a device has, and the switch.

The original StyleGAN3 and pix2pixHD run their heavy layers in fp16 on GPUs; on a CPU the same
idea is bfloat16, which only pays where the CPU has native bf16 arithmetic (``avx512_bf16``, or
AMX's ``amx_bf16``). Everything here is decided once per process and recorded by the callers
(``training_options.json``, ``opt.json``, ``results.json``).

- :func:`cpu_has_bf16`: native bf16 on this CPU (read once from /proc/cpuinfo, else oneDNN).
- :func:`resolve_precision`: ``auto`` | ``bf16`` | ``fp32`` on a device -> what will run.
- :func:`low_precision_dtype`: the dtype a device's "fp16 layers" use (fp16 on CUDA, bf16 on a
  bf16 CPU, None where neither applies).
- :func:`autocast`: the autocast context for a resolved precision.
"""

from __future__ import annotations

import contextlib
import functools

from cellsynth.errors import CellsynthError

PRECISIONS = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (``avx512_bf16`` or ``amx_bf16``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    try:  # other systems: ask oneDNN
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def cpu_kind() -> str:
    """One line on this CPU for logs: model name and its bf16 flags (``amx_bf16``,
    ``avx512_bf16``, or ``no bf16``)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name} ({', '.join(bf16) if bf16 else 'no bf16'})"


def _device_has_bf16(device) -> bool:
    if device.type == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bf16()


def resolve_precision(precision, device) -> str:
    """``auto`` | ``bf16`` | ``fp32`` on ``device`` -> the precision that will run.

    ``auto`` is bf16 where the device has native bf16 (see :func:`cpu_has_bf16`; CUDA devices
    with ``torch.cuda.is_bf16_supported()``), else fp32. An explicit ``bf16`` on a device without
    it raises CellsynthError."""
    precision = "auto" if precision is None else str(precision).lower()
    if precision not in PRECISIONS:
        raise CellsynthError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    ok = _device_has_bf16(device)
    if precision == "bf16" and not ok:
        raise CellsynthError(
            f"precision bf16: the {device.type} device here has no native bf16; "
            "use precision fp32 (or auto)"
        )
    return "bf16" if ok else "fp32"


def low_precision_dtype(device, enabled: bool = True):
    """The dtype of a network's mixed-precision layers on ``device``: torch.float16 on CUDA,
    torch.bfloat16 on a CPU with native bf16, None when ``enabled`` is false or neither applies
    (those layers then stay fp32)."""
    import torch

    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device, precision: str):
    """Autocast context for ``precision`` ("bf16": bfloat16 autocast; "fp32": no-op)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16)
