"""The W8A32 linear layer (int8 weights, float activations): the GSB patch embedding and W8 linears.

It replaces ONNX ``Conv(x, DequantizeLinear(W, s))`` (a patch-embedding conv: kernel == stride, no padding)
and ``Gemm``/``MatMul(x, DequantizeLinear(W, s))`` with float x. The activations are float, so there is no
integer GEMM to do; what the kernel saves is the float32 copy of the weights (they stay int8 in params.npz,
a quarter of the bytes) and, for the conv, the im2col copy of the image. Three blocks (M rows, K inputs,
N outputs, weights packed at compile time as int8 [P, K, NB]: panel p holds outputs p*NB .. p*NB+NB-1):

``dequant``  wf[p, k, j] = float(W[p, k, j]) * s[p*NB + j]      (the same float product as DequantizeLinear)
``acc``      c[m, n] = sum_k a(m, k) * wf[n // NB, k, n % NB]  (k ascending)
``out``      y[m, n] = c[m, n] + b[n]

so y equals the float reference (dequantize, then matmul) up to the summation order of a float GEMM. For
a linear a(m, k) = x[m, k]; for the patch embedding the conv's sums are read from the image directly,
a(t, (c, u, v)) = image[0, c, (t // Wp) * P + u, (t % Wp) * P + v] (token t = row-major patch index),
so that y[t, o] = Conv(image, W, b)[0, o, t // Wp, t % Wp].

The schedule (:func:`schedule_int8_weight_linear`) dequantizes one panel at a time into a float buffer that
stays in cache and register-blocks the GEMM over it (``rows`` x ``vectors`` accumulators).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te

from bvit_edge.errors import ConfigError


@dataclass(frozen=True)
class PatchGeometry:
    """A patch-embedding conv: channels, image height and width, patch size (kernel == stride)."""

    channels: int
    height: int
    width: int
    patch: int

    @property
    def tokens(self) -> int:
        return (self.height // self.patch) * (self.width // self.patch)

    @property
    def k(self) -> int:
        return self.channels * self.patch * self.patch


def pack_weight_panels(w: np.ndarray, panel: int) -> np.ndarray:
    """int8 W[N, K] -> int8 [P, K, panel] (P = ceil(N / panel), N zero-padded): [p, k, j] = W[p*panel + j, k]."""
    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != 2:
        raise ConfigError(f"8-bit weights must be int8[N, K]; got {w.dtype}{list(w.shape)}.")
    n, k = w.shape
    p = -(-n // panel)
    full = np.zeros((p * panel, k), np.int8)
    full[:n] = w
    return np.ascontiguousarray(full.reshape(p, panel, k).transpose(0, 2, 1))


def pad_vector(v: np.ndarray, length: int) -> np.ndarray:
    """f32 v zero-padded to ``length``."""
    out = np.zeros(length, np.float32)
    out[: v.size] = np.asarray(v, np.float32).reshape(-1)
    return out


def int8_weight_linear_kernel(
    m: int, k: int, n: int, panel: int, patch: PatchGeometry | None = None
) -> tvm.tirx.PrimFunc:
    """The unscheduled W8A32 prim func.

    Arguments, in order: x (f32[m, k], or the image f32[1, C, H, W] when ``patch`` is given, then m is
    its token count and k = C*P*P), w int8[P, k, panel], scale f32[P*panel], bias f32[P*panel], y f32[m, n]
    (f32[H/P, W/P, n] for a patch embedding: tokens as (patch row, patch column)).
    """
    pn = -(-n // panel)
    if patch is not None:
        if patch.tokens != m or patch.k != k:
            raise ConfigError(f"patch geometry {patch} does not give {m} tokens x {k} inputs.")
        x = te.placeholder((1, patch.channels, patch.height, patch.width), "float32", name="x")
    else:
        x = te.placeholder((m, k), "float32", name="x")
    w = te.placeholder((pn, k, panel), "int8", name="w")
    scale = te.placeholder((pn * panel,), "float32", name="scale")
    bias = te.placeholder((pn * panel,), "float32", name="bias")
    wf = te.compute((pn, k, panel), lambda p, r, j: w[p, r, j].astype("float32") * scale[p * panel + j], name="dequant")
    if patch is None:
        r = te.reduce_axis((0, k), name="r")
        acc = te.compute((m, n), lambda i, j: te.sum(x[i, r] * wf[j // panel, r, j % panel], axis=r), name="acc")
        y = te.compute((m, n), lambda i, j: acc[i, j] + bias[j], name="out")
    else:  # tokens as (patch row, patch column): the image reads stay affine in the register block
        pp, hp, wp = patch.patch, patch.height // patch.patch, patch.width // patch.patch
        rc = te.reduce_axis((0, patch.channels), name="rc")
        ru = te.reduce_axis((0, pp), name="ru")
        rv = te.reduce_axis((0, pp), name="rv")
        acc = te.compute(
            (hp, wp, n),
            lambda h, t, j: te.sum(
                x[0, rc, h * pp + ru, t * pp + rv] * wf[j // panel, (rc * pp + ru) * pp + rv, j % panel],
                axis=[rc, ru, rv],
            ),
            name="acc",
        )
        y = te.compute((hp, wp, n), lambda h, t, j: acc[h, t, j] + bias[j], name="out")
    func = te.create_prim_func([x, w, scale, bias, y])
    return func.with_attr("tir.noalias", True).without_attr("global_symbol")  # private, as the other kernels


__all__ = ["PatchGeometry", "int8_weight_linear_kernel", "pack_weight_panels", "pad_vector"]
