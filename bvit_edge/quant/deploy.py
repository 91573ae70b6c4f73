"""Deployment mode: the PyTorch custom ops of the ``bvit_edge`` op contract (:mod:`bvit_edge.contract`,
docs/ops/), their reference
forward in torch, and the helpers that turn trained float parameters into their deployment form.

Ops (``torch.library.custom_op``, namespace ``bvit``; each has a ``register_fake`` giving its output shape):

``torch.ops.bvit.binary_linear(x, shift, alpha, w_bits, w_scale, bias, mode, in_features)``
    x' = x + shift; signed: a = sgn(x') with sgn(0) = +1; unsigned: a = [x' > alpha/2] in {0, 1}.
    acc[..., n] = sum_k a[..., k] * W[n, k]   (W[n, k] = -1 where bit 1, +1 where bit 0; pads ignored)
    Y = acc * (alpha * w_scale[n]) + bias[n]   (s = alpha * w_scale in f32 first, then acc * s, then + bias)

``torch.ops.bvit.binary_matmul(a, b, a_shift, a_alpha, b_shift, b_alpha, a_mode, b_mode, gsb_ratios)``
    a' = a + a_shift [B, H, M, K], b' = b + b_shift [B, H, K, N]; each operand becomes planes P_i with
    scales alpha_i (plain modes: one plane; gsb modes: three, docs/methods.md "GSB", max/min per sample):
      signed:       P_1 = sgn(a')                        (sgn(0) = +1)
      unsigned:     P_1 = [a' > alpha_1 / 2]
      gsb_unsigned: P_1 = [a' > alpha_1 / 2], P_2 = M1 = [a' > r1 max a'], P_3 = M2 = [a' > r2 max a']
      gsb_signed:   P_1 = sgn(b'), P_2 = sgn(b') * M1, P_3 = sgn(b') * M2,
                    M_j = [b' > r_j max b'] or [b' < r_j min b']
    out = sum_i sum_j (alpha_i * beta_j) * (P_i @ Q_j)   (i outer, j inner, accumulated in f32)

``torch.ops.bvit.dequantize_int8(w, scale, axis)`` = w * scale (per channel along ``axis`` or per tensor).

``torch.ops.bvit.quantize_dequantize_int8(x, scale)`` = clamp(round_half_even(x / scale), -128, 127) * scale.

Every integer dot is computed here as a float32 matmul of values in {-1, 0, +1}: all partial sums are
integers of magnitude <= K < 2^24, hence exact whatever the summation order. The same helpers
(:func:`gsb_unsigned_masks`, :func:`gsb_signed_masks`) compute the masks in training and in deployment, so the
two agree bit for bit: the threshold is ``max * r`` evaluated in float32 (r rounded to float32).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.library import custom_op

from bvit_edge import packing
from bvit_edge.contract import DEFAULT_GSB_RATIOS, LINEAR_MODES, ContractError, check_mode
from bvit_edge.contract import MATMUL_A_MODES as A_MODES
from bvit_edge.contract import MATMUL_B_MODES as B_MODES

# ---------------------------------------------------------------------------------------------------------
# Shared helpers (training and deployment use the same ones)
# ---------------------------------------------------------------------------------------------------------


def per_sample_max(x: torch.Tensor) -> torch.Tensor:
    """max over every axis but the first, kept broadcastable: [B, 1, ..., 1]."""
    return x.amax(dim=tuple(range(1, x.ndim)), keepdim=True)


def per_sample_min(x: torch.Tensor) -> torch.Tensor:
    """min over every axis but the first, kept broadcastable: [B, 1, ..., 1]."""
    return x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)


def gsb_unsigned_masks(
    a: torch.Tensor, ratios: Sequence[float] = DEFAULT_GSB_RATIOS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention masks M_j = [a > r_j * max a], max per sample. Boolean, shape of ``a``."""
    mx = per_sample_max(a)
    return a > mx * float(ratios[0]), a > mx * float(ratios[1])


