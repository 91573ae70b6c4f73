"""Schedules for every float op of a model (patch embed, LayerNorm, softmax, GELU, heads, adds, ...).

Applied as dlight rules on the legalized, fused Relax module (prim funcs already scheduled, such as the
binary kernels, are skipped), in this order:

0. :class:`ReshapeRule` - a func that only reshapes (relax.analysis.has_reshape_pattern) is left as it is,
   so the pipeline's RewriteDataflowReshape turns its call into a view (vm.builtin.reshape, no copy); a
   scheduled loop nest no longer has the pattern and would stay a copy kernel.
1. :class:`InjectiveRule` - elementwise/injective funcs (adds, GELU + clip, reshapes/transposes, casts):
   inline what can be inlined, then per remaining block: a transpose (the innermost output axis reads an
   input with a stride, contiguous along another axis) in tiles staged through a local buffer
   (:func:`_tile_transpose`); otherwise rows (all but the innermost loop, fused) in parallel and the
   innermost loop vectorized in chunks of the vector width plus a vector tail; when the innermost loop is
   short, all loops fused, split by the vector width, parallel outer, vectorized inner.
2. :class:`TiledReductionRule` - one reduction block first (float matmuls of the patch embedding and the
   heads, convolutions, means) with its elementwise epilogue: the innermost output axis is split by the
   vector width and moved inside the reduction loops (the popcount GEMM recipe, for f32 FMAs), the outer
   spatial axes run in parallel, the epilogue is computed per output tile. Matmul-shaped blocks with
   several rows are register-blocked: rows x vectors accumulators sized to the register file (7 x 3 or
   6 x 4 zmm with AVX-512) kept over the whole reduction, column panels outside the row blocks (the
   196x768x384 patch embedding: 4 x 2 ran at ~115 GFLOP/s, 7 x 3 at ~160, onnxruntime's MLAS ~165).
3. :class:`RowReductionRule` - LayerNorm / softmax shaped funcs (row reductions over the last axis
   followed by an elementwise block over the same rows): rows in parallel, every block computed per row,
   each row reduction split into vector lanes (rfactor) so it is not one serial add/max chain, the
   elementwise blocks vectorized (a row whose length is not a multiple of the vector width is partitioned
   into a vector part and a short tail, so no predicate forces scalar code).
4. dlight.cpu.Reduction - other reduction-then-injective funcs, then :class:`TiledReductionRule` again
   for any other reduction layout.
5. :class:`ParallelFallbackRule` - whatever is left: the outermost spatial loop in parallel, so no loop
   nest runs unscheduled and single-threaded.
"""

from __future__ import annotations

import contextlib

import tvm
from tvm import s_tir
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.sym.pattern import detect_linear_equation

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


class ReshapeRule(ScheduleRule):
    """Keep pure reshapes unscheduled (see the module docstring, rule 0)."""

    def apply(self, func, target, _tunable):
        from tvm import relax

        if not isinstance(func, tvm.tirx.PrimFunc) or not relax.analysis.has_reshape_pattern(func):
            return None
        return s_tir.Schedule(func)


