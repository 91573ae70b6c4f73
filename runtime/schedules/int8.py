"""Schedules of the 8-bit kernels (bvit_edge.runtime.kernels.int8_linear, int8_weight_linear).

W8A8 linear (``int8_linear``): the ``acc`` block's loops (m, tile, group, lane, c) are reordered to
(m, tile_outer | group | tile_inner, lane, c): ``n_block`` tiles of ``lanes`` int32 accumulators each are
kept in registers over the whole reduction (independent chains, so the dot instructions' latency is
hidden), the (m, tile_outer) pairs run in parallel, and the (lane, c) pair is tensorized with the
scheme's dot instruction (bvit_edge.runtime.kernels.int8_dot). The epilogue runs per tile, vectorized.

W8 x f32 linear (``int8_weight_linear``): see :func:`schedule_int8_weight_linear`.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from bvit_edge.runtime.kernels.int8_dot import DotScheme, register_intrinsic


def _finish(sch: s_tir.Schedule) -> tvm.tirx.PrimFunc:
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _vectorize_flat(sch: s_tir.Schedule, blk, lanes: int) -> None:
    """All loops of ``blk`` fused, split by ``lanes`` when it divides: outer parallel, inner vectorized."""
    loops = sch.get_loops(blk)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = int(sch.get(fused).extent)
    if ext % lanes == 0 and ext > lanes:
        outer, inner = sch.split(fused, [None, lanes])
        sch.parallel(outer)
        sch.vectorize(inner)
    elif ext <= 4 * lanes:
        sch.vectorize(fused)
    else:
        sch.parallel(fused)


def schedule_int8_linear(
    func: tvm.tirx.PrimFunc, scheme: DotScheme, n_block: int, float_lanes: int
) -> tvm.tirx.PrimFunc:
    """Schedule an :func:`~bvit_edge.runtime.kernels.int8_linear.int8_linear_kernel` prim func (built with the
    same ``scheme`` and ``n_block``) for a target whose f32 vectors hold ``float_lanes`` lanes."""
    sch = s_tir.Schedule(func)
    quant, acc, out = sch.get_sblock("quant"), sch.get_sblock("acc"), sch.get_sblock("out")
    i, t, g, lane, c = sch.get_loops(acc)
    to, ti = sch.split(t, [None, n_block])
    sch.reorder(i, to, g, ti, lane, c)
    par = sch.fuse(i, to)
    sch.parallel(par)
    local = sch.cache_write(acc, 0, "global")
    sch.reverse_compute_at(local, par)
    sch.reverse_compute_at(out, par)
    try:  # the epilogue reads the register tile directly (no int32 round trip through memory)
        sch.compute_inline(local)
    except Exception:  # noqa: BLE001 - kept as a copy block at the tile
        sch.vectorize(sch.get_loops(local)[-1])
    sch.vectorize(sch.get_loops(out)[-1])
    intrin = register_intrinsic(scheme)
    if intrin is None:  # lanes innermost (the group loop outside them), plain vector multiply-adds;
        sch.reorder(c, lane)  # vectorize must precede decompose_reduction
        sch.vectorize(lane)
    sch.decompose_reduction(acc, g)
    init = sch.get_sblock("acc_init")
    sch.vectorize(sch.get_loops(init)[-1])
    if intrin is not None:
        sch.tensorize(lane, intrin)
    sch.unroll(ti)
    _vectorize_flat(sch, quant, float_lanes)
    return _finish(sch)


def register_tile(rows: int, cols: int, lanes: int, registers: int, max_vectors: int = 4) -> tuple[int, int]:
    """(row block, vectors per row) of a float GEMM's register tile: rows x vectors accumulators of
    ``lanes`` floats, at most three quarters of the ``registers`` (the rest hold the loaded vectors, the
    broadcast and addresses: 7 x 4 of 32 zmm measured 2x slower than 7 x 3 on a patch embedding). Picks the
    pair with most FMAs per load, rows*vectors / (rows + vectors), among row blocks dividing ``rows`` and
    vector counts dividing ``cols / lanes``; ties go to more accumulators."""
    budget = max(1, registers * 3 // 4)
    best, best_score = (1, 1), -1.0
    for vt in range(1, max_vectors + 1):
        if cols % (vt * lanes):
            continue
        for rt in range(1, min(rows, 16) + 1):
            if rows % rt or rt * vt > budget:
                continue
            score = rt * vt / (rt + vt) + 1e-3 * rt * vt
            if score > best_score:
                best, best_score = (rt, vt), score
    return best


def schedule_int8_weight_linear(func: tvm.tirx.PrimFunc, row_block: int, vectors: int, lanes: int) -> tvm.tirx.PrimFunc:
    """Schedule an :func:`~bvit_edge.runtime.kernels.int8_weight_linear.int8_weight_linear_kernel` prim func.

    Loops (panel | row block | k... | rows in the block (unrolled), vectors (unrolled), lanes (vectorized)):
    the panels run in parallel; each dequantizes its [K, panel] weights once into a float buffer (computed
    at the panel loop, vectorized) and reuses it for every row block; ``row_block`` x ``vectors`` float
    vectors of accumulators stay in registers over the whole reduction (the k order is unchanged); the
    bias epilogue is written per block. ``vectors * lanes`` must equal the kernel's panel width.
    """
    sch = s_tir.Schedule(func)
    dq, acc, out = sch.get_sblock("dequant"), sch.get_sblock("acc"), sch.get_sblock("out")
    loops = sch.get_loops(acc)
    n_rows = len(sch.get(out).iter_vars) - 1  # 1 for a linear, 2 (patch row, column) for a patch embedding
    rows, j, red = loops[:n_rows], loops[n_rows], loops[n_rows + 1 :]
    panel = vectors * lanes
    p, jj = sch.split(j, [None, panel])
    io, ii = sch.split(rows[-1], [None, row_block])
    sch.reorder(p, *rows[:-1], io, *red, ii, jj)
    sch.parallel(p)
    sch.compute_at(dq, p)
    dql = sch.get_loops(dq)
    sch.vectorize(sch.split(dql[-1], [None, lanes])[1] if int(sch.get(dql[-1]).extent) % lanes == 0 else dql[-1])
    local = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(local, io)
    sch.reverse_compute_at(out, io)  # (the tile's rows: io with the patch row above it)
    try:
        sch.compute_inline(local)
    except Exception:  # noqa: BLE001 - kept as a copy block at the tile
        sch.vectorize(sch.get_loops(local)[-1])
    ol = sch.get_loops(out)
    if int(sch.get(ol[-1]).extent) % lanes == 0:
        vo, vi = sch.split(ol[-1], [None, lanes])
        sch.vectorize(vi)
    sch.unroll(ii)
    vo, vi = sch.split(jj, [None, lanes])
    sch.unroll(vo)
    sch.vectorize(vi)
    sch.decompose_reduction(acc, red[0])
    return _finish(sch)


__all__ = ["register_tile", "schedule_int8_linear", "schedule_int8_weight_linear"]
