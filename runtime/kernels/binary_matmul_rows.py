"""BinaryMatMul row by row: each row of A packed in vector registers, its products while it is in L1,
all-zero words and rows of an unsigned plane skipped (GSB's Q·Kᵀ and A·V).

Same contract and integer results as :mod:`bvit_edge.runtime.kernels.binary_matmul` (see there for the
planes), for every a_mode and b_mode. Static shapes A' f32[B, H, M, K], V' f32[B, H, K, N]; wb = word bits,
KW = ceil(K / wb); pads are 0 in every plane.

Why: an unsigned plane P_i has values 0/1, so a word of P_i that is all zero adds nothing to any of its
dots, and GSB's thresholded attention probabilities are mostly below threshold (P2, P3 almost empty, P1
sparse: benches/results/attention_planes.json); V's masks M1, M2 are sparse too. The kernel:

0. (unsigned A) the max of every row of A' (rows in parallel); the per-sample max is the max of those, so
   t = (a1 / 2, r1 max A', r2 max A') as the contract evaluates them, and a row whose max is not above
   t_i has no bit in P_i: its packing and products are skipped;
1. V's planes, packed once per call along K ((sample, head, word) in parallel, N in vector lanes): sign
   words s, mask words m_j and m_j AND s, and per word whether any column's mask word is non-zero;
2. per row of A (rows in parallel), per live plane: pack the row in one read, ``lanes`` floats at a time:
   bit(k) = [A'[k] > t_i] (signed: [A'[k] < 0]) shifted to its place and OR-ed into ``lanes`` partial
   words, folded by a log2(lanes) tree of vector ORs; the K mod wb tail bits one by one (no clamped
   reads, so the full words are plain vector loads);
3. the products, N in chunks of at most 64 vector lanes (the accumulators stay on the stack), words
   skipped where P_i[w] = 0 (unsigned A) or m_j[w, :] = 0 (masked V planes):
       unsigned A: dot_i1 += popcount(P_i[w]) - 2 popcount(P_i[w] AND s[w, n])         (Q_1 = sgn V')
                   dot_ij += popcount(P_i[w] AND m_j[w, n]) - 2 popcount(P_i[w] AND ms_j[w, n])
       signed A:   dot_1 = K - 2 sum_w popcount(a[w] XOR s[w, n]);
                   dot_j = sum_w popcount(m_j[w, n]) - 2 popcount(m_j[w, n] AND (a[w] XOR s[w, n]))
   exact in int32 lanes (32-bit words, or one word per dot) or int64 lanes (|dot| <= K);
4. out[n] = sum_i sum_j (a_alpha[i] * b_alpha[j]) * float(dot_ij[n]), i outer, j inner, in f32 (the
   reference's order; a skipped plane's terms are (alpha * beta) * 0, which leave the sum unchanged).

The loops are written already scheduled (parallel rows, explicit vector loops), for every target family:
``lanes`` = the family's f32 lanes, ``word_bits`` = its ``row_word_bits`` (32 on x86 and armv7, 64 on aarch64).
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm.script import tirx as T

from bvit_edge.contract import DEFAULT_GSB_RATIOS, ContractError, check_ratios, n_planes
from bvit_edge.contract import MATMUL_A_MODES
from bvit_edge.contract import MATMUL_B_MODES as B_MODES
from bvit_edge.runtime.kernels.words import n_words, word_dtype

#: a_modes this kernel serves (all of the contract's).
ROW_A_MODES = MATMUL_A_MODES

#: widest N vectorized as one loop (wider: N in chunks of this many lanes).
_MAX_VECTOR_N = 64


def _fold_steps(lanes: int) -> list[int]:
    """Halvings of ``lanes`` (lanes/2, lanes/4, ..., 1), padded with 0 to 5 entries (up to 32 lanes)."""
    steps = []
    h = lanes // 2
    while h >= 1:
        steps.append(h)
        h //= 2
    if len(steps) > 5:
        raise ContractError(f"BinaryMatMul rows kernel: {lanes} lanes are more than it folds (32 at most).")
    return steps + [0] * (5 - len(steps))


def _n_split(n: int) -> tuple[int, int]:
    """(outer, vector) split of N: one vector loop up to 64 lanes, else the largest divisor <= 64."""
    if n <= _MAX_VECTOR_N:
        return 1, n
    d = max(v for v in range(1, _MAX_VECTOR_N + 1) if n % v == 0)
    return n // d, d


def binary_matmul_rows_kernel(
    batch: int,
    heads: int,
    m: int,
    k: int,
    n: int,
    a_mode: str,
    b_mode: str,
    ratios: Sequence[float] = DEFAULT_GSB_RATIOS,
    word_bits: int = 64,
    lanes: int = 16,
) -> tvm.tirx.PrimFunc:
    """Build the (already scheduled) row-wise BinaryMatMul prim func for an unsigned ``a_mode``.

    Arguments in order, as :func:`binary_matmul_kernel`: a f32[batch, heads, m, k], b f32[batch, heads, k, n],
    a_alpha f32[P], b_alpha f32[Q], out f32[batch, heads, m, n]. ``lanes``: f32 lanes of a vector register
    of the target (it must divide ``word_bits``).
    """
    if a_mode not in ROW_A_MODES or b_mode not in B_MODES:
        raise ContractError(
            f"BinaryMatMul rows kernel: a_mode={a_mode!r}, b_mode={b_mode!r} not served: a_mode must be one of "
            f"{ROW_A_MODES} and b_mode one of {B_MODES}."
        )
    check_ratios(ratios)
    wd = word_dtype(word_bits)
    bits = int(word_bits)
    lanes = int(lanes)
    if lanes < 1 or bits % lanes:
        raise ContractError(f"BinaryMatMul rows kernel: {lanes} lanes must divide the {bits}-bit word.")
    kk = int(k)
    kw = n_words(kk, bits)
    kfull = kk // bits
    tail = kk - kfull * bits
    jo_n = bits // lanes
    pa, qb = n_planes(a_mode), n_planes(b_mode)
    a_gsb = a_mode == "gsb_unsigned"
    a_signed = a_mode == "signed"
    b_gsb = b_mode == "gsb_signed"
    r1, r2 = float(ratios[0]), float(ratios[1])
    f1, f2, f3, f4, f5 = _fold_steps(lanes)
    hm = heads * m
    rows = batch * hm
    k_vec = kk // lanes
    red = 4 * lanes  # partial extrema of V' in 4 vector registers: 4 independent chains
    b_len = heads * kk * n
    b_vec = b_len // red
    no, nv = _n_split(n)
    zero = tvm.tirx.IntImm(wd, 0)
    # accumulator lanes: int32 with 32-bit words or one word per dot (as wide as the popcounts, and the f32
    # epilogue converts 16 lanes at a time on AVX-512); int64 over several 64-bit words (the 64-bit
    # popcounts add without narrowing)
    acc_dt = "int32" if bits == 32 or kw == 1 else "int64"

    @T.prim_func(private=True)
    def binary_matmul_rows(
        a: T.Buffer((batch, heads, m, k), "float32"),
        b: T.Buffer((batch, heads, k, n), "float32"),
        a_alpha: T.Buffer((pa,), "float32"),
        b_alpha: T.Buffer((qb,), "float32"),
        out: T.Buffer((batch, heads, m, n), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        af = T.decl_buffer((rows * kk,), "float32", data=a.data)
        bf = T.decl_buffer((batch * b_len,), "float32", data=b.data)
        rmax = T.alloc_buffer((rows,), "float32")
        thr = T.alloc_buffer((batch, 3), "float32")
        bthr = T.alloc_buffer((batch, 4), "float32")
        vs = T.alloc_buffer((batch, heads, kw, n), wd)
        vm = T.alloc_buffer((batch, heads, 2, kw, n), wd)
        vms = T.alloc_buffer((batch, heads, 2, kw, n), wd)
        vnz = T.alloc_buffer((batch, heads, 2, kw), wd)
        # -- the maximum of every row of A' (rows in parallel): the per-sample max, and a row whose max is not
        # above a plane's threshold has no bit in that plane (its packing and products are skipped)
        for r in T.parallel(rows if not a_signed else 0):
            mx = T.alloc_buffer((lanes,), "float32")
            for ln in T.vectorized(lanes):
                mx[ln] = T.min_value("float32")
            for t in range(k_vec):
                for ln in T.vectorized(lanes):
                    mx[ln] = T.max(mx[ln], af[r * kk + t * lanes + ln])
            for t in range(kk - k_vec * lanes):
                mx[0] = T.max(mx[0], af[r * kk + k_vec * lanes + t])
            for ln in range(1, lanes):
                mx[0] = T.max(mx[0], mx[ln])
            rmax[r] = mx[0]
        # -- per-sample thresholds: t = (a1 / 2, r1 max A', r2 max A'); V': (r1 max, r2 max, r1 min, r2 min)
        for s in range(batch):
            thr[s, 0] = a_alpha[0] * T.float32(0.5)
            if a_gsb:
                thr[s, 1] = T.min_value("float32")
                for i in range(hm):
                    thr[s, 1] = T.max(thr[s, 1], rmax[s * hm + i])
                thr[s, 2] = T.float32(r2) * thr[s, 1]
                thr[s, 1] = T.float32(r1) * thr[s, 1]
            if b_gsb:
                bx = T.alloc_buffer((red,), "float32")
                bn = T.alloc_buffer((red,), "float32")
                for ln in T.vectorized(red):
                    bx[ln] = T.min_value("float32")
                    bn[ln] = T.max_value("float32")
                for t in range(b_vec):
                    for ln in T.vectorized(red):
                        bx[ln] = T.max(bx[ln], bf[s * b_len + t * red + ln])
                        bn[ln] = T.min(bn[ln], bf[s * b_len + t * red + ln])
                for t in range(b_len - b_vec * red):
                    bx[0] = T.max(bx[0], bf[s * b_len + b_vec * red + t])
                    bn[0] = T.min(bn[0], bf[s * b_len + b_vec * red + t])
                for ln in range(1, red):
                    bx[0] = T.max(bx[0], bx[ln])
                    bn[0] = T.min(bn[0], bn[ln])
                bthr[s, 0] = T.float32(r1) * bx[0]
                bthr[s, 1] = T.float32(r2) * bx[0]
                bthr[s, 2] = T.float32(r1) * bn[0]
                bthr[s, 3] = T.float32(r2) * bn[0]
        # -- V' planes along K: sign words, mask words M1, M2 and (mask AND sign); (sample, head, word) parallel
        for shw in T.parallel(batch * heads * kw):
            sw = T.alloc_buffer((nv,), wd)
            m1 = T.alloc_buffer((nv,), wd)
            m2 = T.alloc_buffer((nv,), wd)
            if b_gsb:  # whether any column's mask word is non-zero: an all-zero one adds nothing to any dot
                vnz[shw // (heads * kw), shw // kw % heads, 0, shw % kw] = zero
                vnz[shw // (heads * kw), shw // kw % heads, 1, shw % kw] = zero
            for c in range(no):
                for x in T.vectorized(nv):
                    sw[x] = zero
                    m1[x] = zero
                    m2[x] = zero
                for j in range(T.min(bits, kk - shw % kw * bits)):
                    for x in T.vectorized(nv):
                        sw[x] = sw[x] | T.shift_left(
                            T.Cast(wd, b[shw // (heads * kw), shw // kw % heads, shw % kw * bits + j, c * nv + x] < 0),
                            T.Cast(wd, j),
                        )
                        if b_gsb:
                            m1[x] = m1[x] | T.shift_left(
                                T.Cast(
                                    wd,
                                    T.Or(
                                        b[shw // (heads * kw), shw // kw % heads, shw % kw * bits + j, c * nv + x]
                                        > bthr[shw // (heads * kw), 0],
                                        b[shw // (heads * kw), shw // kw % heads, shw % kw * bits + j, c * nv + x]
                                        < bthr[shw // (heads * kw), 2],
                                    ),
                                ),
                                T.Cast(wd, j),
                            )
                            m2[x] = m2[x] | T.shift_left(
                                T.Cast(
                                    wd,
                                    T.Or(
                                        b[shw // (heads * kw), shw // kw % heads, shw % kw * bits + j, c * nv + x]
                                        > bthr[shw // (heads * kw), 1],
                                        b[shw // (heads * kw), shw // kw % heads, shw % kw * bits + j, c * nv + x]
                                        < bthr[shw // (heads * kw), 3],
                                    ),
                                ),
                                T.Cast(wd, j),
                            )
                for x in T.vectorized(nv):
                    vs[shw // (heads * kw), shw // kw % heads, shw % kw, c * nv + x] = sw[x]
                    if b_gsb:
                        vm[shw // (heads * kw), shw // kw % heads, 0, shw % kw, c * nv + x] = m1[x]
                        vm[shw // (heads * kw), shw // kw % heads, 1, shw % kw, c * nv + x] = m2[x]
                        vms[shw // (heads * kw), shw // kw % heads, 0, shw % kw, c * nv + x] = m1[x] & sw[x]
                        vms[shw // (heads * kw), shw // kw % heads, 1, shw % kw, c * nv + x] = m2[x] & sw[x]
                if b_gsb:
                    for x in range(nv):
                        vnz[shw // (heads * kw), shw // kw % heads, 0, shw % kw] = (
                            vnz[shw // (heads * kw), shw // kw % heads, 0, shw % kw] | m1[x]
                        )
                        vnz[shw // (heads * kw), shw // kw % heads, 1, shw % kw] = (
                            vnz[shw // (heads * kw), shw // kw % heads, 1, shw % kw] | m2[x]
                        )
        # -- rows of A' in parallel: pack the row's planes, the plane products over its non-zero words, f32 out
        for r in T.parallel(rows):
            part = T.alloc_buffer((lanes,), wd)
            aw = T.alloc_buffer((pa, kw), wd)
            acc = T.alloc_buffer((nv,), acc_dt)
            for p in range(pa):
                if T.Or(T.bool(a_signed), rmax[r] > thr[r // hm, p]):
                    for w in range(kfull):
                        for ln in T.vectorized(lanes):
                            part[ln] = zero
                        for jo in range(jo_n):
                            for ln in T.vectorized(lanes):
                                if a_signed:
                                    part[ln] = part[ln] | T.shift_left(
                                        T.Cast(wd, af[r * kk + w * bits + jo * lanes + ln] < T.float32(0)),
                                        T.Cast(wd, jo * lanes + ln),
                                    )
                                else:
                                    part[ln] = part[ln] | T.shift_left(
                                        T.Cast(wd, af[r * kk + w * bits + jo * lanes + ln] > thr[r // hm, p]),
                                        T.Cast(wd, jo * lanes + ln),
                                    )
                        if f1 > 0:
                            for ln in T.vectorized(f1):
                                part[ln] = part[ln] | part[ln + f1]
                        if f2 > 0:
                            for ln in T.vectorized(f2):
                                part[ln] = part[ln] | part[ln + f2]
                        if f3 > 0:
                            for ln in T.vectorized(f3):
                                part[ln] = part[ln] | part[ln + f3]
                        if f4 > 0:
                            for ln in T.vectorized(f4):
                                part[ln] = part[ln] | part[ln + f4]
                        if f5 > 0:
                            for ln in T.vectorized(f5):
                                part[ln] = part[ln] | part[ln + f5]
                        aw[p, w] = part[0]
                    if tail > 0:
                        aw[p, kfull] = zero
                        for j in range(tail):
                            if a_signed:
                                aw[p, kfull] = aw[p, kfull] | T.shift_left(
                                    T.Cast(wd, af[r * kk + kfull * bits + j] < T.float32(0)), T.Cast(wd, j)
                                )
                            else:
                                aw[p, kfull] = aw[p, kfull] | T.shift_left(
                                    T.Cast(wd, af[r * kk + kfull * bits + j] > thr[r // hm, p]), T.Cast(wd, j)
                                )
            for c in range(no):
                for x in T.vectorized(nv):
                    out[r // hm, r // m % heads, r % m, c * nv + x] = T.float32(0)
            for p in range(pa):
                if T.Or(T.bool(a_signed), rmax[r] > thr[r // hm, p]):
                    for q in range(qb):
                        for c in range(no):
                            for x in T.vectorized(nv):
                                # signed A, plain V: K - 2 popcount(a XOR s), K added up front
                                acc[x] = T.Select(
                                    T.And(T.bool(a_signed), q == 0), T.Cast(acc_dt, kk), T.Cast(acc_dt, 0)
                                )
                            for w in range(kw):
                                if a_signed:
                                    for x in T.vectorized(nv):
                                        if q == 0:
                                            acc[x] = acc[x] - T.Cast(acc_dt, 2) * T.Cast(
                                                acc_dt,
                                                T.popcount(aw[p, w] ^ vs[r // hm, r // m % heads, w, c * nv + x]),
                                            )
                                        else:
                                            acc[x] = (
                                                acc[x]
                                                + T.Cast(
                                                    acc_dt,
                                                    T.popcount(vm[r // hm, r // m % heads, q - 1, w, c * nv + x]),
                                                )
                                                - T.Cast(acc_dt, 2)
                                                * T.Cast(
                                                    acc_dt,
                                                    T.popcount(
                                                        vm[r // hm, r // m % heads, q - 1, w, c * nv + x]
                                                        & (aw[p, w] ^ vs[r // hm, r // m % heads, w, c * nv + x])
                                                    ),
                                                )
                                            )
                                elif aw[p, w] != zero and (
                                    q == 0 or vnz[r // hm, r // m % heads, T.max(q - 1, 0), w] != zero
                                ):
                                    for x in T.vectorized(nv):
                                        if q == 0:
                                            acc[x] = (
                                                acc[x]
                                                + T.Cast(acc_dt, T.popcount(aw[p, w]))
                                                - T.Cast(acc_dt, 2)
                                                * T.Cast(
                                                    acc_dt,
                                                    T.popcount(aw[p, w] & vs[r // hm, r // m % heads, w, c * nv + x]),
                                                )
                                            )
                                        else:
                                            acc[x] = (
                                                acc[x]
                                                + T.Cast(
                                                    acc_dt,
                                                    T.popcount(
                                                        aw[p, w] & vm[r // hm, r // m % heads, q - 1, w, c * nv + x]
                                                    ),
                                                )
                                                - T.Cast(acc_dt, 2)
                                                * T.Cast(
                                                    acc_dt,
                                                    T.popcount(
                                                        aw[p, w] & vms[r // hm, r // m % heads, q - 1, w, c * nv + x]
                                                    ),
                                                )
                                            )
                            for x in T.vectorized(nv):
                                out[r // hm, r // m % heads, r % m, c * nv + x] = out[
                                    r // hm, r // m % heads, r % m, c * nv + x
                                ] + (a_alpha[p] * b_alpha[q]) * T.Cast("float32", acc[x])

    return binary_matmul_rows.with_attr("tirx.is_scheduled", True)