def gsb_signed_masks(
    v: torch.Tensor, ratios: Sequence[float] = DEFAULT_GSB_RATIOS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Value masks M_j = [v > r_j max v] or [v < r_j min v], max/min per sample. Boolean, shape of ``v``."""
    mx, mn = per_sample_max(v), per_sample_min(v)
    r1, r2 = float(ratios[0]), float(ratios[1])
    return (v > mx * r1) | (v < mn * r1), (v > mx * r2) | (v < mn * r2)


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """Deployment sign: -1 where x < 0, +1 elsewhere (sgn(0) = +1), float32."""
    return torch.where(x < 0, -1.0, 1.0).to(torch.float32)


def unpack_bits_torch(bits: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [..., Kp/8] -> bool [..., K]: element k is bit k % 8 of byte k // 8 (the packing contract)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    unpacked = (bits.unsqueeze(-1) >> shifts) & 1
    return unpacked.reshape(*bits.shape[:-1], bits.shape[-1] * 8)[..., :k].bool()


def signed_weight_from_bits(w_bits: torch.Tensor, in_features: int) -> torch.Tensor:
    """Packed signed weight bits [N, Kp/8] -> float32 [N, K] in {-1, +1} (bit 1 = -1)."""
    return 1.0 - 2.0 * unpack_bits_torch(w_bits, in_features).to(torch.float32)


def _check_mode(mode: str, allowed: Sequence[str], what: str) -> None:
    check_mode(mode, allowed, what, fix="")


def _binarize_plain(x: torch.Tensor, alpha: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "signed":
        return sign_pm1(x)
    return (x > alpha.reshape(-1)[0] / 2).to(torch.float32)


# ---------------------------------------------------------------------------------------------------------
# binary_linear
# ---------------------------------------------------------------------------------------------------------


def binary_linear_accumulator(
    x: torch.Tensor, shift: torch.Tensor, alpha: torch.Tensor, w_bits: torch.Tensor, mode: str, in_features: int
) -> torch.Tensor:
    """The exact integer accumulator acc[..., n] of BinaryLinear, as float32 holding integers."""
    _check_mode(mode, LINEAR_MODES, "binary_linear mode")
    if x.shape[-1] != in_features:
        raise ContractError(f"binary_linear: x has {x.shape[-1]} features, in_features is {in_features}")
    a = _binarize_plain(x + shift, alpha, mode)
    w = signed_weight_from_bits(w_bits, in_features)
    return torch.matmul(a, w.t())


@custom_op("bvit::binary_linear", mutates_args=())
def binary_linear(
    x: torch.Tensor,
    shift: torch.Tensor,
    alpha: torch.Tensor,
    w_bits: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    mode: str,
    in_features: int,
) -> torch.Tensor:
    """Binary linear layer of the ``bvit_edge`` contract (see the module docstring)."""
    acc = binary_linear_accumulator(x, shift, alpha, w_bits, mode, in_features)
    s = alpha.to(torch.float32) * w_scale.to(torch.float32)
    y = acc * s
    if bias is not None:
        y = y + bias
    return y


@binary_linear.register_fake
def _binary_linear_fake(x, shift, alpha, w_bits, w_scale, bias, mode, in_features):
    return x.new_empty((*x.shape[:-1], w_bits.shape[0]))


# ---------------------------------------------------------------------------------------------------------
# binary_matmul
# ---------------------------------------------------------------------------------------------------------


def a_planes(a: torch.Tensor, alpha: torch.Tensor, mode: str, ratios: Sequence[float]) -> list[torch.Tensor]:
    """Binary planes of the left operand a' (already shifted): values {0,1} or {-1,+1}."""
    _check_mode(mode, A_MODES, "binary_matmul a_mode")
    if mode != "gsb_unsigned":
        return [_binarize_plain(a, alpha, mode)]
    m1, m2 = gsb_unsigned_masks(a, ratios)
    return [(a > alpha[0] / 2).to(torch.float32), m1.to(torch.float32), m2.to(torch.float32)]


def b_planes(b: torch.Tensor, alpha: torch.Tensor, mode: str, ratios: Sequence[float]) -> list[torch.Tensor]:
    """Binary planes of the right operand b' (already shifted): values {-1,+1} or masked {-1,0,+1}."""
    _check_mode(mode, B_MODES, "binary_matmul b_mode")
    s = sign_pm1(b)
    if mode == "signed":
        return [s]
    m1, m2 = gsb_signed_masks(b, ratios)
    return [s, s * m1.to(torch.float32), s * m2.to(torch.float32)]


@custom_op(
    "bvit::binary_matmul",
    mutates_args=(),
    schema=(
        "(Tensor a, Tensor b, Tensor a_shift, Tensor a_alpha, Tensor b_shift, Tensor b_alpha, str a_mode, "
        f"str b_mode, float[] gsb_ratios=[{DEFAULT_GSB_RATIOS[0]}, {DEFAULT_GSB_RATIOS[1]}]) -> Tensor"
    ),
)
def binary_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    a_shift: torch.Tensor,
    a_alpha: torch.Tensor,
    b_shift: torch.Tensor,
    b_alpha: torch.Tensor,
    a_mode: str,
    b_mode: str,
    gsb_ratios: Sequence[float] = DEFAULT_GSB_RATIOS,
) -> torch.Tensor:
    """Binary (plane-superposed) matmul of the ``bvit_edge`` contract (see the module docstring)."""
    pa = a_planes(a + a_shift, a_alpha.reshape(-1), a_mode, gsb_ratios)
    pb = b_planes(b + b_shift, b_alpha.reshape(-1), b_mode, gsb_ratios)
    aa, ba = a_alpha.reshape(-1).to(torch.float32), b_alpha.reshape(-1).to(torch.float32)
    if aa.numel() < len(pa) or ba.numel() < len(pb):
        raise ContractError(
            f"binary_matmul: {a_mode}/{b_mode} need {len(pa)}/{len(pb)} alphas, got {aa.numel()}/{ba.numel()}"
        )
    out: torch.Tensor | None = None
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            term = (aa[i] * ba[j]) * torch.matmul(p, q)
            out = term if out is None else out + term
    assert out is not None
    return out


