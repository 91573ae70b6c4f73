"""Binary weight quantizers (BWN), layer-wise (GSB, BiT) and per output row (BinaryViT).

Layer-wise BWN (Rastegari et al. 2016, as GSB and BiT use it; docs/methods.md "GSB"):

    forward:   W_hat = m * sgn(W - mean(W)),   m = ||W||_1 / n = mean|W|   (of the UNcentred W)
    backward:  dL/dW = dL/dW_hat               (identity straight-through estimator)

Per-row BWN (BinaryViT, docs/methods.md "BinaryViT"), one scale per output row n (rows of a Linear weight [N, K]):

    forward:   W_hat[n, :] = m_n * sgn(W[n, :] - mean_k W[n, k]),   m_n = mean_k |W[n, k]|  (detached)
    backward:  dL/dW = dL/dW_hat               (identity; m_n carries no gradient)

The scales are accumulated in float64 and rounded once to the weight's dtype: the fp32 ``W.norm(p=1)`` of the
official code carries ~1e-5 relative error, enough to flip activation signs downstream. ``sgn`` is
``torch.sign`` (sgn(0) = 0) in training; the deployment packing (:func:`bvit_edge.quant.deploy.bwn_pack`)
turns the same centred weight into sign bits with sgn(0) = +1.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def bwn_scale(w: torch.Tensor) -> torch.Tensor:
    """m = mean|W| over the whole tensor, accumulated in float64, returned 0-dim in ``w.dtype`` (no grad)."""
    with torch.no_grad():
        return w.detach().to(torch.float64).abs().mean().to(w.dtype)


def bwn_row_scale(w: torch.Tensor) -> torch.Tensor:
    """m_n = mean_k |W[n, k]| per output row (dim 0; the other dims are flattened), float64 accumulation,
    returned as [N] in ``w.dtype`` (no grad)."""
    with torch.no_grad():
        return w.detach().reshape(w.shape[0], -1).to(torch.float64).abs().mean(dim=1).to(w.dtype)


def bwn_center(w: torch.Tensor) -> torch.Tensor:
    """W - mean(W) (no grad; the mean accumulated in float64). Its signs are the binary weights."""
    with torch.no_grad():
        return w.detach() - w.detach().to(torch.float64).mean().to(w.dtype)


def bwn_row_center(w: torch.Tensor) -> torch.Tensor:
    """W[n] - mean_k W[n, k] per output row (no grad; float64 means)."""
    with torch.no_grad():
        flat = w.detach().reshape(w.shape[0], -1)
        mean = flat.to(torch.float64).mean(dim=1, keepdim=True).to(w.dtype)
        return (flat - mean).reshape(w.shape)


class _BWNFunction(torch.autograd.Function):
    """W_hat = m * sgn(centred W); backward identity."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, per_row: bool) -> torch.Tensor:
        if per_row:
            m = bwn_row_scale(w).reshape((-1,) + (1,) * (w.ndim - 1))
            return torch.sign(bwn_row_center(w)) * m
        return torch.sign(bwn_center(w)) * bwn_scale(w)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_out, None


def bwn_quantize(w: torch.Tensor) -> torch.Tensor:
    """Layer-wise BWN: m * sgn(W - mean W), m = mean|W| (float64-accurate); identity backward."""
    return _BWNFunction.apply(w, False)


def bwn_quantize_rows(w: torch.Tensor) -> torch.Tensor:
    """Per-row BWN (BinaryViT): m_n * sgn(W[n] - mean W[n]), m_n = mean|W[n]| detached; identity backward."""
    return _BWNFunction.apply(w, True)


class BWNQuantizer(nn.Module):
    """Module form of BWN (larq style): ``BWNQuantizer(per_row=False)(weight) -> W_hat``.

    Stateless; ``per_row=True`` gives BinaryViT's per-output-row scale. See the module docstring for the math.
    """

    def __init__(self, per_row: bool = False) -> None:
        super().__init__()
        self.per_row = per_row

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return bwn_quantize_rows(w) if self.per_row else bwn_quantize(w)

    def scales(self, w: torch.Tensor) -> torch.Tensor:
        """The deployment scale per output row, [N] float32: m repeated N times, or m_n."""
        if self.per_row:
            return bwn_row_scale(w).float()
        return bwn_scale(w).float().expand(w.shape[0]).clone()

    def centred(self, w: torch.Tensor) -> torch.Tensor:
        """The centred weight whose signs are the binary weights (no grad)."""
        return bwn_row_center(w) if self.per_row else bwn_center(w)

    def extra_repr(self) -> str:
        return f"per_row={self.per_row}"


__all__ = [
    "BWNQuantizer",
    "bwn_center",
    "bwn_quantize",
    "bwn_quantize_rows",
    "bwn_row_center",
    "bwn_row_scale",
    "bwn_scale",
]
