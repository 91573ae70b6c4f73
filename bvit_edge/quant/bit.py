"""BiT's elastic binarizers (Liu et al., "BiT: Robustly Binarized Multi-distilled Transformer", NeurIPS 2022).

docs/methods.md "BiT". With x' = x - beta (beta a learnable per-channel shift, init 0) and a learnable scale
alpha > 0 (one scalar per tensor):

Signed (inputs of Q, K, V, O, FFN1; Q, K, V after the projection)::

    forward   x_hat = alpha * sgn(x')                     (sgn(0) = 0 in training, torch.sign)
    backward  d x_hat / d x     = 1[|x'| <= alpha]
              d x_hat / d beta  = -1[|x'| <= alpha]
              d x_hat / d alpha = sgn(x')                  (BiT keeps only this first term)

Unsigned (attention probabilities, post-GELU FFN2 inputs)::

    forward   x_hat = alpha * r(clip(x' / alpha, 0, 1))   = alpha * 1[x' > alpha / 2]
              (r rounds half to even, so r(0.5) = 0: the comparison form is the same function and it is
              the form the deployment op uses, so the frozen model reproduces it bit for bit)
    backward  d x_hat / d x     = 1[0 <= x' < alpha]
              d x_hat / d beta  = -1[0 <= x' < alpha]
              d x_hat / d alpha = 0                        if x' < 0
                                = r(x'/alpha) - x'/alpha   if 0 <= x' < alpha
                                = 1                        if x' >= alpha

Both are written as x_hat = alpha * c(x', alpha) where c is a code tensor (+-1/0 or 0/1) whose custom
gradient is the straight-through estimate of clip(x'/alpha, -1, 1) (signed: d c/d x' = 1[|x'|<=alpha]/alpha,
no alpha term) or of clip(x'/alpha, 0, 1) (unsigned: d c/d x' = 1[0<=x'<alpha]/alpha,
d c/d alpha = -x'/alpha^2 * 1[0<=x'<alpha]); with the product rule these give exactly the gradients above.
Layers multiply the codes with the binary weights first (an exact integer dot in float) and apply the scale
after, in the order of the deployment op ``torch.ops.bvit.binary_linear``: acc * (alpha * w_scale) + bias.

Two-bit activations (the W1A2 step of BiT's multi-distillation chain FP -> W1A2 -> W1A1; ``bits=2``): the
same elastic form with LSQ's levels, signed Qn, Qp = -2, 1 and unsigned Qn, Qp = 0, 3::

    forward   x_hat = alpha * c,  c = clamp(r(x' / alpha), Qn, Qp)
    backward  d c / d x'    = 1[Qn <= x'/alpha <= Qp] / alpha
              d c / d alpha = -x'/alpha^2 * 1[Qn <= x'/alpha <= Qp]
              (product rule: d x_hat / d alpha = c - x'/alpha inside, Qn or Qp outside: LSQ's step gradient)

initialised lazily to alpha = 2 mean|x'| / sqrt(Qp). Two-bit models train and teach; they have no 1-bit
deployment op, so freezing one is refused (train the W1A1 student from it and deploy that).

Initialisation: lazily from the first batch (as GSB): alpha = 2 mean|x'| (signed) or 4 mean|x'| (unsigned),
clamped to >= 1e-5; the ``initialized`` flag is a buffer, so it is saved with the checkpoint.

Gradient scale: :class:`ElasticBinarizer` multiplies alpha's gradient by 1/sqrt(numel(x)) (LSQ's step-size
gradient scale with Qp = 1, which BiT's LSQ-derived binarizers use and GSB keeps; docs/methods.md, "Shared pieces");
``alpha_grad_scale=False`` turns it off. The functional :func:`elastic_binarize` is the unscaled rule of §2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bvit_edge.contract import LINEAR_MODES
from bvit_edge.errors import ConfigError

ALPHA_MIN = 1e-5


class _SignCode(torch.autograd.Function):
    """c = sgn(x') ; dc/dx' = 1[|x'| <= alpha] / alpha ; no gradient to alpha (BiT's first-term rule)."""

    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(xs, alpha)
        return torch.sign(xs)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        xs, alpha = ctx.saved_tensors
        inside = (xs.abs() <= alpha).to(g.dtype)
        return g * inside / alpha, None


class _UnsignedCode(torch.autograd.Function):
    """c = 1[x' > alpha/2] (= r(clip(x'/alpha, 0, 1)));
    dc/dx' = 1[0 <= x' < alpha] / alpha ; dc/dalpha = -x'/alpha^2 * 1[0 <= x' < alpha]."""

    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(xs, alpha)
        return (xs > alpha / 2).to(xs.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs, alpha = ctx.saved_tensors
        inside = ((xs >= 0) & (xs < alpha)).to(g.dtype)
        gx = g * inside / alpha
        ga = -(g * inside * xs).sum() / (alpha * alpha)
        return gx, ga.reshape(alpha.shape)


class _LevelCode(torch.autograd.Function):
    """c = clamp(r(x'/alpha), qn, qp); dc/dx' = 1[qn <= x'/alpha <= qp] / alpha;
    dc/dalpha = -x'/alpha^2 * 1[qn <= x'/alpha <= qp]."""

    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, alpha: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
        ctx.save_for_backward(xs, alpha)
        ctx.q = (qn, qp)
        return torch.clamp(torch.round(xs / alpha), qn, qp)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        xs, alpha = ctx.saved_tensors
        qn, qp = ctx.q
        q = xs / alpha
        inside = ((q >= qn) & (q <= qp)).to(g.dtype)
        gx = g * inside / alpha
        ga = -(g * inside * xs).sum() / (alpha * alpha)
        return gx, ga.reshape(alpha.shape), None, None


LEVELS = {("signed", 2): (-2, 1), ("unsigned", 2): (0, 3)}


def level_code(xs: torch.Tensor, alpha: torch.Tensor, mode: str, bits: int) -> torch.Tensor:
    """Multi-level code of x' (``bits`` = 2): integers in [Qn, Qp] (module docstring)."""
    qn, qp = LEVELS[(mode, bits)]
    return _LevelCode.apply(xs, alpha, qn, qp)


def scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """Forward: t unchanged (exactly); backward: the gradient times ``factor``."""
    scaled = t * factor
    return scaled - scaled.detach() + t.detach()


def sign_code(xs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Signed code of x' (see the module docstring): values in {-1, 0, +1}."""
    return _SignCode.apply(xs, alpha)


def unsigned_code(xs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Unsigned code of x': values in {0, 1}."""
    return _UnsignedCode.apply(xs, alpha)


def elastic_binarize(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | float, mode: str) -> torch.Tensor:
    """BiT's elastic binarizer x_hat (mode "signed" or "unsigned"), with the gradients of the module docstring."""
    xs = x - beta
    if mode == "signed":
        return alpha * sign_code(xs, alpha)
    if mode == "unsigned":
        return alpha * unsigned_code(xs, alpha)
    raise ConfigError(f"Unknown binarizer mode {mode!r}; use 'signed' or 'unsigned'.")


class ElasticBinarizer(nn.Module):
    """A BiT elastic binarizer with a learnable scalar alpha and a learnable shift beta (init 0).

    ``beta_shape`` is the shape of beta (broadcast against the input: ``(d_in,)`` for a linear layer's input,
    ``(H, 1, d_h)`` for Q/K/V laid out [B, H, N, d_h], ``(H, 1, 1)`` for attention probabilities), or ``None``
    for no shift. ``init_value`` fixes alpha's initial value instead of the lazy data initialisation.

    ``alpha_grad_scale``: alpha's gradient times 1/sqrt(numel(x)) (module docstring).

    ``codes(x)`` returns (c, alpha) with x_hat = alpha * c, so a layer can do its integer-exact product on the
    codes first; ``forward(x)`` returns x_hat.
    """

    initialized: torch.Tensor

    def __init__(
        self,
        mode: str = "signed",
        beta_shape: Sequence[int] | None = None,
        init_value: float | None = None,
        alpha_grad_scale: bool = True,
        bits: int = 1,
    ) -> None:
        super().__init__()
        self.alpha_grad_scale = alpha_grad_scale
        if mode not in LINEAR_MODES:
            raise ConfigError(f"Unknown binarizer mode {mode!r}; use 'signed' or 'unsigned'.")
        if bits not in (1, 2):
            raise ConfigError(
                f"BiT activations are 1 or 2 bits (the W1A1 student or the W1A2 step of its "
                f"distillation chain), got act_bits={bits}."
            )
        self.mode = mode
        self.bits = int(bits)
        self.alpha = nn.Parameter(torch.tensor(1.0 if init_value is None else float(init_value)))
        self.beta = nn.Parameter(torch.zeros(*beta_shape)) if beta_shape is not None else None
        self.register_buffer("initialized", torch.tensor(init_value is not None))

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """x' = x - beta."""
        return x if self.beta is None else x - self.beta

    @torch.no_grad()
    def _lazy_init(self, xs: torch.Tensor) -> None:
        if self.bits == 1:
            factor = 2.0 if self.mode == "signed" else 4.0
        else:
            factor = 2.0 / math.sqrt(LEVELS[(self.mode, self.bits)][1])
        self.alpha.copy_((factor * xs.detach().abs().mean()).clamp_min(ALPHA_MIN))
        self.initialized.fill_(True)

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, alpha): the code tensor and the (clamped) scale, x_hat = alpha * c."""
        xs = self.shifted(x)
        if not bool(self.initialized):
            self._lazy_init(xs)
        alpha: torch.Tensor = self.alpha
        if self.alpha_grad_scale and alpha.requires_grad:
            alpha = scale_grad(alpha, 1.0 / math.sqrt(xs.numel()))
        alpha = alpha.clamp_min(ALPHA_MIN)
        if self.bits > 1:
            return level_code(xs, alpha, self.mode, self.bits), alpha
        c = sign_code(xs, alpha) if self.mode == "signed" else unsigned_code(xs, alpha)
        return c, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, alpha = self.codes(x)
        return alpha * c

    def _check_deployable(self) -> None:
        if self.bits != 1:
            raise ConfigError(
                f"This BiT model has {self.bits}-bit activations (the W1A2 step of the distillation chain); the "
                "bvit_edge deployment ops are 1-bit. Train the W1A1 student from it (bvit-edge train --method bit "
                "--teacher THIS_RUN) and freeze/export that one."
            )

    def deploy_shift(self) -> torch.Tensor:
        """The deployment op's ``shift`` (= -beta), float32, detached (a 0-dim zero without beta)."""
        self._check_deployable()
        if self.beta is None:
            return torch.zeros(())
        return (-self.beta.detach()).float().clone()

    def deploy_alpha(self) -> torch.Tensor:
        """The deployment op's alpha: a 0-dim float32 tensor (reshape to [1] for binary_matmul)."""
        return self.alpha.detach().clamp_min(ALPHA_MIN).float().clone()

    def extra_repr(self) -> str:
        return f"mode={self.mode}, bits={self.bits}, beta={None if self.beta is None else tuple(self.beta.shape)}"


def codes_matmul(ca: torch.Tensor, cb: torch.Tensor, alpha_a: torch.Tensor, alpha_b: torch.Tensor) -> torch.Tensor:
    """(alpha_a * c_a) @ (alpha_b * c_b) computed as (alpha_a * alpha_b) * (c_a @ c_b): the integer dot first,
    in the order of ``torch.ops.bvit.binary_matmul`` for plain modes."""
    return (alpha_a * alpha_b) * (ca @ cb)


def codes_linear(
    c: torch.Tensor, w_codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """acc * scale + bias with acc = c @ w_codes^T (exact integers in float): the order of
    ``torch.ops.bvit.binary_linear`` (scale = alpha * w_scale computed first by the caller)."""
    out = F.linear(c, w_codes) * scale
    return out if bias is None else out + bias


class BiTLinear(nn.Linear):
    """A BiT binary linear layer: y = W_hat x_hat + bias with W_hat = BWN(W) (layer-wise m) and
    x_hat = ElasticBinarizer(mode)(x) (beta per input channel).

    Computed as acc * (alpha * m) + bias with acc = c @ sgn(W - mean W)^T, the order of the deployment op.
    ``frozen()`` returns the deployment module (:class:`bvit_edge.quant.deploy.FrozenBinaryLinear`) that
    the student's ``freeze()`` puts in its place.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, mode: str = "signed", act_bits: int = 1
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        from bvit_edge.quant.weights import BWNQuantizer

        self.act = ElasticBinarizer(mode, beta_shape=(in_features,), bits=act_bits)
        self.wq = BWNQuantizer(per_row=False)

    @classmethod
    def from_linear(cls, lin: nn.Linear, mode: str = "signed") -> BiTLinear:
        """A BiTLinear holding a copy of ``lin``'s weight and bias (teacher initialisation)."""
        new = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, mode=mode)
        with torch.no_grad():
            new.weight.copy_(lin.weight)
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        return new

    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sgn(W - mean W) with BWN's identity gradient to W, m detached): W_hat = m * codes."""
        w_hat = self.wq(self.weight)
        m = self.wq.scales(self.weight)[:1].reshape(())
        return w_hat / m, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, alpha = self.act.codes(x)
        wc, m = self.weight_codes()
        return codes_linear(c, wc, alpha * m, self.bias)

    @torch.no_grad()
    def frozen(self) -> nn.Module:
        """The deployment module: sign bits + scales computed once, ``torch.ops.bvit.binary_linear`` with
        shift = -beta, alpha = alpha, w_scale = m (repeated per row)."""
        from bvit_edge.quant.deploy import FrozenBinaryLinear, bwn_pack

        self.act._check_deployable()
        w_bits, w_scale = bwn_pack(self.weight, per_row=False)
        bias = None if self.bias is None else self.bias.detach()
        shift, alpha = self.act.deploy_shift(), self.act.deploy_alpha()
        return FrozenBinaryLinear(w_bits, w_scale, shift, alpha, bias, self.act.mode, self.in_features)

    def bit_widths(self) -> dict[str, int]:
        """Precision of each parameter, for :func:`bvit_edge.summary.summary` (the summary protocol)."""
        out = {"weight": 1, "act.alpha": 32, "act.beta": 32}  # activations: self.act.bits
        if self.bias is not None:
            out["bias"] = 32
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.act.mode}"


__all__ = [
    "ALPHA_MIN",
    "BiTLinear",
    "ElasticBinarizer",
    "codes_linear",
    "codes_matmul",
    "elastic_binarize",
    "level_code",
    "scale_grad",
    "sign_code",
    "unsigned_code",
]