class InjectiveRule(ScheduleRule):
    """Parallel + vectorized schedule for funcs whose blocks are all spatial (no reduction)."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def apply(self, func, target, _tunable):
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or not infos or any(not bi.is_injective() for bi in infos):
            return None
        blocks = [bi.block_rv for bi in infos]
        for blk in blocks[:-1]:
            with contextlib.suppress(Exception):  # a block that cannot be inlined keeps its own loop nest
                sch.compute_inline(blk)
        for bi in infos:
            try:
                blk = sch.get_sblock(sch.get(bi.block_rv).name_hint)
            except Exception:  # noqa: BLE001 - inlined
                continue
            loops = sch.get_loops(blk)
            if not loops:
                continue
            inner_ext = _extent(sch, loops[-1])
            if _tile_transpose(sch, blk, max(2, self.lanes // 2)):
                continue
            if len(loops) > 1 and inner_ext and inner_ext >= max(2, self.lanes // 2):
                # rows in parallel, each row vectorized (chunks + a vector tail): no vector div/mod of a
                # fused index when the row length is not a multiple of the width (K^T: 198 tokens,
                # 94 -> 53 us for DeiT-S's [6, 64, 198])
                outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
                sch.parallel(outer)
                _vectorize_row_loop(sch, loops[-1], inner_ext, self.lanes)
                continue
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            ext = _extent(sch, fused)
            tile = _divisor_tile(ext, self.lanes) if ext else None
            if tile is not None and ext is not None and ext > tile:
                outer, inner = sch.split(fused, [None, tile])
                sch.parallel(outer)
                sch.vectorize(inner)
            else:
                sch.parallel(fused)
        return sch


def _transposed_read(sch: s_tir.Schedule, blk) -> tuple[int, int] | None:
    """(read index, loop index k) when the block reads an input buffer contiguously along its loop k but with
    a stride along its innermost loop (a transpose: the innermost output axis walks the input's rows), else
    None. Block variables are taken to follow the loop order (one loop each, as legalized ops have)."""
    block = sch.get(blk)
    loops = sch.get_loops(blk)
    ivars = [iv.var for iv in block.iter_vars]
    if len(ivars) != len(loops) or len(loops) < 2:
        return None
    for i, region in enumerate(block.reads):
        if len(region.region) < 2:
            continue
        coeffs = detect_linear_equation(region.region[-1].min, ivars)
        if not coeffs:
            continue
        c = [int(v.value) if isinstance(v, tvm.tirx.IntImm) else None for v in coeffs[:-1]]
        if c[-1] != 0:
            continue
        unit = [k for k in range(len(c) - 1) if c[k] == 1]
        if len(unit) == 1:
            return i, unit[0]
    return None


def _tile_transpose(sch: s_tir.Schedule, blk, vec: int) -> bool:
    """Schedule a transposing block as tiles (``vec`` input rows x ``vec`` output rows): each tile is read
    into a local buffer along the input's contiguous axis (vector loads), then written along the output's
    (vector stores gathering from the tile in L1), the tiles of a row band in parallel. Reading the input
    with a stride per element instead (the row rule) measured 3.7x slower on DeiT-S's K^T. True when
    applied."""
    found = _transposed_read(sch, blk)
    if found is None:
        return False
    idx, k = found
    loops = sch.get_loops(blk)
    ext_in, ext_out = _extent(sch, loops[k]), _extent(sch, loops[-1])
    if not ext_in or not ext_out or ext_in < vec or ext_out < vec:
        return False

    def chunk(n: int) -> int | None:
        return vec if n % vec == 0 else _lane_chunk(n, vec)

    t_in, t_out = chunk(ext_in), chunk(ext_out)
    if not t_in or not t_out or t_in < vec // 2 or t_out < vec // 2:
        return False
    outer = [lp for j, lp in enumerate(loops[:-1]) if j != k]
    ko, ki = sch.split(loops[k], [None, t_in])
    io, ii = sch.split(loops[-1], [None, t_out])
    sch.reorder(*outer, ko, io, ki, ii)
    par = sch.fuse(*outer, ko) if outer else ko
    sch.parallel(par)
    tile = sch.cache_read(blk, idx, "local")
    sch.compute_at(tile, io)
    sch.vectorize(sch.get_loops(tile)[-1])
    sch.vectorize(ii)
    return True


class TiledReductionRule(ScheduleRule):
    """One reduction block (f32 matmul / conv / mean) plus an elementwise epilogue.

    The reduction's innermost output axis is split by the vector width and moved inside the reduction
    loops (the popcount GEMM recipe, for f32 FMAs), the outer spatial axes run in parallel; the epilogue
    is inlined into one block computed at the same output tile (vectorized), or, where its indexing does
    not allow that, scheduled on its own (fused, parallel, vectorized). ``first_only``: only funcs whose
    single reduction block comes first (so LayerNorm/softmax shapes go to dlight's Reduction rule).
    """

    def __init__(self, lanes: int, first_only: bool = True, vector_lanes: int = 0, registers: int = 16) -> None:
        self.lanes = lanes
        self.first_only = first_only
        self.vector_lanes = vector_lanes  # f32 lanes of one vector register (0: no register-file sizing)
        self.registers = registers

    def apply(self, func, target, _tunable):
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
            with contextlib.suppress(Exception):  # not inlinable: scheduled on its own below
                sch.compute_inline(sch.get_sblock(name))
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
        rows = _extent(sch, outer_s[-1]) if outer_s else None
        row_tile = _row_block(rows) if rows else None
        if tile is not None and row_tile is not None and kinds == "S" * len(s_idx) + "R" * len(r_idx):
            return self._register_block(sch, blk, outer_s, inner_s, red, row_tile, tile)
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
        with contextlib.suppress(Exception):  # an init that cannot be hoisted stays in the block
            sch.decompose_reduction(blk, red[0])
        return at

    def _register_block(self, sch: s_tir.Schedule, blk, outer_s, inner_s, red, row_tile: int, tile: int):
        """GEMM register blocking: a (rows x vectors) block of outputs is accumulated in registers
        (cache_write to a local buffer) over the whole reduction, so every vector of the right-hand side
        loaded is used ``rows`` times and every broadcast ``vectors`` times. The block is sized to the
        register file (bvit_edge.runtime.schedules.int8.register_tile: at most 3/4 of the registers, most
        FMAs per load) when the columns are a multiple of the vector width, else ``row_tile`` x ``tile``.
        Loops (outer..., column panel, row block | red... | rows unrolled, vectors unrolled, lanes
        vectorized): the column panel outside the rows, so one panel of the right-hand side (K x panel)
        stays in cache while every row block uses it; the tiles in parallel. The sum over k keeps its
        order (identical results)."""
        from bvit_edge.runtime.schedules.int8 import register_tile

        rows, cols = _extent(sch, outer_s[-1]), _extent(sch, inner_s)
        vectors = 0
        if self.vector_lanes and rows and cols and cols % self.vector_lanes == 0:
            # (a column count that is no multiple of the vector width keeps the plain tile: an odd vector
            # width such as 18 = 16 + 2 measured 40x slower in the register block)
            rt, vt = register_tile(rows, cols, self.vector_lanes, self.registers)
            if rt > 1 or rows == 1:
                row_tile, tile, vectors = rt, vt * self.vector_lanes, vt
        ro, ri = sch.split(outer_s[-1], [None, row_tile])
        so, si = sch.split(inner_s, [None, tile])
        sch.reorder(*outer_s[:-1], so, ro, *red, ri, si)
        par = sch.fuse(*outer_s[:-1], so, ro)
        sch.parallel(par)
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, par)
        sch.unroll(ri)
        if vectors > 1:  # one native vector per instruction: an unrolled loop of vectors, not a wide vector
            vo, vi = sch.split(si, [vectors, None])
            sch.unroll(vo)
            sch.vectorize(vi)
        else:
            sch.vectorize(si)
        sch.vectorize(sch.get_loops(acc)[-1])
        sch.decompose_reduction(blk, red[0])
        return par


def _row_block(rows: int) -> int | None:
    """Rows of a register block: 4 (or 7, 5, 6, 3, 2) when it divides the row count, else None (no blocking
    for a single row: a head on the class token)."""
    if rows < 2:
        return None
    for r in (4, 7, 5, 6, 3, 2):
        if rows % r == 0:
            return r
    return None


def _lane_chunk(length: int, lanes: int) -> int | None:
    """The divisor d of ``length`` (2 <= d <= 2 * lanes) giving most elements per vector instruction.

    A d-wide vector op costs d // lanes full ops plus one op per set bit of d % lanes (LLVM splits an
    odd-sized vector into power-of-two pieces): 198 with 16 lanes -> 18 (= 16 + 2).
    """
    best, best_score = None, 0.0
    for d in range(2, min(length, 2 * lanes) + 1):
        if length % d:
            continue
        pieces = d // lanes + bin(d % lanes).count("1")
        score = d / pieces
        if score > best_score or (score == best_score and best is not None and d > best):
            best, best_score = d, score
    return best


def _vectorize_row_loop(sch: s_tir.Schedule, loop, length: int, lanes: int) -> None:
    """Vectorize a loop over one row: ``lanes``-wide chunks plus a short vector tail when not divisible."""
    main = (length // lanes) * lanes
    if main == length:
        _, inner = sch.split(loop, [None, lanes])
        sch.vectorize(inner)
        return
    if main == 0:
        sch.vectorize(loop)
        return
    body, tail = sch.loop_partition(loop, [main])
    _, inner = sch.split(body, [None, lanes])
    sch.vectorize(inner)
    if length - main > 1:
        sch.vectorize(tail)


class RowReductionRule(ScheduleRule):
    """Row-wise funcs: reductions over the last axis feeding an elementwise block (LayerNorm, softmax).

    Shape contract (checked, otherwise the rule declines): the last block is spatial over [rows..., L];
    every other block is either spatial over [rows..., L] or [rows...], or a reduction whose spatial axes
    are [rows...] and whose one reduction axis has extent L. Spatial intermediates with one consumer (or
    only row-sized) are inlined; the rows are fused and run in parallel; every block is computed inside
    the row loop (its buffers shrink to one row and stay in L1); each reduction is rfactored into ``d``
    vector lanes (d from :func:`_lane_chunk`) and finished by a d-step serial reduction; the elementwise
    blocks are vectorized (:func:`_vectorize_row_loop`).
    """

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def apply(self, func, target, _tunable):
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        try:
            return self._apply(func)
        except Exception:  # noqa: BLE001 - a func this rule cannot schedule goes to the next rule
            return None

    def _apply(self, func):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or len(infos) < 2:
            return None
        names = [sch.get(bi.block_rv).name_hint for bi in infos]
        kinds = {n: bi.dom_kind() for n, bi in zip(names, infos, strict=True)}
        out = names[-1]
        if "R" in kinds[out]:
            return None
        out_ext = [_extent(sch, lp) for lp in sch.get_loops(sch.get_sblock(out))]
        if len(out_ext) < 2 or any(e is None for e in out_ext):
            return None
        dims = [e for e in out_ext if e is not None]  # all of them (checked above)
        rows, length = dims[:-1], dims[-1]
        if not any("R" in kinds[n] for n in names[:-1]):
            return None
        for n in names[:-1]:
            ext = [_extent(sch, lp) for lp in sch.get_loops(sch.get_sblock(n))]
            if "R" in kinds[n]:
                if kinds[n] != "S" * len(rows) + "R" or ext != [*rows, length]:
                    return None
            elif ext not in ([*rows, length], rows):
                return None
        for n in names[:-1]:
            if "R" in kinds[n]:
                continue
            blk = sch.get_sblock(n)
            if len(sch.get_consumers(blk)) == 1 or len(kinds[n]) < len(out_ext):
                with contextlib.suppress(Exception):  # kept as its own per-row block
                    sch.compute_inline(blk)
        live = []
        for n in names:
            try:
                sch.get_sblock(n)
                live.append(n)
            except Exception:  # noqa: BLE001 - inlined
                pass
        d = _lane_chunk(length, self.lanes)
        order, rfs = [], []
        for n in live[:-1]:
            blk = sch.get_sblock(n)
            if "R" in kinds[n] and d is not None:
                _, lane = sch.split(sch.get_loops(blk)[-1], [None, d])
                rf = sch.rfactor(lane, 0)
                rfs.append(sch.get(rf).name_hint)
                order += [rf, sch.get_sblock(n)]
            else:
                order.append(blk)
        ob = sch.get_sblock(out)
        loops = sch.get_loops(ob)
        row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        sch.parallel(row)
        for blk in reversed(order):
            sch.compute_at(blk, row, preserve_unit_loops=False)
        for name in rfs:
            rf = sch.get_sblock(name)
            inner = sch.get_loops(rf)[1:]
            lane = [lp for lp in inner if _extent(sch, lp) == d][-1]
            rest = [lp for lp in inner if not lp.same_as(lane)]
            if rest:
                sch.reorder(*rest, lane)
            sch.vectorize(lane)
            if rest:
                sch.decompose_reduction(rf, rest[0])
        for blk in order:
            name = sch.get(blk).name_hint
            if name in rfs or "R" in kinds.get(name, "R"):
                continue
            inner = sch.get_loops(blk)[1:]
            if len(inner) == 1:
                _vectorize_row_loop(sch, inner[0], length, self.lanes)
        _vectorize_row_loop(sch, sch.get_loops(ob)[-1], length, self.lanes)
        return sch


def _fuse_parallel_vectorize(sch: s_tir.Schedule, blk, lanes: int) -> None:
    loops = sch.get_loops(blk)
    if not loops:
        return
    try:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        ext = _extent(sch, fused)
        tile = _divisor_tile(ext, lanes) if ext else None
        if tile is not None and ext is not None and ext > tile:
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
    with contextlib.suppress(Exception):  # the outer loop is a reduction: leave it serial
        sch.parallel(loops[0])


class ParallelFallbackRule(ScheduleRule):
    """Last resort: every block's outermost loop in parallel (when it is a spatial loop)."""

    def apply(self, func, target, _tunable):
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
        ReshapeRule(),
        InjectiveRule(lanes),
        TiledReductionRule(lanes, first_only=True, vector_lanes=params.float_lanes, registers=params.float_registers),
        RowReductionRule(params.float_lanes),
        dlight.cpu.Reduction(),
        TiledReductionRule(lanes, first_only=False, vector_lanes=params.float_lanes, registers=params.float_registers),
        ParallelFallbackRule(),
    ]


def float_schedule_pass(params: FamilyParams) -> tvm.transform.Pass:
    """A module pass scheduling every unscheduled prim func with :func:`float_rules` (under a target)."""
    return dlight.ApplyDefaultSchedule(*float_rules(params))
