"""Fused bias + activation + gain + clamp (the StyleGAN ``bias_act`` op).

``y = clamp(act(x + b, alpha) * gain, -clamp, clamp)`` where ``b`` is broadcast along ``dim``.
Both implementations are ordinary autograd graphs, so double backward (R1) works.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops import cuda_ops
from cellsynth.stylegan3.ops._impl import resolve_impl


@dataclass(frozen=True)
class Activation:
    """One activation: function of (x, alpha), default alpha and default gain."""

    func: Callable
    def_alpha: float
    def_gain: float


ACTIVATIONS = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2)),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    "elu": Activation(lambda x, a: F.elu(x), 0.0, 1.0),
    "selu": Activation(lambda x, a: F.selu(x), 0.0, 1.0),
    "softplus": Activation(lambda x, a: F.softplus(x), 0.0, 1.0),
    "swish": Activation(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def _check(x, b, dim, act):
    if not isinstance(x, torch.Tensor):
        raise CellsynthError(f"bias_act: x must be a torch.Tensor, got {type(x).__name__}")
    if act not in ACTIVATIONS:
        raise CellsynthError(
            f"bias_act: unknown activation {act!r}; use one of {list(ACTIVATIONS)}"
        )
    if b is not None:
        if b.ndim != 1 or not 0 <= dim < x.ndim or b.shape[0] != x.shape[dim]:
            raise CellsynthError(
                f"bias_act: bias of shape {tuple(b.shape)} does not match dim {dim} of x "
                f"{tuple(x.shape)}"
            )


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = ACTIVATIONS[act].func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def _bias_act_fast(x, b, dim, act, alpha, gain, clamp):
    # Same maths as the reference; without autograd, work in place on our own temporary.
    if torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad)):
        return _bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    elif act not in ("linear",) or gain != 1 or clamp >= 0:
        x = x.clone()  # never modify the caller's tensor
    if act == "lrelu":
        F.leaky_relu_(x, alpha)
    elif act == "relu":
        x.relu_()
    elif act != "linear":
        x = ACTIVATIONS[act].func(x, alpha)
    if gain != 1:
        x.mul_(gain)
    if clamp >= 0:
        x.clamp_(-clamp, clamp)
    return x


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="auto"):
    """Add a bias, apply an activation, scale and clamp.

    Args:
        x: input tensor of any shape.
        b: 1-D bias with ``x.shape[dim]`` entries, or None.
        dim: the dimension of ``x`` that ``b`` runs along.
        act: one of ACTIVATIONS ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu",
            "softplus", "swish").
        alpha: the activation's shape parameter (negative slope for "lrelu"); None = default.
        gain: output scale; None = the activation's default gain (sqrt(2) for relu/lrelu/swish).
        clamp: clamp the output to [-clamp, clamp]; None = no clamping.
        impl: "auto", "ref", "cpu" or "cuda" (see ``_impl``).

    Returns:
        a tensor with the shape and dtype of ``x``.
    """
    _check(x, b, dim, act)
    spec = ACTIVATIONS[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    which = resolve_impl(impl, x, "bias_act")
    if which == "cuda":
        return cuda_ops.bias_act_cuda(x, b, dim, act, alpha, gain, clamp)
    if which == "ref":
        return _bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_fast(x, b, dim, act, alpha, gain, clamp)
