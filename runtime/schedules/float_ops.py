"""Schedules for every float op of a model (patch embed, LayerNorm, softmax, GELU, heads, adds, ...).

Applied as dlight rules on the legalized, fused Relax module (prim funcs already scheduled, such as the
binary kernels, are skipped), in this order:

1. :class:`InjectiveRule` - elementwise/injective funcs (adds, GELU + clip, reshapes/transposes, casts):
   inline what can be inlined, then per remaining block fuse all loops, split by the vector width,
   parallel over the outer part and vectorize the inner part.
2. :class:`TiledReductionRule` - one reduction block first (float matmuls of the patch embedding and the
   heads, convolutions, means) with its elementwise epilogue: the innermost output axis is split by the
   vector width and moved inside the reduction loops (the popcount GEMM recipe, for f32 FMAs), the outer
   spatial axes run in parallel, the epilogue is computed per output tile.
3. dlight.cpu.Reduction - LayerNorm / softmax shaped funcs (row reductions followed by an injective block),
   then :class:`TiledReductionRule` again for any other reduction layout.
4. :class:`ParallelFallbackRule` - whatever is left: the outermost spatial loop in parallel, so no loop
   nest runs unscheduled and single-threaded.
"""

from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule

from bvit_edge.runtime.schedules.family import FamilyParams


def _divisor_tile(extent: int, want: int) -> int | None:
    t = want
    while t >= 2:
        if extent % t == 0:
            return t
        t //= 2
    return None


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tvm.tirx.IntImm) else None


