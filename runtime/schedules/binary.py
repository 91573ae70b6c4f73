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
    if tile is not None:
        no, ni = sch.split(n, [None, tile])
        sch.reorder(i, no, k, ni)
        sch.parallel(i)
        sch.reverse_compute_at(out, no)
        sch.vectorize(sch.get_loops(out)[-1])
        if params.vector_popcount:
            sch.vectorize(ni)
    else:
        sch.parallel(i)
        sch.reverse_compute_at(out, i)
    sch.decompose_reduction(acc, k)
    sch.parallel(sch.get_loops(pack)[0])
    return _finish(sch)


def schedule_binary_matmul(func: tvm.tirx.PrimFunc, params: FamilyParams) -> tvm.tirx.PrimFunc:
    """Schedule a :func:`binary_matmul_kernel` prim func (attention products) for a target family."""
    sch = s_tir.Schedule(func)
    # packing of A: rows (plane, sample, head, row, word) in parallel, 64 bits OR-reduced inside
    pack_a = sch.get_sblock("pack_a")
    loops = sch.get_loops(pack_a)
    sch.parallel(sch.fuse(*loops[:4]))
    # packing of V along K: (sample, head, word) in parallel, the n loop inner (contiguous reads)
    for name in ("pack_b", "mask_b"):
        blk = sch.get_sblock(name)
        loops = sch.get_loops(blk)
        spatial_outer = loops[:-2]
        sch.parallel(sch.fuse(*spatial_outer))
    # plane products: (p, q, sample, head, row) in parallel, n tiled and vectorized over the words loop
    acc = sch.get_sblock("acc")
    loops = sch.get_loops(acc)
    p, q, s0, h, i, n, w = loops
    n_len = int(sch.get(n).extent)
    tile = _tile(n_len, params.n_tile)
    outer = sch.fuse(p, q, s0, h, i)
    if tile is not None:
        no, ni = sch.split(n, [None, tile])
        sch.reorder(outer, no, w, ni)
        sch.parallel(outer)
        if params.vector_popcount:
            sch.vectorize(ni)
    else:
        sch.parallel(outer)
    sch.decompose_reduction(acc, w)
    out = sch.get_sblock("out")
    loops = sch.get_loops(out)
    sch.parallel(sch.fuse(*loops[:3]))
    return _finish(sch)
