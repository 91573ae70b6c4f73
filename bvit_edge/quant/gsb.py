"""GSB input binarizers (Gao et al., "GSB: Group Superposition Binarization for Vision Transformer with
Limited Training Samples", Neural Networks 2024, arXiv 2305.07931), docs/methods.md "GSB".

Notation: x' = the (already shifted) input, alpha > 0 a learnable scale, sgn = torch.sign (sgn(0) = 0 in
training), r = round half to even, 1[.] the indicator, g the upstream gradient.

Signed (qkv/proj/fc1 inputs, q, k):
    forward   x_hat = alpha * sgn(x')
    backward  dx_hat/dx'    = 1[|x'| <= alpha]
              dx_hat/dalpha = sgn(x') - (x'/alpha) 1[|x'| <= alpha]     (GSB's corrected gradient)
                            = sgn(x')                                   (corrected=False: BiT's first term)
Unsigned (fc2 input after GELU):
    forward   x_hat = alpha * clip(r(x'/alpha), 0, 1)
    backward  dx_hat/dx'    = 1[0 <= x' <= alpha]
              dx_hat/dalpha = 1[x' > alpha] + 1[0 <= x' <= alpha] (r(x'/alpha) - x'/alpha)   (same in BiT)
Value, three groups (u1 = v', u2 = v' M1, u3 = v' M2; M_j = [v' > r_j max v'] or [v' < r_j min v']):
    forward   v_hat = a1 sgn(u1) + a2 sgn(u2) + a3 sgn(u3)
    backward  dv_hat/dv' = sum_k 1[|u_k| <= a_k];  dv_hat/da_k = sgn(u_k) - (u_k/a_k) 1[|u_k| <= a_k]
              (corrected=False: dv_hat/da_k = sgn(u_k))
Attention probabilities, three groups (M_j = [A > r_j max A]):
    forward   A_hat = a1 clip(r(A/a1), 0, 1) + a2 M1 + a3 M2
    backward  dA_hat/dA = 1[0 <= A <= a1] + a2 M1 + a3 M2;  d/da1 = the unsigned rule; d/da2 = M1; d/da3 = M2

Every alpha's gradient is multiplied by 1/sqrt(numel) (a2, a3: 1/sqrt(|M1|), 1/sqrt(|M2|)) and every alpha is
clamped to >= 1e-5 before use. Masks are not differentiated through.

Lazy data initialisation on the first forward (in any mode), recorded in a stored ``initialized`` buffer:
signed alpha = 2 mean|x'|; unsigned alpha = 4 mean|x'|; Value a1 = 2 mean|v'| over not-M1, a2 = 2 mean|v'|
over M1 minus M2, a3 = 2 mean|v'| over M2; attention a1 = 4 mean A, a2 = 4 mean(A on M1 minus M2),
a3 = 4 mean(A on M2).

Two deliberate departures from the official code (docs/methods.md "GSB"):
- max/min for the masks are taken per sample (over that sample's heads and tokens), in training and in
  deployment alike, so a prediction never depends on the other images in the batch;
- the ``initialized`` flag is a saved buffer, and a2/a3 are initialised as stated above (the official residual
  initialisation only touched a local variable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from bvit_edge.quant.deploy import DEFAULT_GSB_RATIOS, gsb_signed_masks, gsb_unsigned_masks

ALPHA_MIN = 1e-5


class _GradScaleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g * ctx.scale, None


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward (bit-exact, unlike the ``(x - x*s).detach() + x*s`` trick); backward multiplies the
    gradient by ``scale`` (LSQ's gradient scaling)."""
    return _GradScaleFn.apply(x, scale)


def effective_alpha(alpha: torch.Tensor, scale: float) -> torch.Tensor:
    """alpha as the forward uses it: gradient-scaled by ``scale`` and clamped to >= 1e-5."""
    return torch.clamp(grad_scale(alpha, scale), min=ALPHA_MIN)


# ---------------------------------------------------------------------------------------------------------
# autograd functions
# ---------------------------------------------------------------------------------------------------------


