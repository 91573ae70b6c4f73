"""Schedules of the binary kernels (bvit_edge.runtime.kernels), shared by all target families.

The popcount GEMM follows the measured recipe: split n by the family's ``n_tile`` -> reorder(m, n_outer,
k_words, n_inner) -> parallel over rows -> vectorize n_inner -> decompose_reduction (vectorize/parallel must
come before decompose_reduction). The epilogue (scale + bias) is computed at the (m, n_outer) tile, so the
int32 accumulators never leave the cache. Packing blocks are parallel over their rows.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from bvit_edge.runtime.schedules.family import FamilyParams


def _tile(n: int, want: int) -> int | None:
    """The n tile for a requested ``want``: ``want`` itself when it divides n (a tuned tile may be any
    divisor); else the largest power-of-two tile <= want dividing n, unless that is below 4 and some
    divisor of n between 4 and 2 * want exists (then the one closest to ``want``: 18 for n = 198 tokens,
    which LLVM runs as a 16-wide plus a 2-wide vector); None when n has no divisor >= 2."""
    if want >= 2 and n % want == 0:
        return want
    t = want
    while t >= 2:
        if n % t == 0:
            break
        t //= 2
    if t >= 4:
        return t
    near = [d for d in range(4, 2 * want + 1) if n % d == 0]
    if near:
        return min(near, key=lambda d: (abs(d - want), -d))
    return t if t >= 2 else None


def _finish(sch: s_tir.Schedule) -> tvm.tirx.PrimFunc:
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_binary_linear(func: tvm.tirx.PrimFunc, params: FamilyParams) -> tvm.tirx.PrimFunc:
    """Schedule a :func:`binary_linear_kernel` prim func for a target family."""
    sch = s_tir.Schedule(func)
    pack, acc, out = sch.get_sblock("pack"), sch.get_sblock("acc"), sch.get_sblock("out")
    i, n, k = sch.get_loops(acc)
    n_len = int(sch.get(n).extent)
    tile = _tile(n_len, params.n_tile)
    if tile is not None and params.vector_popcount:
        no, ni = sch.split(n, [None, tile])
        sch.reorder(i, no, k, ni)
        sch.parallel(i)
        sch.reverse_compute_at(out, no)
        sch.vectorize(sch.get_loops(out)[-1])
        sch.vectorize(ni)
    else:
        # scalar popcount per word (AVX2 alternative to the vpshufb lookup): k innermost, so the loop
        # reads W with stride N and LLVM keeps it scalar (popcnt)
        sch.parallel(i)
        sch.reverse_compute_at(out, i)
    sch.decompose_reduction(acc, k)
    _schedule_pack_rows(sch, pack, params.float_lanes)
    return _finish(sch)


def _schedule_pack_rows(sch: s_tir.Schedule, pack, lanes: int) -> None:
    """Activation packing a[rows..., w] = sum_j bit(x[rows..., w*B + j]) << j: rows (fused) in parallel;
    per word the B bits are split into ``lanes`` vector lanes (rfactor: compare, shift and add ``lanes``
    floats at a time, then add the lanes), instead of B serial compare-shift-or steps. The bits are
    disjoint, so the sum is the OR. Serial bit loop when B is not a multiple of ``lanes``."""
    loops = sch.get_loops(pack)
    rows, j = loops[:-2], loops[-1]
    bits = int(sch.get(j).extent)
    sch.parallel(sch.fuse(*rows) if len(rows) > 1 else rows[0])
    if lanes < 2 or bits % lanes or bits == lanes:
        sch.decompose_reduction(pack, j)
        return
    _, lane = sch.split(j, [None, lanes])
    rf = sch.rfactor(lane, len(loops) - 1)
    sch.compute_at(rf, sch.get_loops(pack)[1])
    inner = sch.get_loops(rf)[2:]  # (lane, j_outer) in some order under (rows, w)
    # the lane loop is the one bound to the rf block's spatial lane iter; when B / lanes == lanes (64 bits,
    # 8 lanes: AVX2) both loops have the same extent, so try each: vectorizing the reduction loop is refused
    for lane_loop in [lp for lp in inner if int(sch.get(lp).extent) == lanes]:
        rest = [lp for lp in inner if not lp.same_as(lane_loop)]
        sch.reorder(*rest, lane_loop)
        loops = sch.get_loops(rf)
        try:
            sch.vectorize(loops[-1])
        except s_tir.ScheduleError:
            continue
        sch.decompose_reduction(rf, loops[-2])
        return
    raise RuntimeError("bvit_edge: no vectorizable lane loop in the packing block (a schedule bug).")


def _vector_lanes_reduction(sch: s_tir.Schedule, blk, lanes: int) -> None:
    """Block (sample; reduce over the rest) -> per-sample partial results in ``lanes`` vector lanes."""
    loops = sch.get_loops(blk)
    red = sch.fuse(*loops[1:])
    total = int(sch.get(red).extent)
    t = _tile(total, lanes)
    if t is None:
        return
    _, ri = sch.split(red, [None, t])
    rf = sch.rfactor(ri, 1)
    r_o, r_i = sch.get_loops(rf)[-2:]
    sch.vectorize(r_i)
    sch.decompose_reduction(rf, r_o)


def schedule_binary_matmul(func: tvm.tirx.PrimFunc, params: FamilyParams) -> tvm.tirx.PrimFunc:
    """Schedule a :func:`binary_matmul_kernel` prim func (attention products) for a target family."""
    sch = s_tir.Schedule(func)
    # per-sample max/min (gsb planes): a float max chain is latency bound, so rfactor it into vector lanes
    for name in ("a_max", "b_max", "b_min"):
        try:
            blk = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - the mode has no such plane
            continue
        _vector_lanes_reduction(sch, blk, params.float_lanes)
    # packing of A: rows (plane, sample, head, row, word) in parallel, 64 bits OR-reduced inside
    # packing of A: rows (plane, sample, head, row) in parallel, the word's bits serial. Splitting the bits
    # into vector lanes (as BinaryLinear does) measured 1.4x-3.3x slower here: A's reads are clamped at
    # K (pad bits), which turns the vector loads into gathers.
    _schedule_pack_rows(sch, sch.get_sblock("pack_a"), 0)
    # packing of V along K: (sample, head, word) in parallel, the n loop inner (contiguous reads)
    for name in ("pack_b", "mask_b"):
        blk = sch.get_sblock(name)
        loops = sch.get_loops(blk)
        sch.parallel(sch.fuse(*loops[:-2]))
        jb, nb = sch.get_loops(blk)[-2:]
        btile = _tile(int(sch.get(nb).extent), params.float_lanes)
        if btile is not None:
            _, nbi = sch.split(nb, [None, btile])
            sch.vectorize(nbi)
        sch.decompose_reduction(blk, jb)
    blk = sch.get_sblock("mask_sign_b")
    loops = sch.get_loops(blk)
    sch.parallel(sch.fuse(*loops[:-1]))
    # plane products: rows (sample, head, row) in parallel; per row all plane pairs, n tiled and vectorized
    # inside the words loop; the f32 epilogue runs per row while its int32 accumulators are in L1
    acc = sch.get_sblock("acc")
    s0, h, i, p, q, n, w = sch.get_loops(acc)
    n_len = int(sch.get(n).extent)
    tile = _tile(n_len, params.n_tile)
    row = sch.fuse(s0, h, i)
    sch.parallel(row)
    if tile is not None:
        no, ni = sch.split(n, [None, tile])
        sch.reorder(p, q, no, w, ni)
        if params.vector_popcount:
            sch.vectorize(ni)
    out = sch.get_sblock("out")
    sch.reverse_compute_at(out, row)
    inner = sch.get_loops(out)[1:]
    ext = [int(sch.get(lp).extent) for lp in inner]
    n_loop = inner[ext.index(n_len)] if n_len in ext else None
    red = [lp for lp, e in zip(inner, ext, strict=True) if lp is not n_loop]
    ftile = _tile(n_len, params.float_lanes)
    if n_loop is not None:
        if red:  # the plane sums keep their order (i outer, j inner); n is vectorized inside them
            sch.reorder(*red, n_loop)
        if ftile is not None:
            _, oni = sch.split(n_loop, [None, ftile])
            sch.vectorize(oni)
        if red:
            sch.decompose_reduction(out, red[0])
    sch.decompose_reduction(acc, w)
    return _finish(sch)
