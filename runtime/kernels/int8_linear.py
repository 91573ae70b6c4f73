"""The W8A8 linear layer as an integer GEMM with exact int32 accumulators (the GSB heads).

It replaces ONNX ``Gemm(DequantizeLinear(QuantizeLinear(x, s_a, 0), s_a, 0), DequantizeLinear(W, s_w), b)``
(int8 activations and weights, zero points 0): one prim func, three blocks (M rows, K inputs, N outputs):

``quant``  q[m, k] = clamp(round_half_even(x[m, k] / s_a), -128, 127) + o          (o = the scheme's
           activation offset, 0 or 128; k >= K: the pad, o: it meets zero weights)
``acc``    acc[m, n] = sum_k q[m, k] * W[n, k]          exact in int32 (|acc| <= K * 2^15)
``out``    y[m, n] = float(acc[m, n] - o * sum_k W[n, k]) * (s_a * s_w[n]) + b[n]

so float(acc - o * sum W) is the integer dot sum_k q_k W[n, k] exactly, and y differs from the float
reference sum_k (q_k s_a)(W[n, k] s_w[n]) + b[n] only by float rounding. The weights W are packed at
compile time as int8 [NT, KG, lanes, group] (bvit_edge.runtime.kernels.int8_dot.pack_weights) so each
micro-kernel call (``lanes`` outputs x ``group`` k steps) reads one vector; the schedule
(bvit_edge.runtime.schedules.int8) tensorizes the ``acc`` block with the scheme's instruction.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from bvit_edge.runtime.kernels.int8_dot import DotScheme, padded


def int8_linear_kernel(m: int, k: int, n: int, scheme: DotScheme, n_block: int = 1) -> tvm.tirx.PrimFunc:
    """The unscheduled W8A8 linear prim func for x f32[m, k] and packed weights of ``scheme``.

    Arguments, in order: x f32[m, k], a_scale f32[1], w int8[NT, KG, lanes, group], w_scale f32[n],
    bias f32[n], correction int32[NP] (o * sum_k W[n, k], 0 past n), y f32[m, n] (output). NP = NT * lanes
    is n padded to a multiple of lanes * n_block; KG * group is k padded to a multiple of group.
    """
    lanes, group, off = scheme.lanes, scheme.group, scheme.act_offset
    adt = scheme.act_dtype
    kp = padded(k, group)
    np_ = padded(n, lanes * n_block)
    nt, kg = np_ // lanes, kp // group
    kk = int(k)
    lo, hi = T.float32(-128.0), T.float32(127.0)

    @T.prim_func(private=True, s_tir=True)
    def int8_linear(
        x: T.Buffer((m, k), "float32"),
        a_scale: T.Buffer((1,), "float32"),
        w: T.Buffer((nt, kg, lanes, group), "int8"),
        w_scale: T.Buffer((n,), "float32"),
        bias: T.Buffer((n,), "float32"),
        corr: T.Buffer((np_,), "int32"),
        y: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        q = T.sblock_alloc_buffer((m, kp), adt)
        acc = T.sblock_alloc_buffer((m, np_), "int32")
        for i, j in T.grid(m, kp):
            with T.sblock("quant"):
                vi, vj = T.axis.remap("SS", [i, j])
                q[vi, vj] = T.Cast(
                    adt,
                    T.Cast(
                        "int32",
                        T.if_then_else(
                            vj < kk,
                            T.max(T.min(T.round(x[vi, T.min(vj, kk - 1)] / a_scale[0]), hi), lo),
                            T.float32(0.0),
                        ),
                    )
                    + off,
                )
        for i, t, g, li, c in T.grid(m, nt, kg, lanes, group):
            with T.sblock("acc"):
                vi, vt, vg, vl, vc = T.axis.remap("SSRSR", [i, t, g, li, c])
                with T.init():
                    acc[vi, vt * lanes + vl] = 0
                acc[vi, vt * lanes + vl] = acc[vi, vt * lanes + vl] + T.Cast("int32", q[vi, vg * group + vc]) * T.Cast(
                    "int32", w[vt, vg, vl, vc]
                )
        for i, j in T.grid(m, n):
            with T.sblock("out"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = T.Cast("float32", acc[vi, vj] - corr[vj]) * (a_scale[0] * w_scale[vj]) + bias[vj]

    return int8_linear


__all__ = ["int8_linear_kernel"]
