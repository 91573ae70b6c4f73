"""ACD-BiT's distribution-alignment binarizer (Wang et al., Sensors 2024, 24(24):8190). docs/methods.md "ACD-BiT".

Forward, per sample (statistics over every axis but the first, so a prediction never depends on the other
images of its batch — a deliberate choice; the paper does not say, and there is no public code)::

    med   = median(x_b)            (torch.median: the lower median for an even count)
    mu    = mean(x_b)
    alpha = mean|x_b - med|
    x_hat = alpha * sgn+(x - med) + mu,     sgn+(0) = +1

sgn+(0) = +1 on purpose: the median is an element of x, so every sample has at least one exact zero after
the shift; with torch.sign's sgn(0) = 0 the training model and the deployed model (whose sign bit gives
sgn(0) = +1) would differ on every sample. With sgn+ they compute the same function.

Backward (clipped straight-through estimator; med and alpha are statistics, treated as constants; the mean
restore is differentiated exactly)::

    d x_hat_i / d x_j = 1[i = j] * 1[|x_i - med| <= alpha] + 1/n       (n = elements per sample)

i.e. grad_x = g * 1[|x - med| <= alpha] + sum(g over the sample) / n.

Deployment: the median/alpha/mean are per sample, so they cannot be the constant ``shift``/``alpha`` inputs
of ``torch.ops.bvit.binary_linear``. A frozen layer computes x - med beside the op (float), calls the op
with shift 0, alpha 1 and no bias (acc * w_scale), then adds the restore terms beside it::

    y = (acc * w_scale) * alpha + mu * rowsum(W_hat) + bias,   rowsum(W_hat)[n] = w_scale[n] * rowsum(sgn W)[n]

which is W_hat (alpha * s + mu) + bias written out; the training model computes the same expression in the
same order (:func:`acd_linear_from_codes`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def sample_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(med, mu, alpha) of each sample, shaped [B, 1, ..., 1]; med and alpha detached, mu differentiable."""
    flat = x.reshape(x.shape[0], -1)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    # the lower median as the k-th smallest value, k = (n - 1) // 2 + 1: the same value as torch.median, but
    # through TopK, which the ONNX exporter translates (aten.median has no ONNX translation)
    n = flat.shape[1]
    med = torch.topk(flat.detach(), (n - 1) // 2 + 1, dim=1, largest=False, sorted=True).values[:, -1]
    mu = flat.mean(dim=1)
    alpha = (flat.detach() - med[:, None]).abs().mean(dim=1)
    return med.reshape(shape), mu.reshape(shape), alpha.reshape(shape)


class _ClippedSignPlus(torch.autograd.Function):
    """c = sgn+(x') ; dc/dx' = 1[|x'| <= alpha] / alpha (so d(alpha * c)/dx' = 1[|x'| <= alpha])."""

    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(xs, alpha)
        return torch.where(xs < 0, -torch.ones_like(xs), torch.ones_like(xs))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        xs, alpha = ctx.saved_tensors
        inside = (xs.abs() <= alpha).to(g.dtype)
        return g * inside / alpha.clamp_min(1e-12), None


def acd_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c, alpha, mu) with x_hat = alpha * c + mu, c in {-1, +1} (module docstring)."""
    med, mu, alpha = sample_stats(x)
    c = _ClippedSignPlus.apply(x - med, alpha)
    return c, alpha, mu


def acd_binarize(x: torch.Tensor) -> torch.Tensor:
    """x_hat = alpha * sgn+(x - med) + mu, per sample, with the clipped-STE backward."""
    c, alpha, mu = acd_codes(x)
    return alpha * c + mu


class ACDBinarizer(nn.Module):
    """Module wrapper of :func:`acd_binarize` (no parameters)."""

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return acd_codes(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return acd_binarize(x)


def acd_linear_from_codes(
    acc_scaled: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, row_sums: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """y = acc_scaled * alpha + mu * row_sums + bias, with acc_scaled = (codes @ sgn(W)^T) * w_scale.

    The training model and the frozen model (where acc_scaled comes from ``binary_linear`` with alpha 1) both
    call this, so they agree bit for bit."""
    y = acc_scaled * alpha + mu * row_sums
    return y if bias is None else y + bias


def acd_matmul_from_codes(
    dot: torch.Tensor,
    a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """(alpha_a c_a + mu_a) @ (alpha_b c_b + mu_b) from the integer dot c_a @ c_b, written out:

    alpha_a alpha_b (c_a c_b) + alpha_a mu_b rowsum(c_a) + mu_a alpha_b colsum(c_b) + mu_a mu_b K

    with a = (c_a [B,H,M,K], alpha_a, mu_a), b = (c_b [B,H,K,N], alpha_b, mu_b), statistics [B,1,1,1]."""
    ca, aa, ma = a
    cb, ab, mb = b
    k = ca.shape[-1]
    rows = ca.sum(dim=-1, keepdim=True)  # [B,H,M,1]
    cols = cb.sum(dim=-2, keepdim=True)  # [B,H,1,N]
    return (aa * ab) * dot + (aa * mb) * rows + (ma * ab) * cols + (ma * mb) * k


class ACDLinear(nn.Linear):
    """ACD-BiT binary linear: y = W_hat x_hat + bias with x_hat = alpha * sgn+(x - med) + mu (per sample) and
    W_hat = layer-wise BWN, computed as acc * m * alpha + mu * rowsum(W_hat) + bias (module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        from bvit_edge.quant.weights import BWNQuantizer

        self.wq = BWNQuantizer(per_row=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, alpha, mu = acd_codes(x)
        w_hat = self.wq(self.weight)
        m = self.wq.scales(self.weight)[:1].reshape(())
        wc = w_hat / m if float(m) > 0 else w_hat
        acc_scaled = F.linear(c, wc) * (torch.ones((), dtype=m.dtype) * m)
        row_sums = wc.sum(dim=1) * m
        return acd_linear_from_codes(acc_scaled, alpha, mu, row_sums, self.bias)

    @torch.no_grad()
    def frozen(self) -> nn.Module:
        from bvit_edge.quant.deploy import bwn_pack

        w_bits, w_scale = bwn_pack(self.weight, per_row=False)
        return FrozenACDLinear(w_bits, w_scale, None if self.bias is None else self.bias.detach(), self.in_features)

    def bit_widths(self) -> dict[str, int]:
        """Summary protocol: weight 1-bit, bias float."""
        return {"weight": 1, **({"bias": 32} if self.bias is not None else {})}


class FrozenACDLinear(nn.Module):
    """Deployed ACD-BiT linear: ``torch.ops.bvit.binary_linear`` on x - med (shift 0, alpha 1, no bias) and the
    per-sample restore terms beside it: y = op(x - med) * alpha + mu * row_sums + bias."""

    row_sums: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self, w_bits: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None, in_features: int
    ) -> None:
        super().__init__()
        from bvit_edge.quant.deploy import signed_weight_from_bits

        self.in_features = int(in_features)
        self.out_features = int(w_bits.shape[0])
        self.register_buffer("w_bits", w_bits.contiguous())
        self.register_buffer("w_scale", w_scale.float().contiguous())
        self.register_buffer("zero_shift", torch.zeros(in_features))
        self.register_buffer("one", torch.ones(()))
        # rowsum(W_hat)[n] = rowsum(sgn W)[n] * w_scale[n] (sgn(0) = +1 here as in the packed bits)
        rows = signed_weight_from_bits(w_bits, in_features).sum(dim=1)
        self.register_buffer("row_sums", rows * w_scale.float())
        self.register_buffer("bias", None if bias is None else bias.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        med, mu, alpha = sample_stats(x)
        acc_scaled = torch.ops.bvit.binary_linear(
            x - med, self.zero_shift, self.one, self.w_bits, self.w_scale, None, "signed", self.in_features
        )
        return acd_linear_from_codes(acc_scaled, alpha, mu, self.row_sums, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, acd"


__all__ = [
    "ACDBinarizer",
    "ACDLinear",
    "FrozenACDLinear",
    "acd_binarize",
    "acd_codes",
    "acd_linear_from_codes",
    "acd_matmul_from_codes",
    "sample_stats",
]
