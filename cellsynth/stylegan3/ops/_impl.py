"""Choice of implementation for the StyleGAN3 ops.

Every public op takes ``impl`` in {"auto", "ref", "cpu", "cuda"}:

- "ref": plain PyTorch written for clarity (the definition of the op);
- "cpu": the fast path (polyphase / separable formulation, still plain differentiable torch ops,
  so it also runs on CUDA tensors and supports double backward);
- "cuda": custom CUDA kernels (``cuda_ops``, compiled at first use; a failed build raises the
  compiler log);
- "auto": the environment variable ``CELLSYNTH_OPS_IMPL`` when set, else the fast path for CPU
  tensors and, for float32/float16 CUDA tensors, the CUDA kernels when they build (otherwise one
  warning with the compiler log, then the reference).
"""

from __future__ import annotations

import os

import torch

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops.cuda_ops import cuda_ops_available

IMPLS = ("auto", "ref", "cpu", "cuda")
ENV_VAR = "CELLSYNTH_OPS_IMPL"


def resolve_impl(impl: str | None, x: torch.Tensor, op: str | None = None) -> str:
    """Return "ref", "cpu" or "cuda" for ``impl`` applied to tensor ``x``.

    Args:
        impl: one of IMPLS, or None (same as "auto").
        x: the op's input (its device decides "auto").
        op: the CUDA extension of the op ("bias_act", "upfirdn2d", "filtered_lrelu") or None
            (no CUDA kernel: "auto" never picks "cuda").

    Returns:
        the implementation to run, "ref", "cpu" or "cuda".
    """
    if impl is None:
        impl = "auto"
    if impl not in IMPLS:
        raise CellsynthError(f"unknown ops impl {impl!r}; use one of {', '.join(IMPLS)}")
    if impl == "auto":
        env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if env not in IMPLS:
            raise CellsynthError(
                f"unknown ops impl {env!r} in ${ENV_VAR}; use one of {', '.join(IMPLS)}"
            )
        impl = env
    if impl == "cuda" and not x.is_cuda:
        raise CellsynthError("impl='cuda' needs CUDA tensors; use impl='cpu' or 'ref'")
    if impl == "auto":
        if not x.is_cuda:
            return "cpu"
        impl = "ref"
        if op is not None and x.dtype in (torch.float32, torch.float16):
            impl = "cuda" if cuda_ops_available(op) else "ref"
    return impl
