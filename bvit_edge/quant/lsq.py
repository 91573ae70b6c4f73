"""8-bit quantizers of GSB's non-binary parts (docs/methods.md, "The 8-bit parts"): the patch embedding's conv weights
(LSQ, per output channel) and the two classifier heads (W8A8, per tensor, "elastic" LSQ-style step sizes).

Symmetric n-bit LSQ (Esser et al. 2020), Qn = -2^(n-1), Qp = 2^(n-1) - 1 (-128, 127 for 8 bits),
step s > 0 (per channel or per tensor), q = x / s:

    forward   x_hat = s * clamp(r(q), Qn, Qp)          (= s * r(clamp(q, Qn, Qp)); r = round half to even)
    backward  dx_hat/dx = 1[Qn <= q <= Qp]
              dx_hat/ds = Qn if q < Qn;  Qp if q > Qp;  r(q) - q otherwise
              and the gradient of s is multiplied by g = 1 / sqrt(numel * Qp)  (numel per step size for the
              weights as the official code: the whole weight tensor)

Initialisation (lazy, on the first forward in any mode, recorded in a stored flag): s = 2 mean|x| / sqrt(Qp),
one value copied to every channel for the per-channel patch-embedding weights. The official patch embedding
initialises only in training mode; bvit-edge also does it in eval so an untrained model is well defined.
Deployment: int8 codes clamp(r(x / s), -128, 127) and the scales s (``bvit_edge.quant.deploy``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bvit_edge.quant.gsb import ALPHA_MIN, LearnableShift, grad_scale, ranks_mean


class LSQFn(torch.autograd.Function):
    """x_hat = s clamp(r(x/s), qn, qp) with LSQ's gradients; ``s`` broadcastable to ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
        ctx.save_for_backward(x, s)
        ctx.q = (qn, qp)
        return torch.clamp(torch.round(x / s), qn, qp) * s

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, s = ctx.saved_tensors
        qn, qp = ctx.q
        q = x / s
        small, big = q < qn, q > qp
        middle = (~small & ~big).to(g.dtype)
        d_s = small.to(g.dtype) * qn + big.to(g.dtype) * qp + middle * (torch.round(q) - q)
        grad_s = (g * d_s).sum_to_size(s.shape)
        return g * middle, grad_s, None, None


def lsq_quantize(x: torch.Tensor, s: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric ``bits``-bit LSQ fake quantization of ``x`` with step ``s`` (see the module docstring)."""
    qp = 2 ** (bits - 1) - 1
    return LSQFn.apply(x, s, -(2 ** (bits - 1)), qp)


class LSQConv2d(nn.Conv2d):
    """Conv2d with 8-bit LSQ weights, one step size per output channel (``alpha`` [C_out]); float input.

    State: ``weight``, ``bias``, ``alpha`` [C_out], ``init_state`` [1] (1 once initialised), the official
    checkpoint's names for its patch embedding.
    """

    init_state: torch.Tensor

    def __init__(self, *args, bits: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bits = bits
        self.alpha = nn.Parameter(torch.ones(self.out_channels))
        self.register_buffer("init_state", torch.zeros(1))

    @property
    def qp(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def step(self) -> torch.Tensor:
        """The step sizes as the forward uses them, [C_out, 1, 1, 1] (gradient-scaled, clamped >= 1e-5)."""
        if float(self.init_state) == 0:
            with torch.no_grad():
                self.alpha.fill_(float(2 * self.weight.detach().abs().mean() / math.sqrt(self.qp)))
                self.init_state.fill_(1)
        g = 1.0 / math.sqrt(self.weight.numel() * self.qp)
        return torch.clamp(grad_scale(self.alpha, g), min=ALPHA_MIN).reshape(-1, 1, 1, 1)

    def quantized_weight(self) -> torch.Tensor:
        return lsq_quantize(self.weight, self.step(), self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.quantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def int8_codes_and_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Deployment form: (int8 codes [C_out, C_in, kh, kw], float32 scales [C_out])."""
        with torch.no_grad():
            s = self.step().detach().float()
            codes = torch.clamp(torch.round(self.weight.detach().float() / s), -128, 127).to(torch.int8)
            return codes, s.reshape(-1).clone()


class ElasticIntQuantizer(nn.Module):
    """Per-tensor symmetric n-bit quantizer with a learnable 0-dim step ``alpha`` and a stored ``initialized``
    flag (GSB's 8-bit heads: ``weight_clip_val`` and ``input_clip_val`` of the official code)."""

    initialized: torch.Tensor

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        self.bits = bits
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def qp(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            with torch.no_grad():
                init = 2 * x.detach().abs().mean() / math.sqrt(self.qp)
                if self.training:
                    init = ranks_mean(init)
                self.alpha.copy_(torch.clamp(init, min=ALPHA_MIN))
                self.initialized.fill_(True)
        return torch.clamp(grad_scale(self.alpha, 1.0 / math.sqrt(x.numel() * self.qp)), min=ALPHA_MIN)

    def deploy_step(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.clamp(self.alpha.detach(), min=ALPHA_MIN).float().reshape(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lsq_quantize(x, self.step(x), self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class W8A8Linear(nn.Linear):
    """Linear with 8-bit per-tensor weights and 8-bit inputs: y = Q8(x + move) @ Q8(W)^T + b (GSB's heads).

    State: ``weight``, ``bias``, ``move.bias`` [in], ``weight_quant.{alpha, initialized}``,
    ``input_quant.{alpha, initialized}``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 8) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.move = LearnableShift(in_features)
        self.weight_quant = ElasticIntQuantizer(bits)
        self.input_quant = ElasticIntQuantizer(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_quant(self.weight)
        return F.linear(self.input_quant(self.move(x)), w, self.bias)

    def frozen(self) -> nn.Module:
        """The deployment module (int8 weight codes + scales, input quantize-dequantize)."""
        from bvit_edge.quant.deploy import FrozenInt8Linear, quantize_int8

        self.weight_quant.step(self.weight)  # initialise if it never ran
        s_w = self.weight_quant.deploy_step()
        codes = quantize_int8(self.weight, s_w)
        return FrozenInt8Linear(codes, s_w, self.bias, shift=self.move.bias, a_scale=self.input_quant.deploy_step())


__all__ = ["ElasticIntQuantizer", "LSQConv2d", "LSQFn", "W8A8Linear", "lsq_quantize"]
