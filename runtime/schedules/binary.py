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
    """Largest power-of-two tile <= want dividing n (>= 2), or None."""
    t = want
    while t >= 2:
        if n % t == 0:
            return t
        t //= 2
    return None


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
    sch.parallel(sch.get_loops(pack)[0])
    sch.decompose_reduction(pack, sch.get_loops(pack)[-1])
    return _finish(sch)


def _vector_lanes_reduction(sch: s_tir.Schedule, blk, lanes: int) -> None:
    """Block (sample; reduce over the rest) -> per-sample partial results in ``lanes`` vector lanes."""
    loops = sch.get_loops(blk)
    red = sch.fuse(*loops[1:])
    total = int(sch.get(red).extent)
    t = _tile(total, lanes)
    if t is None:
        return
    ro, ri = sch.split(red, [None, t])
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
    pack_a = sch.get_sblock("pack_a")
    loops = sch.get_loops(pack_a)
    sch.parallel(sch.fuse(*loops[:4]))
    # the init out of the 64-bit loop: a clean OR-reduction LLVM vectorizes
    sch.decompose_reduction(pack_a, sch.get_loops(pack_a)[-1])
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
    red = [lp for lp, e in zip(inner, ext) if lp is not n_loop]
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
