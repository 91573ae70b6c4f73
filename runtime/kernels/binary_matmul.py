"""The BinaryMatMul kernel: bit-plane packing of both operands and the plane-pair popcount products.

`compile` now lowers BinaryMatMul with the row-wise kernel (bvit_edge.runtime.kernels.binary_matmul_rows:
same integer dots, 3.4x faster on GSB DeiT-S's A·V); this one stays as the tunable block-based form
(bvit_edge.runtime.tuning) and the reference the row-wise kernel is benchmarked against.

Static shapes: A' f32[B, H, M, K] (already shifted: A' = A + a_shift), V' f32[B, H, K, N] (V' = B + b_shift).
With wb = word bits and KW = ceil(K / wb); pads are 0 in every plane.

Planes of A (packed along K, ap[p, b, h, m, w]):
  signed:       1 plane, bit = A' < 0 (value -1 for bit 1, +1 for bit 0)
  unsigned:     1 plane, bit = A' > a1 / 2 (value 0/1)
  gsb_unsigned: 3 planes, bits [A' > a1/2], [A' > r1 max_b A'], [A' > r2 max_b A'] (max per sample b)
Planes of V (packed along K, sign bits s[b, h, w, n] shared, masks mk[q, b, h, w, n]):
  signed:     1 plane, mask = valid (k < K), value sgn(V') with sgn(0) = +1
  gsb_signed: 3 planes, masks valid, M1 = [V' > r1 max_b V'] or [V' < r1 min_b V'], M2 (same with r2);
              value = sgn(V') where the mask is set, 0 elsewhere
Integer dots, exact (int32, or int64 lanes for the two-popcount forms over >= 2 words):
  A signed,   V plain:  K - 2 sum_w popcount(a XOR s)
  A signed,   V masked: sum_w popcount(m) - 2 popcount(m AND (a XOR s))
  A unsigned, V any:    sum_w popcount(u AND m) - 2 popcount(u AND ms)   (ms = m AND s, packed once)
Output, in f32, plane i of A outer, plane j of V inner:
  out[b, h, m, n] = sum_i sum_j (a_alpha[i] * b_alpha[j]) * float(dot_ij[b, h, m, n])
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm.script import tirx as T

from bvit_edge.contract import DEFAULT_GSB_RATIOS, ContractError, check_ratios, n_planes
from bvit_edge.contract import MATMUL_A_MODES as A_MODES
from bvit_edge.contract import MATMUL_B_MODES as B_MODES
from bvit_edge.runtime.kernels.words import n_words, word_dtype


def binary_matmul_kernel(
    batch: int,
    heads: int,
    m: int,
    k: int,
    n: int,
    a_mode: str,
    b_mode: str,
    ratios: Sequence[float] = DEFAULT_GSB_RATIOS,
    word_bits: int = 64,
) -> tvm.tirx.PrimFunc:
    """Build the unscheduled BinaryMatMul prim func.

    Arguments in order: a f32[batch, heads, m, k], b f32[batch, heads, k, n], a_alpha f32[P],
    b_alpha f32[Q], out f32[batch, heads, m, n] (P, Q = planes of each mode).
    """
    if a_mode not in A_MODES or b_mode not in B_MODES:
        raise ContractError(
            f"BinaryMatMul modes a_mode={a_mode!r}, b_mode={b_mode!r} are not supported: a_mode must be one of "
            f"{A_MODES} and b_mode one of {B_MODES}; re-export the model with bvit_edge domain version 1."
        )
    check_ratios(ratios)
    wd = word_dtype(word_bits)
    zero_word = tvm.tirx.IntImm(wd, 0)  # the sum reducer's identity, as a literal of the word type
    bits = int(word_bits)
    kw = n_words(k, word_bits)
    kk = int(k)
    pa, qb = n_planes(a_mode), n_planes(b_mode)
    a_signed = a_mode == "signed"
    a_gsb = a_mode == "gsb_unsigned"
    b_gsb = b_mode == "gsb_signed"
    plain_xor = a_signed and not b_gsb
    r1, r2 = float(ratios[0]), float(ratios[1])
    # accumulator width: the two-popcount (masked / unsigned) products over >= 2 words add the 64-bit
    # popcounts into int64 lanes (no per-word narrowing: 600 vs 700 us for DeiT-S's A.V); the XOR product
    # and single-word sums stay int32 (narrower lanes measured faster there: 126 vs 171 us for Q.K^T)
    acc_dt = "int64" if kw >= 2 and not plain_xor else "int32"

    @T.prim_func(private=True, s_tir=True)
    def binary_matmul(
        a: T.Buffer((batch, heads, m, k), "float32"),
        b: T.Buffer((batch, heads, k, n), "float32"),
        a_alpha: T.Buffer((pa,), "float32"),
        b_alpha: T.Buffer((qb,), "float32"),
        out: T.Buffer((batch, heads, m, n), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        amax = T.sblock_alloc_buffer((batch,), "float32")
        bmax = T.sblock_alloc_buffer((batch,), "float32")
        bmin = T.sblock_alloc_buffer((batch,), "float32")
        ap = T.sblock_alloc_buffer((pa, batch, heads, m, kw), wd)
        bs = T.sblock_alloc_buffer((batch, heads, kw, n), wd)
        bm = T.sblock_alloc_buffer((qb, batch, heads, kw, n), wd)
        bms = T.sblock_alloc_buffer((qb, batch, heads, kw, n), wd)
        acc = T.sblock_alloc_buffer((batch, heads, m, pa, qb, n), acc_dt)
        if a_gsb:
            for s0, h, i, kk_ in T.grid(batch, heads, m, k):
                with T.sblock("a_max"):
                    vs, vh, vi, vk = T.axis.remap("SRRR", [s0, h, i, kk_])
                    with T.init():
                        amax[vs] = T.min_value("float32")
                    amax[vs] = T.max(amax[vs], a[vs, vh, vi, vk])
        if b_gsb:
            for s0, h, kk_, jn in T.grid(batch, heads, k, n):
                with T.sblock("b_max"):
                    vs, vh, vk, vn = T.axis.remap("SRRR", [s0, h, kk_, jn])
                    with T.init():
                        bmax[vs] = T.min_value("float32")
                    bmax[vs] = T.max(bmax[vs], b[vs, vh, vk, vn])
            for s0, h, kk_, jn in T.grid(batch, heads, k, n):
                with T.sblock("b_min"):
                    vs, vh, vk, vn = T.axis.remap("SRRR", [s0, h, kk_, jn])
                    with T.init():
                        bmin[vs] = T.max_value("float32")
                    bmin[vs] = T.min(bmin[vs], b[vs, vh, vk, vn])
        for p, s0, h, i, w, j in T.grid(pa, batch, heads, m, kw, bits):
            with T.sblock("pack_a"):
                vp, vs, vh, vi, vw, vj = T.axis.remap("SSSSSR", [p, s0, h, i, w, j])
                with T.init():
                    ap[vp, vs, vh, vi, vw] = zero_word
                if a_signed:
                    ap[vp, vs, vh, vi, vw] = ap[vp, vs, vh, vi, vw] + T.shift_left(
                        T.Cast(
                            wd,
                            T.if_then_else(
                                vw * bits + vj < kk,
                                a[vs, vh, vi, T.min(vw * bits + vj, kk - 1)] < T.float32(0),
                                False,
                            ),
                        ),
                        T.Cast(wd, vj),
                    )
                elif a_gsb:
                    ap[vp, vs, vh, vi, vw] = ap[vp, vs, vh, vi, vw] + T.shift_left(
                        T.Cast(
                            wd,
                            T.if_then_else(
                                vw * bits + vj < kk,
                                a[vs, vh, vi, T.min(vw * bits + vj, kk - 1)]
                                > T.Select(
                                    vp == 0,
                                    a_alpha[0] * T.float32(0.5),
                                    T.Select(vp == 1, T.float32(r1) * amax[vs], T.float32(r2) * amax[vs]),
                                ),
                                False,
                            ),
                        ),
                        T.Cast(wd, vj),
                    )
                else:
                    ap[vp, vs, vh, vi, vw] = ap[vp, vs, vh, vi, vw] + T.shift_left(
                        T.Cast(
                            wd,
                            T.if_then_else(
                                vw * bits + vj < kk,
                                a[vs, vh, vi, T.min(vw * bits + vj, kk - 1)] > a_alpha[0] * T.float32(0.5),
                                False,
                            ),
                        ),
                        T.Cast(wd, vj),
                    )
        for s0, h, w, j, jn in T.grid(batch, heads, kw, bits, n):
            with T.sblock("pack_b"):
                vs, vh, vw, vj, vn = T.axis.remap("SSSRS", [s0, h, w, j, jn])
                with T.init():
                    bs[vs, vh, vw, vn] = zero_word
                bs[vs, vh, vw, vn] = bs[vs, vh, vw, vn] + T.shift_left(
                    T.Cast(
                        wd,
                        T.if_then_else(
                            vw * bits + vj < kk, b[vs, vh, T.min(vw * bits + vj, kk - 1), vn] < T.float32(0), False
                        ),
                    ),
                    T.Cast(wd, vj),
                )
        for q, s0, h, w, j, jn in T.grid(qb, batch, heads, kw, bits, n):
            with T.sblock("mask_b"):
                vq, vs, vh, vw, vj, vn = T.axis.remap("SSSSRS", [q, s0, h, w, j, jn])
                with T.init():
                    bm[vq, vs, vh, vw, vn] = zero_word
                if b_gsb:
                    bm[vq, vs, vh, vw, vn] = bm[vq, vs, vh, vw, vn] + T.shift_left(
                        T.Cast(
                            wd,
                            T.if_then_else(
                                vw * bits + vj < kk,
                                T.Select(
                                    vq == 0,
                                    True,
                                    T.Or(
                                        b[vs, vh, T.min(vw * bits + vj, kk - 1), vn]
                                        > T.Select(vq == 1, T.float32(r1), T.float32(r2)) * bmax[vs],
                                        b[vs, vh, T.min(vw * bits + vj, kk - 1), vn]
                                        < T.Select(vq == 1, T.float32(r1), T.float32(r2)) * bmin[vs],
                                    ),
                                ),
                                False,
                            ),
                        ),
                        T.Cast(wd, vj),
                    )
                else:
                    bm[vq, vs, vh, vw, vn] = bm[vq, vs, vh, vw, vn] + T.shift_left(
                        T.Cast(wd, vw * bits + vj < kk), T.Cast(wd, vj)
                    )
        for q, s0, h, w, jn in T.grid(qb, batch, heads, kw, n):
            with T.sblock("mask_sign_b"):
                vq, vs, vh, vw, vn = T.axis.remap("SSSSS", [q, s0, h, w, jn])
                bms[vq, vs, vh, vw, vn] = bm[vq, vs, vh, vw, vn] & bs[vs, vh, vw, vn]
        for s0, h, i, p, q, jn, w in T.grid(batch, heads, m, pa, qb, n, kw):
            with T.sblock("acc"):
                vs, vh, vi, vp, vq, vn, vw = T.axis.remap("SSSSSSR", [s0, h, i, p, q, jn, w])
                with T.init():
                    acc[vs, vh, vi, vp, vq, vn] = 0
                if plain_xor:
                    acc[vs, vh, vi, vp, vq, vn] = acc[vs, vh, vi, vp, vq, vn] + T.Cast(
                        "int32", T.popcount(ap[vp, vs, vh, vi, vw] ^ bs[vs, vh, vw, vn])
                    )
                elif a_signed:
                    acc[vs, vh, vi, vp, vq, vn] = (
                        acc[vs, vh, vi, vp, vq, vn]
                        + T.Cast(acc_dt, T.popcount(bm[vq, vs, vh, vw, vn]))
                        - 2
                        * T.Cast(
                            acc_dt, T.popcount(bm[vq, vs, vh, vw, vn] & (ap[vp, vs, vh, vi, vw] ^ bs[vs, vh, vw, vn]))
                        )
                    )
                else:
                    acc[vs, vh, vi, vp, vq, vn] = (
                        acc[vs, vh, vi, vp, vq, vn]
                        + T.Cast(acc_dt, T.popcount(ap[vp, vs, vh, vi, vw] & bm[vq, vs, vh, vw, vn]))
                        - 2 * T.Cast(acc_dt, T.popcount(ap[vp, vs, vh, vi, vw] & bms[vq, vs, vh, vw, vn]))
                    )
        for s0, h, i, jn, p, q in T.grid(batch, heads, m, n, pa, qb):
            with T.sblock("out"):
                vs, vh, vi, vn, vp, vq = T.axis.remap("SSSSRR", [s0, h, i, jn, p, q])
                with T.init():
                    out[vs, vh, vi, vn] = T.float32(0)
                if plain_xor:
                    out[vs, vh, vi, vn] = out[vs, vh, vi, vn] + (a_alpha[vp] * b_alpha[vq]) * T.Cast(
                        "float32", kk - 2 * acc[vs, vh, vi, vp, vq, vn]
                    )
                else:
                    out[vs, vh, vi, vn] = out[vs, vh, vi, vn] + (a_alpha[vp] * b_alpha[vq]) * T.Cast(
                        "float32", acc[vs, vh, vi, vp, vq, vn]
                    )

    return binary_matmul
