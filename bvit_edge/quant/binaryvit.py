"""BinaryViT's quantizers and small layers (Le & Li, "BinaryViT: Pushing Binary Vision Transformers Towards
Convolutional Models", CVPR 2023 workshops). docs/methods.md "BinaryViT".

ApproxSign (Bi-Real Net's activation binarizer)::

    forward   c = sgn(x)                                   (sgn(0) = 0 in training; +1 after freeze)
    backward  dc/dx = 2 + 2x  on [-1, 0]
                    = 2 - 2x  on (0, 1]
                    = 0       elsewhere

RPReLU (ReActNet): y = PReLU(x - gamma) + zeta, i.e. y = (x - gamma) if x > gamma else
slope * (x - gamma), then + zeta; gamma, zeta, slope per channel (init 0, 0, 0.25). Plain autograd.

LayerScale: y = a * x (+ b in the affine variant), per channel; a init given (0 for the pooling branches,
0.1 for the affine residual), b init 0. Plain autograd.

Attention probabilities: A_hat = alpha * clip(r(A / alpha), 0, 1) = alpha * 1[A > alpha/2] (A >= 0 after
softmax), alpha learnable, init 0.005 (not data initialised). Backward, the straight-through estimate of
alpha * clip(A/alpha, 0, 1) with round passed through (the BiT unsigned rule with beta = 0)::

    dA_hat/dA     = 1[0 <= A < alpha]
    dA_hat/dalpha = 1[A >= alpha] + 1[0 <= A < alpha] * (r(A/alpha) - A/alpha)     (0 for A < 0)

It is :func:`bvit_edge.quant.bit.unsigned_code` times alpha.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bvit_edge.quant.bit import ALPHA_MIN, unsigned_code


class _ApproxSign(torch.autograd.Function):
    """sgn(x) with Bi-Real's piecewise-linear pseudo-gradient (module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        neg = ((x >= -1) & (x <= 0)).to(g.dtype)
        pos = ((x > 0) & (x <= 1)).to(g.dtype)
        return g * (neg * (2 + 2 * x) + pos * (2 - 2 * x))


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """sgn(x) forward, Bi-Real ApproxSign backward."""
    return _ApproxSign.apply(x)


class ApproxSignBinarizer(nn.Module):
    """c = ApproxSign(x + shift), shift a learnable per-channel vector (init 0): the input binarizer of every
    BinaryViT binary linear layer. The deployment op's ``shift`` is this shift, and alpha = 1."""

    def __init__(self, channels: int | None) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels)) if channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return approx_sign(x if self.shift is None else x + self.shift)


class BinaryViTLinear(nn.Linear):
    """BinaryViT's binary linear: y = W_hat c + bias, c = ApproxSign(x + shift), W_hat = per-row BWN
    (m_n * sgn(W[n] - mean W[n]), m_n = mean|W[n]| detached; identity backward).

    Computed as acc * (1 * m_n) + bias with acc = c @ sgn(W_c)^T: the order of ``torch.ops.bvit.binary_linear``
    with alpha = 1 and w_scale = m, which ``frozen()`` returns.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        from bvit_edge.quant.weights import BWNQuantizer

        self.act = ApproxSignBinarizer(in_features)
        self.wq = BWNQuantizer(per_row=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.act(x)
        w_hat = self.wq(self.weight)
        m = self.wq.scales(self.weight)
        wc = w_hat / torch.where(m > 0, m, torch.ones_like(m))[:, None]
        out = F.linear(c, wc) * (torch.ones((), dtype=m.dtype) * m)
        return out if self.bias is None else out + self.bias

    @torch.no_grad()
    def frozen(self) -> nn.Module:
        from bvit_edge.quant.deploy import FrozenBinaryLinear, bwn_pack

        w_bits, w_scale = bwn_pack(self.weight, per_row=True)
        shift = self.act.shift.detach() if self.act.shift is not None else torch.zeros(self.in_features)
        bias = None if self.bias is None else self.bias.detach()
        return FrozenBinaryLinear(w_bits, w_scale, shift, torch.ones(()), bias, "signed", self.in_features)

    def bit_widths(self) -> dict[str, int]:
        """Precision of each parameter (summary protocol): weight 1-bit, the rest float."""
        out = {"weight": 1, "act.shift": 32}
        if self.bias is not None:
            out["bias"] = 32
        return out


class RPReLU(nn.Module):
    """y = PReLU(x - gamma) + zeta, per channel (ReActNet's RPReLU)."""

    def __init__(self, channels: int, slope: float = 0.25) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.zeta = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), float(slope)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _prelu_last(x - self.gamma, self.slope) + self.zeta


def _prelu_last(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """PReLU with the channel on the LAST axis (F.prelu puts it on axis 1)."""
    return torch.where(x > 0, x, x * slope)


class LayerScale(nn.Module):
    """y = a * x (+ b when ``affine``), per channel on the last axis."""

    def __init__(self, channels: int, init: float = 0.0, affine: bool = False) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.full((channels,), float(init)))
        self.b = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.a if self.b is None else x * self.a + self.b


class AttnBinarizer(nn.Module):
    """A_hat = alpha * clip(r(A/alpha), 0, 1) with alpha learnable, init 0.005 (module docstring).

    ``codes(A)`` -> (c in {0, 1}, alpha) with A_hat = alpha * c; the deployment op's unsigned mode with shift 0.
    """

    def __init__(self, init: float = 0.005) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(init)))

    def codes(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.alpha.clamp_min(ALPHA_MIN)
        return unsigned_code(a, alpha), alpha

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        c, alpha = self.codes(a)
        return alpha * c

    def deploy_alpha(self) -> torch.Tensor:
        return self.alpha.detach().clamp_min(ALPHA_MIN).float().reshape(1).clone()


__all__ = ["ApproxSignBinarizer", "AttnBinarizer", "BinaryViTLinear", "LayerScale", "RPReLU", "approx_sign"]
