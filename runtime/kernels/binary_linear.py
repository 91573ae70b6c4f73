"""The BinaryLinear kernel: activation packing fused with a packed popcount GEMM and its epilogue.

One prim func, three blocks (static shapes; M rows, K true features, N outputs, KW = ceil(K / word_bits)):

``pack``  a[m, w] = sum_j bit(x[m, w*B + j] + shift[w*B + j]) << j    (B = word bits, pads are 0; the
          bits are disjoint, so the sum is the OR, written as a sum because TVM can split an integer
          sum (rfactor) into vector lanes but has no OR reducer)
          signed: bit = x' < 0 (the sign bit, so sgn(0) = +1); unsigned: bit = x' > alpha / 2.
``acc``   integer accumulation over the words, exact in int32:
          signed:   s[m, n] = sum_w popcount(a[m, w] XOR W[w, n]);            acc = K - 2 s
          unsigned: s[m, n] = sum_w popcount(a[m, w]) - 2 popcount(a[m, w] AND W[w, n]);  acc = s
``out``   y[m, n] = float(acc) * (alpha * w_scale[n]) + bias[n]   (alpha * w_scale first, in f32);
          with a residual (the ViT's x + proj(...), x + fc2(...)): y[m, n] = (that) + res[m, n].

W is the weight repacked at compile time as [KW, N] words (bit 1 = -1), so the inner loop over n reads
contiguous words and vectorizes into vpopcntq (AVX-512 VPOPCNTDQ) or cnt (NEON).
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from bvit_edge.contract import LINEAR_MODES as MODES
from bvit_edge.contract import check_mode
from bvit_edge.runtime.kernels.words import n_words, word_dtype


def binary_linear_kernel(
    m: int, k: int, n: int, mode: str, word_bits: int = 64, residual: bool = False
) -> tvm.tirx.PrimFunc:
    """Build the unscheduled BinaryLinear prim func for x f32[m, k] and weights [ceil(k/word_bits), n].

    Arguments of the prim func, in order: x f32[m, k], shift f32[k], alpha f32[1], w word[kw, n],
    w_scale f32[n], bias f32[n], [res f32[m, n] when ``residual``], y f32[m, n] (output).

    ``residual``: the epilogue also adds a residual, y = (scale * dot + bias) + res, the same float sum as
    the unfused BinaryLinear followed by an Add (a + b == b + a in IEEE arithmetic), in one pass.
    """
    check_mode(mode, MODES, "BinaryLinear mode")
    wd = word_dtype(word_bits)
    zero_word = tvm.tirx.IntImm(wd, 0)  # the sum reducer's identity, as a literal of the word type
    kw = n_words(k, word_bits)
    bits = int(word_bits)
    signed = mode == "signed"
    kk = int(k)
    exact_words = kk % bits == 0

    @T.macro
    def body(x, shift, alpha, w, w_scale, bias, res, y):
        a = T.sblock_alloc_buffer((m, kw), wd)
        acc = T.sblock_alloc_buffer((m, n), "int32")
        for i, wi, j in T.grid(m, kw, bits):
            with T.sblock("pack"):
                vi, vw, vj = T.axis.remap("SSR", [i, wi, j])
                with T.init():
                    a[vi, vw] = zero_word
                if exact_words:  # K is a multiple of the word size: no pad bits, contiguous reads
                    if signed:
                        a[vi, vw] = a[vi, vw] + T.shift_left(
                            T.Cast(wd, x[vi, vw * bits + vj] + shift[vw * bits + vj] < T.float32(0)),
                            T.Cast(wd, vj),
                        )
                    else:
                        a[vi, vw] = a[vi, vw] + T.shift_left(
                            T.Cast(wd, x[vi, vw * bits + vj] + shift[vw * bits + vj] > alpha[0] * T.float32(0.5)),
                            T.Cast(wd, vj),
                        )
                elif signed:
                    a[vi, vw] = a[vi, vw] + T.shift_left(
                        T.Cast(
                            wd,
                            T.if_then_else(
                                vw * bits + vj < kk,
                                x[vi, T.min(vw * bits + vj, kk - 1)] + shift[T.min(vw * bits + vj, kk - 1)]
                                < T.float32(0),
                                False,
                            ),
                        ),
                        T.Cast(wd, vj),
                    )
                else:
                    a[vi, vw] = a[vi, vw] + T.shift_left(
                        T.Cast(
                            wd,
                            T.if_then_else(
                                vw * bits + vj < kk,
                                x[vi, T.min(vw * bits + vj, kk - 1)] + shift[T.min(vw * bits + vj, kk - 1)]
                                > alpha[0] * T.float32(0.5),
                                False,
                            ),
                        ),
                        T.Cast(wd, vj),
                    )
        for i, jn, wi in T.grid(m, n, kw):
            with T.sblock("acc"):
                vi, vn, vw = T.axis.remap("SSR", [i, jn, wi])
                with T.init():
                    acc[vi, vn] = 0
                if signed:
                    acc[vi, vn] = acc[vi, vn] + T.Cast("int32", T.popcount(a[vi, vw] ^ w[vw, vn]))
                else:
                    acc[vi, vn] = (
                        acc[vi, vn]
                        + T.Cast("int32", T.popcount(a[vi, vw]))
                        - 2 * T.Cast("int32", T.popcount(a[vi, vw] & w[vw, vn]))
                    )
        for i, jn in T.grid(m, n):
            with T.sblock("out"):
                vi, vn = T.axis.remap("SS", [i, jn])
                if residual and signed:
                    y[vi, vn] = (T.Cast("float32", kk - 2 * acc[vi, vn]) * (alpha[0] * w_scale[vn]) + bias[vn]) + res[
                        vi, vn
                    ]
                elif residual:
                    y[vi, vn] = (T.Cast("float32", acc[vi, vn]) * (alpha[0] * w_scale[vn]) + bias[vn]) + res[vi, vn]
                elif signed:
                    y[vi, vn] = T.Cast("float32", kk - 2 * acc[vi, vn]) * (alpha[0] * w_scale[vn]) + bias[vn]
                else:
                    y[vi, vn] = T.Cast("float32", acc[vi, vn]) * (alpha[0] * w_scale[vn]) + bias[vn]

    if residual:

        @T.prim_func(private=True, s_tir=True)
        def binary_linear_residual(
            x: T.Buffer((m, k), "float32"),
            shift: T.Buffer((k,), "float32"),
            alpha: T.Buffer((1,), "float32"),
            w: T.Buffer((kw, n), wd),
            w_scale: T.Buffer((n,), "float32"),
            bias: T.Buffer((n,), "float32"),
            res: T.Buffer((m, n), "float32"),
            y: T.Buffer((m, n), "float32"),
        ):
            T.func_attr({"tir.noalias": True})
            body(x, shift, alpha, w, w_scale, bias, res, y)

        return binary_linear_residual

    @T.prim_func(private=True, s_tir=True)
    def binary_linear(
        x: T.Buffer((m, k), "float32"),
        shift: T.Buffer((k,), "float32"),
        alpha: T.Buffer((1,), "float32"),
        w: T.Buffer((kw, n), wd),
        w_scale: T.Buffer((n,), "float32"),
        bias: T.Buffer((n,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        body(x, shift, alpha, w, w_scale, bias, None, y)

    return binary_linear