class InjectiveRule(ScheduleRule):
    """Parallel + vectorized schedule for funcs whose blocks are all spatial (no reduction)."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def apply(self, func, target, _tunable):  # noqa: D102
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or not infos or any(not bi.is_injective() for bi in infos):
            return None
        blocks = [bi.block_rv for bi in infos]
        for blk in blocks[:-1]:
            try:
                sch.compute_inline(blk)
            except Exception:  # noqa: BLE001 - a block that cannot be inlined keeps its own loop nest
                pass
        for bi in infos:
            try:
                blk = sch.get_sblock(sch.get(bi.block_rv).name_hint)
            except Exception:  # noqa: BLE001 - inlined
                continue
            loops = sch.get_loops(blk)
            if not loops:
                continue
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            ext = _extent(sch, fused)
            tile = _divisor_tile(ext, self.lanes) if ext else None
            if tile is not None and ext > tile:
                outer, inner = sch.split(fused, [None, tile])
                sch.parallel(outer)
                sch.vectorize(inner)
            else:
                sch.parallel(fused)
        return sch


class TiledReductionRule(ScheduleRule):
    """One reduction block (f32 matmul / conv / mean) plus an elementwise epilogue.

    The reduction's innermost output axis is split by the vector width and moved inside the reduction
    loops (the popcount GEMM recipe, for f32 FMAs), the outer spatial axes run in parallel; the epilogue
    is inlined into one block computed at the same output tile (vectorized), or, where its indexing does
    not allow that, scheduled on its own (fused, parallel, vectorized). ``first_only``: only funcs whose
    single reduction block comes first (so LayerNorm/softmax shapes go to dlight's Reduction rule).
    """

    def __init__(self, lanes: int, first_only: bool = True) -> None:
        self.lanes = lanes
        self.first_only = first_only

    def apply(self, func, target, _tunable):  # noqa: D102
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or not infos:
            return None
        reds = [bi for bi in infos if not bi.is_injective()]
        if self.first_only and (len(reds) != 1 or reds[0] is not infos[0]):
            return None
        if not reds:
            return None
        names = [sch.get(bi.block_rv).name_hint for bi in infos]
        red_names = {sch.get(bi.block_rv).name_hint for bi in reds}
        tail = [n for n in names if n not in red_names]
        # inline the elementwise epilogue chain into its last block
        for name in tail[:-1]:
            try:
                sch.compute_inline(sch.get_sblock(name))
            except Exception:  # noqa: BLE001 - not inlinable: scheduled on its own below
                pass
        tile_loops = {}
        for bi in reds:
            name = sch.get(bi.block_rv).name_hint
            tile_loops[name] = self._tile_reduction(sch, sch.get_sblock(name), bi.dom_kind())
        for name in tail:
            try:
                blk = sch.get_sblock(name)
            except Exception:  # noqa: BLE001 - inlined
                continue
            at = tile_loops.get(next(iter(red_names))) if len(reds) == 1 else None
            placed = False
            if at is not None and name == tail[-1]:
                try:
                    sch.reverse_compute_at(blk, at)
                    loops = sch.get_loops(blk)
                    inner = loops[-1]
                    ext = _extent(sch, inner)
                    if ext and ext > 1 and ext <= 64:
                        sch.vectorize(inner)
                    placed = True
                except Exception:  # noqa: BLE001
                    placed = False
            if not placed:
                _fuse_parallel_vectorize(sch, blk, self.lanes)
        return sch

    def _tile_reduction(self, sch: s_tir.Schedule, blk, kinds: str):
        loops = sch.get_loops(blk)
        if len(kinds) != len(loops):
            _parallel_outer(sch, blk)
            return None
        s_idx = [i for i, c in enumerate(kinds) if c == "S"]
        r_idx = [i for i, c in enumerate(kinds) if c == "R"]
        if not r_idx or not s_idx:
            _parallel_outer(sch, blk)
            return None
        inner_s = loops[s_idx[-1]]
        ext = _extent(sch, inner_s)
        tile = _divisor_tile(ext, self.lanes) if ext else None
        outer_s = [loops[i] for i in s_idx[:-1]]
        red = [loops[i] for i in r_idx]
        if tile is not None:
            so, si = sch.split(inner_s, [None, tile])
            sch.reorder(*outer_s, so, *red, si)
            if outer_s:
                par = sch.fuse(*outer_s, so)
            else:
                par = so
            sch.parallel(par)
            sch.vectorize(si)
            at = par
        else:
            sch.reorder(*outer_s, inner_s, *red)
            par = sch.fuse(*outer_s, inner_s) if outer_s else inner_s
            sch.parallel(par)
            at = par
        try:
            sch.decompose_reduction(blk, red[0])
        except Exception:  # noqa: BLE001 - an init that cannot be hoisted stays in the block
            pass
        return at


def _fuse_parallel_vectorize(sch: s_tir.Schedule, blk, lanes: int) -> None:
    loops = sch.get_loops(blk)
    if not loops:
        return
    try:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        ext = _extent(sch, fused)
        tile = _divisor_tile(ext, lanes) if ext else None
        if tile is not None and ext > tile:
            outer, inner = sch.split(fused, [None, tile])
            sch.parallel(outer)
            sch.vectorize(inner)
        else:
            sch.parallel(fused)
    except Exception:  # noqa: BLE001 - a loop nest that cannot be fused keeps a parallel outer loop
        _parallel_outer(sch, blk)


def _parallel_outer(sch: s_tir.Schedule, blk, vectorize_lanes: int = 0) -> None:
    loops = sch.get_loops(blk)
    if not loops:
        return
    try:
        sch.parallel(loops[0])
    except Exception:  # noqa: BLE001 - the outer loop is a reduction: leave it serial
        pass


class ParallelFallbackRule(ScheduleRule):
    """Last resort: every block's outermost loop in parallel (when it is a spatial loop)."""

    def apply(self, func, target, _tunable):  # noqa: D102
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        for bi in infos:
            _parallel_outer(sch, bi.block_rv)
        return sch


def float_rules(params: FamilyParams) -> list[ScheduleRule]:
    """The rule list applied, in order, to every unscheduled float prim func."""
    lanes = params.float_lanes * 2
    return [
        InjectiveRule(lanes),
        TiledReductionRule(lanes, first_only=True),
        dlight.cpu.Reduction(),
        TiledReductionRule(lanes, first_only=False),
        ParallelFallbackRule(),
    ]


def float_schedule_pass(params: FamilyParams) -> tvm.transform.Pass:
    """A module pass scheduling every unscheduled prim func with :func:`float_rules` (under a target)."""
    return dlight.ApplyDefaultSchedule(*float_rules(params))