@binary_matmul.register_fake
def _binary_matmul_fake(a, b, a_shift, a_alpha, b_shift, b_alpha, a_mode, b_mode, gsb_ratios=DEFAULT_GSB_RATIOS):
    return a.new_empty((*a.shape[:-1], b.shape[-1]))


# ---------------------------------------------------------------------------------------------------------
# int8 ops
# ---------------------------------------------------------------------------------------------------------


def _channel_view(scale: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """A per-tensor (0-dim) scale as is; a 1-D scale reshaped to broadcast along ``axis``."""
    if scale.ndim == 0:
        return scale
    shape = [1] * ndim
    shape[axis % ndim] = scale.numel()
    return scale.reshape(shape)


@custom_op("bvit::dequantize_int8", mutates_args=())
def dequantize_int8(w: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    """w (int8) * scale: per channel along ``axis`` when scale is 1-D, per tensor when it is 0-dim."""
    return w.to(torch.float32) * _channel_view(scale.to(torch.float32), w.ndim, axis)


@dequantize_int8.register_fake
def _dequantize_int8_fake(w, scale, axis):
    return torch.empty(w.shape, dtype=torch.float32, device=w.device)


@custom_op("bvit::quantize_dequantize_int8", mutates_args=())
def quantize_dequantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """clamp(round_half_even(x / scale), -128, 127) * scale with a per-tensor (0-dim) scale."""
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


@quantize_dequantize_int8.register_fake
def _qdq_fake(x, scale):
    return torch.empty_like(x)


# ---------------------------------------------------------------------------------------------------------
# Turning float parameters into deployment form
# ---------------------------------------------------------------------------------------------------------


def pack_signed_weight(centred: torch.Tensor) -> torch.Tensor:
    """Sign bits of a (centred) weight [N, K] packed along K: uint8 [N, Kp/8] (bit 1 = negative)."""
    arr = centred.detach().to(torch.float32).cpu().numpy()
    return torch.from_numpy(np.ascontiguousarray(packing.pack_bits(packing.sign_bits(arr))))


def bwn_pack(weight: torch.Tensor, per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A float weight [N, K] -> (w_bits uint8 [N, Kp/8], w_scale float32 [N]) under BWN.

    Layer-wise: bits of W - mean W and w_scale[n] = mean|W| for every n; per_row (BinaryViT): bits of
    W[n] - mean W[n] and w_scale[n] = mean|W[n]|. Same float64-accurate scales as training
    (:mod:`bvit_edge.quant.weights`).
    """
    from bvit_edge.quant.weights import BWNQuantizer

    q = BWNQuantizer(per_row=per_row)
    return pack_signed_weight(q.centred(weight)), q.scales(weight).contiguous()


def quantize_int8(w: torch.Tensor, scale: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """int8 codes clamp(round_half_even(w / scale), -128, 127), scale per channel along ``axis`` or per tensor."""
    s = _channel_view(scale.detach().to(torch.float32), w.ndim, axis)
    return torch.clamp(torch.round(w.detach().to(torch.float32) / s), -128, 127).to(torch.int8)


# ---------------------------------------------------------------------------------------------------------
# Frozen (deployment) modules: buffers only, no parameters, calls into torch.ops.bvit
# ---------------------------------------------------------------------------------------------------------


class FrozenBinaryLinear(nn.Module):
    """Deployment binary linear: ``torch.ops.bvit.binary_linear`` over stored bits and scales."""

    def __init__(
        self,
        w_bits: torch.Tensor,
        w_scale: torch.Tensor,
        shift: torch.Tensor,
        alpha: torch.Tensor,
        bias: torch.Tensor | None,
        mode: str,
        in_features: int,
    ) -> None:
        super().__init__()
        _check_mode(mode, LINEAR_MODES, "FrozenBinaryLinear mode")
        self.mode = mode
        self.in_features = int(in_features)
        self.out_features = int(w_bits.shape[0])
        self.register_buffer("w_bits", w_bits.detach().to(torch.uint8).contiguous())
        self.register_buffer("w_scale", w_scale.detach().to(torch.float32).reshape(-1).contiguous())
        self.register_buffer("shift", shift.detach().to(torch.float32).reshape(-1).contiguous())
        self.register_buffer("alpha", alpha.detach().to(torch.float32).reshape(()).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.bvit.binary_linear(
            x, self.shift, self.alpha, self.w_bits, self.w_scale, self.bias, self.mode, self.in_features
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


class FrozenInt8Linear(nn.Module):
    """Deployment W8A8 linear: y = Linear(qdq(x + shift, a_scale), dequant(w_int8, w_scale), bias).

    ``a_scale`` None means float input (W8 only); ``w_scale`` per tensor (0-dim) or per output row.
    """

    w_int8: torch.Tensor
    w_scale: torch.Tensor
    bias: torch.Tensor | None
    shift: torch.Tensor | None
    a_scale: torch.Tensor | None

    def __init__(
        self,
        w_int8: torch.Tensor,
        w_scale: torch.Tensor,
        bias: torch.Tensor | None,
        shift: torch.Tensor | None = None,
        a_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(w_int8.shape[1])
        self.out_features = int(w_int8.shape[0])
        self.register_buffer("w_int8", w_int8.detach().to(torch.int8).contiguous())
        self.register_buffer("w_scale", w_scale.detach().to(torch.float32).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.register_buffer("shift", None if shift is None else shift.detach().to(torch.float32).clone())
        self.register_buffer(
            "a_scale", None if a_scale is None else a_scale.detach().to(torch.float32).reshape(()).clone()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift is not None:
            x = x + self.shift
        if self.a_scale is not None:
            x = torch.ops.bvit.quantize_dequantize_int8(x, self.a_scale)
        w = torch.ops.bvit.dequantize_int8(self.w_int8, self.w_scale, 0)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        a_bits = "8" if self.a_scale is not None else "32"
        return f"in_features={self.in_features}, out_features={self.out_features}, w8a{a_bits}"


class FrozenInt8Conv2d(nn.Module):
    """Deployment conv with int8 weights (per output channel scale) and float input (the patch embedding)."""

    w_int8: torch.Tensor
    w_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        w_int8: torch.Tensor,
        w_scale: torch.Tensor,
        bias: torch.Tensor | None,
        stride: int | tuple[int, ...],
        padding: int | tuple[int, ...] | str = 0,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.register_buffer("w_int8", w_int8.detach().to(torch.int8).contiguous())
        self.register_buffer("w_scale", w_scale.detach().to(torch.float32).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.ops.bvit.dequantize_int8(self.w_int8, self.w_scale, 0)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        kernel_size = tuple(self.w_int8.shape[2:])
        return f"{self.w_int8.shape[1]}, {self.w_int8.shape[0]}, kernel_size={kernel_size}, stride={self.stride}, int8"


__all__ = [
    "DEFAULT_GSB_RATIOS",
    "FrozenBinaryLinear",
    "FrozenInt8Conv2d",
    "FrozenInt8Linear",
    "a_planes",
    "b_planes",
    "binary_linear",
    "binary_linear_accumulator",
    "binary_matmul",
    "bwn_pack",
    "dequantize_int8",
    "gsb_signed_masks",
    "gsb_unsigned_masks",
    "pack_signed_weight",
    "per_sample_max",
    "per_sample_min",
    "quantize_dequantize_int8",
    "quantize_int8",
    "sign_pm1",
    "signed_weight_from_bits",
    "unpack_bits_torch",
]