class SignedBinarizeFn(torch.autograd.Function):
    """x_hat = alpha sgn(x); see the module docstring for the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, corrected: bool) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        ctx.corrected = corrected
        return alpha * torch.sign(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, alpha = ctx.saved_tensors
        inside = (x.abs() <= alpha).to(g.dtype)
        d_alpha = torch.sign(x)
        if ctx.corrected:
            d_alpha = d_alpha - (x / alpha) * inside
        return g * inside, (g * d_alpha).sum().reshape(alpha.shape), None


class UnsignedBinarizeFn(torch.autograd.Function):
    """x_hat = alpha clip(r(x/alpha), 0, 1); see the module docstring for the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        return alpha * torch.clamp(torch.round(x / alpha), 0, 1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, alpha = ctx.saved_tensors
        q = x / alpha
        inside = ((x >= 0) & (x <= alpha)).to(g.dtype)
        d_alpha = (x > alpha).to(g.dtype) + inside * (torch.round(q) - q)
        return g * inside, (g * d_alpha).sum().reshape(alpha.shape)


class ValueGroupBinarizeFn(torch.autograd.Function):
    """v_hat = a1 sgn(v) + a2 sgn(v M1) + a3 sgn(v M2); see the module docstring for the gradients."""

    @staticmethod
    def forward(ctx, v, a1, a2, a3, m1, m2, corrected: bool):
        u2, u3 = v * m1, v * m2
        ctx.save_for_backward(v, u2, u3, a1, a2, a3)
        ctx.corrected = corrected
        return a1 * torch.sign(v) + a2 * torch.sign(u2) + a3 * torch.sign(u3)

    @staticmethod
    def backward(ctx, g):
        v, u2, u3, a1, a2, a3 = ctx.saved_tensors
        grad_v = torch.zeros_like(g)
        grads = []
        for u, a in ((v, a1), (u2, a2), (u3, a3)):
            inside = (u.abs() <= a).to(g.dtype)
            grad_v = grad_v + g * inside
            d_a = torch.sign(u)
            if ctx.corrected:
                d_a = d_a - (u / a) * inside
            grads.append((g * d_a).sum().reshape(a.shape))
        return grad_v, grads[0], grads[1], grads[2], None, None, None


class AttentionGroupBinarizeFn(torch.autograd.Function):
    """A_hat = a1 clip(r(A/a1), 0, 1) + a2 M1 + a3 M2; see the module docstring for the gradients."""

    @staticmethod
    def forward(ctx, a, a1, a2, a3, m1, m2):
        ctx.save_for_backward(a, a1, a2, a3, m1, m2)
        return a1 * torch.clamp(torch.round(a / a1), 0, 1) + a2 * m1 + a3 * m2

    @staticmethod
    def backward(ctx, g):
        a, a1, a2, a3, m1, m2 = ctx.saved_tensors
        q = a / a1
        inside = ((a >= 0) & (a <= a1)).to(g.dtype)
        grad_a = g * (inside + a2 * m1 + a3 * m2)
        d_a1 = (a > a1).to(g.dtype) + inside * (torch.round(q) - q)
        return (
            grad_a,
            (g * d_a1).sum().reshape(a1.shape),
            (g * m1).sum().reshape(a2.shape),
            (g * m2).sum().reshape(a3.shape),
            None,
            None,
        )


# ---------------------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------------------


def ranks_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over torch.distributed ranks (``t`` itself without a process group). Lazy
    initialisation runs on each rank's own first batch; averaging keeps DDP replicas identical."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.detach().clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


class _ProductWithValueFn(torch.autograd.Function):
    """Forward: a precomputed ``value`` equal (as real numbers) to x @ y; backward: matmul's gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        return value.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, y = ctx.saved_tensors
        gx = (g @ y.transpose(-2, -1)).sum_to_size(x.shape)
        gy = (x.transpose(-2, -1) @ g).sum_to_size(y.shape)
        return gx, gy, None


def product_with_value(x: torch.Tensor, y: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """x @ y whose forward value is ``value`` (the same product computed as the deployment ops do: exact
    integer dots times scales), and whose gradients are those of x @ y. Keeps the eval outputs of a training
    model bit-identical to its frozen form (sgn(0) aside)."""
    return _ProductWithValueFn.apply(x, y, value)


def plane_product(
    pa: Sequence[torch.Tensor], aa: torch.Tensor, pb: Sequence[torch.Tensor], ba: torch.Tensor
) -> torch.Tensor:
    """sum_i sum_j (aa_i * ba_j) * (pa_i @ pb_j), i outer, j inner, in float32: the order of
    ``torch.ops.bvit.binary_matmul``."""
    out: torch.Tensor | None = None
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            term = (aa[i] * ba[j]) * torch.matmul(p, q)
            out = term if out is None else out + term
    assert out is not None
    return out


def _mean_or(x: torch.Tensor, mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    return (x * mask).sum() / n if int(n) > 0 else fallback


class _LazyAlphas(nn.Module):
    """Holds learnable 0-dim alphas (init 1.0) and the stored ``initialized`` flag."""

    initialized: torch.Tensor

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self._alpha_names = tuple(names)
        for n in names:
            setattr(self, n, nn.Parameter(torch.tensor(1.0)))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def is_initialized(self) -> bool:
        return bool(self.initialized)

    def _set(self, values: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            stacked = torch.stack([v.detach().reshape(()).float() for v in values])
            if self.training:  # under DDP every rank trains, so every rank reaches this point
                stacked = ranks_mean(stacked)
            for n, v in zip(self._alpha_names, stacked, strict=True):
                getattr(self, n).copy_(torch.clamp(v, min=ALPHA_MIN))
            self.initialized.fill_(True)

    def deploy_alphas(self) -> torch.Tensor:
        """The clamped alphas the forward uses, as float32 [len(names)] (no grad)."""
        with torch.no_grad():
            return torch.stack(
                [torch.clamp(getattr(self, n).detach(), min=ALPHA_MIN) for n in self._alpha_names]
            ).float()


class SignedBinarizer(_LazyAlphas):
    """alpha * sgn(x') with GSB's corrected gradients (``corrected=False``: BiT's alpha gradient sgn(x'))."""

    alpha: nn.Parameter

    def __init__(self, corrected: bool = True) -> None:
        super().__init__(["alpha"])
        self.corrected = corrected

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_initialized:
            self._set([2 * x.detach().abs().mean()])
        alpha = effective_alpha(self.alpha, 1.0 / math.sqrt(x.numel()))
        return SignedBinarizeFn.apply(x, alpha, self.corrected)

    def codes(self, x_hat: torch.Tensor) -> torch.Tensor:
        """The codes sgn(x') in {-1, 0, +1} of an output ``x_hat`` (exact: x_hat / alpha, no grad)."""
        return x_hat.detach() / self.deploy_alphas()[0]

    def extra_repr(self) -> str:
        return f"corrected={self.corrected}"


class UnsignedBinarizer(_LazyAlphas):
    """alpha * clip(r(x'/alpha), 0, 1) = alpha * [x' > alpha/2], with the unsigned gradients."""

    alpha: nn.Parameter

    def __init__(self) -> None:
        super().__init__(["alpha"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_initialized:
            self._set([4 * x.detach().abs().mean()])
        alpha = effective_alpha(self.alpha, 1.0 / math.sqrt(x.numel()))
        return UnsignedBinarizeFn.apply(x, alpha)

    def codes(self, x_hat: torch.Tensor) -> torch.Tensor:
        """The codes [x' > alpha/2] in {0, 1} of an output ``x_hat`` (exact: x_hat / alpha, no grad)."""
        return x_hat.detach() / self.deploy_alphas()[0]


class ValueGroupBinarizer(_LazyAlphas):
    """Group superposition of the Value: a1 sgn(v') + a2 sgn(v' M1) + a3 sgn(v' M2), masks per sample."""

    alpha1: nn.Parameter
    alpha2: nn.Parameter
    alpha3: nn.Parameter

    def __init__(self, ratios: Sequence[float] = DEFAULT_GSB_RATIOS, corrected: bool = True) -> None:
        super().__init__(["alpha1", "alpha2", "alpha3"])
        self.ratios = tuple(float(r) for r in ratios)
        self.corrected = corrected

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        m1b, m2b = gsb_signed_masks(v.detach(), self.ratios)
        m1, m2 = m1b.to(v.dtype), m2b.to(v.dtype)
        if not self.is_initialized:
            av = v.detach().abs()
            a1 = 2 * _mean_or(av, 1 - m1, av.mean())
            a2 = 2 * _mean_or(av, m1 - m2, a1 / 2)  # an empty group falls back to a1
            a3 = 2 * _mean_or(av, m2, a1 / 2)
            self._set([a1, a2, a3])
        n1, n2 = max(float(m1.sum()), 1.0), max(float(m2.sum()), 1.0)
        a1 = effective_alpha(self.alpha1, 1.0 / math.sqrt(v.numel()))
        a2 = effective_alpha(self.alpha2, 1.0 / math.sqrt(n1))
        a3 = effective_alpha(self.alpha3, 1.0 / math.sqrt(n2))
        return ValueGroupBinarizeFn.apply(v, a1, a2, a3, m1, m2, self.corrected)

    def planes(self, v: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """([sgn(v'), sgn(v' M1), sgn(v' M2)], alphas [3]) of an input v' (no grad; sgn(0) = 0)."""
        with torch.no_grad():
            m1, m2 = gsb_signed_masks(v, self.ratios)
            s = torch.sign(v)
            return [s, s * m1.to(v.dtype), s * m2.to(v.dtype)], self.deploy_alphas()

    def extra_repr(self) -> str:
        return f"ratios={self.ratios}, corrected={self.corrected}"


class AttentionGroupBinarizer(_LazyAlphas):
    """Group superposition of attention probabilities: a1 [A > a1/2] + a2 M1 + a3 M2, masks per sample."""

    alpha1: nn.Parameter
    alpha2: nn.Parameter
    alpha3: nn.Parameter

    def __init__(self, ratios: Sequence[float] = DEFAULT_GSB_RATIOS) -> None:
        super().__init__(["alpha1", "alpha2", "alpha3"])
        self.ratios = tuple(float(r) for r in ratios)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        m1b, m2b = gsb_unsigned_masks(a.detach(), self.ratios)
        m1, m2 = m1b.to(a.dtype), m2b.to(a.dtype)
        if not self.is_initialized:
            ad = a.detach()
            a1 = 4 * ad.mean()
            a2 = 4 * _mean_or(ad, m1 - m2, a1 / 4)
            a3 = 4 * _mean_or(ad, m2, a1 / 4)
            self._set([a1, a2, a3])
        n1, n2 = max(float(m1.sum()), 1.0), max(float(m2.sum()), 1.0)
        a1 = effective_alpha(self.alpha1, 1.0 / math.sqrt(a.numel()))
        a2 = effective_alpha(self.alpha2, 1.0 / math.sqrt(n1))
        a3 = effective_alpha(self.alpha3, 1.0 / math.sqrt(n2))
        return AttentionGroupBinarizeFn.apply(a, a1, a2, a3, m1, m2)

    def planes(self, a: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """([clip(r(A/a1), 0, 1), M1, M2], alphas [3]) of an input A (no grad)."""
        with torch.no_grad():
            alphas = self.deploy_alphas()
            m1, m2 = gsb_unsigned_masks(a, self.ratios)
            p1 = torch.clamp(torch.round(a / alphas[0]), 0, 1)
            return [p1, m1.to(a.dtype), m2.to(a.dtype)], alphas

    def extra_repr(self) -> str:
        return f"ratios={self.ratios}"


class LearnableShift(nn.Module):
    """x + b with a learnable ``bias`` of the given shape (init 0): GSB's input shifts ("move")."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias

    def extra_repr(self) -> str:
        return f"shape={tuple(self.bias.shape)}"


__all__ = [
    "ALPHA_MIN",
    "AttentionGroupBinarizeFn",
    "AttentionGroupBinarizer",
    "LearnableShift",
    "SignedBinarizeFn",
    "SignedBinarizer",
    "UnsignedBinarizeFn",
    "UnsignedBinarizer",
    "ValueGroupBinarizeFn",
    "ValueGroupBinarizer",
    "effective_alpha",
    "grad_scale",
    "plane_product",
    "product_with_value",
    "ranks_mean",
]
