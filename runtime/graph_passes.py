"""Generic Relax graph rewrites that cut copies and kernel launches before legalize + fuse.

An imported ViT graph carries layout glue that costs whole passes over activations if it is lowered as is:

* **identity reshapes** (``reshape(x, shape)`` with ``shape == x.shape``, left by converters that reshape to
  a rank they already have): each one is a copy kernel, and as an injective op it also stops FuseOps from
  fusing an elementwise producer into a reduction (the 1/sqrt(d) scale into the softmax). Dropped.
* **take of a permuted tensor** (the qkv split: ``take(permute_dims(reshape(qkv)), i, axis=0)`` three times):
  the permute materializes all of q, k and v in a new layout, then each take copies a third of it.
  Rewritten ``permute_dims(reshape(strided_slice(reshape(qkv), i, axis=axes[0])), axes')``: the reshape
  of qkv is a view, and each of q, k, v becomes one fused kernel (slice + permute + the next elementwise
  op) reading the projection's output directly. (A slice, not a take: FuseOps treats take as opaque.)

Two more change float rounding by at most an ulp, the way onnxruntime's own fused kernels do:

* **division by a scalar constant** (GELU's x / sqrt(2), the logits / 2) becomes a multiplication by its
  reciprocal: a vector division costs ~10x a multiplication (onnxruntime's Gelu kernel multiplies by
  1/sqrt(2) too);
* **softmax over the last axis, with the scale before it** (``softmax(x * c)``, attention's 1/sqrt(d))
  becomes one kernel of our own (:func:`scaled_softmax_te`): the scale inside it (it was a separate pass
  over the scores: FuseOps does not fuse a producer into softmax), and e / sum computed as e * (1 / sum)
  (one division per row, as MLAS does). The elementwise op after it (GSB's + B) still fuses into it.

One fusion into the binary GEMMs: a **residual add of a BinaryLinear's output** (``x + proj(...)``,
``x + fc2(...)``: an add of two tensors of the same shape, one of them the reshaped output of a BinaryLinear
kernel used nowhere else) becomes that kernel with the add in its epilogue, y = (scale * dot + bias) + x
(bvit_edge.runtime.tvm_frontend.linear_kernel_with_residual): one pass over the output instead of two, and
the same float sum (IEEE addition commutes).

And one for the float GEMMs: a **matmul whose column count is not a multiple of the vector width** (the
float teacher's q k^T over 198 tokens) is split into a vector-aligned part and a narrow tail (two matmuls
and a concatenation): the aligned part gets the register-blocked schedule, where an odd vector width
(198 = 11 x 18) measured 40x slower.

The first two rewrites and the split are exact (they move or drop data movement only). :func:`graph_passes` returns the
passes for bvit_edge.runtime.compile.relax_pipeline, after a constant folding that turns the importer's
index computations into constants; they run before FastMathTransform (``fast_math`` picks the exp).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _static_dims(ty: Any) -> list[int] | None:
    shape = getattr(ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None or not all(hasattr(d, "value") for d in values):
        return None
    return [int(d.value) for d in values]


def _scalar_index(expr: Any) -> int | None:
    from tvm.ir.expr import Constant

    if isinstance(expr, Constant):
        value = expr.value.numpy()
        if value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
            return int(value)
    return None


def _scalar_float(expr: Any) -> float | None:
    from tvm.ir.expr import Constant

    if isinstance(expr, Constant):
        value = expr.value.numpy()
        if value.size == 1 and np.issubdtype(value.dtype, np.floating):
            return float(value.reshape(()))
    return None


def _row_index(row: tuple, last: Any) -> tuple:
    """The index (row..., last) of one element of a row."""
    return (*row, last)


def scaled_softmax_te(x: Any, scale: float | None, fast_exp: bool) -> Any:
    """softmax(x * scale) over the last axis as a TE compute (the blocks topi's softmax has, the scale
    inlined into their reads, and the normalisation e * (1 / sum)):

        m = max_j x_j s;  e_j = exp(x_j s - m);  y_j = e_j * (1 / sum_j e_j)

    ``fast_exp``: TVM's vectorizable exp approximation (topi.math.fast_exp), else the exact exp."""
    import tvm
    from tvm import te, topi

    shape = list(x.shape)
    rows, length = shape[:-1], shape[-1]
    c = None if scale is None else tvm.tirx.const(scale, x.dtype)

    def value(*idx: Any) -> Any:
        return x[idx] if c is None else x[idx] * c

    k1 = te.reduce_axis((0, length), name="k")
    mx = te.compute(rows, lambda *r: te.max(value(*r, k1), axis=k1), name="T_softmax_maxelem")
    if fast_exp:
        delta = te.compute(shape, lambda *i: value(*i) - mx[i[:-1]], name="T_softmax_delta")
        e = topi.math.fast_exp(delta)
    else:
        e = te.compute(shape, lambda *i: te.exp(value(*i) - mx[i[:-1]]), name="T_softmax_exp")
    k2 = te.reduce_axis((0, length), name="k")
    total = te.compute(rows, lambda *r: te.sum(e[_row_index(r, k2)], axis=k2), name="T_softmax_expsum")
    inv = te.compute(rows, lambda *r: tvm.tirx.const(1.0, x.dtype) / total[r], name="T_softmax_inv")
    return te.compute(shape, lambda *i: e[i] * inv[i[:-1]], name="T_softmax_norm")


def layout_glue_pass(fast_math: bool = True, vector_lanes: int = 0) -> Any:
    """A module pass (every Relax function) doing the rewrites of the module docstring."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, PyExprVisitor, mutator, visitor

    reshape_op = tvm.ir.Op.get("relax.reshape")
    permute_op = tvm.ir.Op.get("relax.permute_dims")
    take_op = tvm.ir.Op.get("relax.take")
    divide_op = tvm.ir.Op.get("relax.divide")
    multiply_op = tvm.ir.Op.get("relax.multiply")
    softmax_op = tvm.ir.Op.get("relax.nn.softmax")
    matmul_op = tvm.ir.Op.get("relax.matmul")
    add_op = tvm.ir.Op.get("relax.add")
    call_tir_op = tvm.ir.Op.get("relax.call_tir")
    # the module being rewritten and, per function, how often each variable (by name) is used
    state: dict[str, Any] = {"mod": None, "uses": {}}

    @visitor
    class _Uses(PyExprVisitor):
        def visit_var_(self, op: Any) -> None:
            state["uses"][op.name] = state["uses"].get(op.name, 0) + 1

        def visit_dataflow_var_(self, op: Any) -> None:
            state["uses"][op.name] = state["uses"].get(op.name, 0) + 1

    @mutator
    class _Glue(PyExprMutator):
        def visit_call_(self, op: Any) -> Any:
            call = super().visit_call_(op)
            if not isinstance(call, relax.Call):
                return call
            if call.op.same_as(reshape_op):
                src = _static_dims(call.args[0].ty)
                if src is not None and src == _static_dims(call.ty):
                    return call.args[0]
            elif call.op.same_as(take_op):
                return self._take_through_permute(call)
            elif call.op.same_as(divide_op):
                return self._divide_by_constant(call)
            elif call.op.same_as(softmax_op):
                return self._softmax(call)
            elif call.op.same_as(matmul_op):
                return self._split_unaligned_matmul(call)
            elif call.op.same_as(add_op):
                return self._residual_into_linear(call)
            return call

        def _residual_into_linear(self, call: Any) -> Any:
            from bvit_edge.runtime.tvm_frontend import LINEAR_KERNEL_ATTR, linear_kernel_with_residual

            dims = _static_dims(call.ty)
            if dims is None or str(getattr(call.ty, "dtype", "")) != "float32":
                return call
            uses = state["uses"]
            for side in (0, 1):
                y, r = call.args[side], call.args[1 - side]
                if _static_dims(r.ty) != dims or not isinstance(y, relax.Var) or uses.get(y.name, 0) != 1:
                    continue
                prod = self.lookup_binding(y)
                if isinstance(prod, relax.Call) and prod.op.same_as(reshape_op):
                    src = prod.args[0]
                    if not isinstance(src, relax.Var) or uses.get(src.name, 0) != 1:
                        continue
                    prod = self.lookup_binding(src)
                if not (isinstance(prod, relax.Call) and prod.op.same_as(call_tir_op)):
                    continue
                gv = prod.args[0]
                func = state["mod"][gv] if isinstance(gv, tvm.ir.GlobalVar) and gv in state["mod"] else None
                spec = None if func is None or func.attrs is None else func.attrs.get(LINEAR_KERNEL_ATTR)
                out_dims = _static_dims(prod.ty)
                if spec is None or out_dims is None or int(np.prod(out_dims)) != int(np.prod(dims)):
                    continue
                fused = self.builder_.add_func(linear_kernel_with_residual(str(spec)), gv.name_hint + "_residual")
                res = self.builder_.normalize(relax.op.reshape(r, out_dims))
                args = [*prod.args[1].fields, res]
                out = self.builder_.normalize(relax.call_tir(fused, args, relax.TensorType(out_dims, "float32")))
                return relax.op.reshape(out, dims)
            return call

        def _split_unaligned_matmul(self, call: Any) -> Any:
            a, b = call.args[0], call.args[1]
            da, db = _static_dims(a.ty), _static_dims(b.ty)
            if (
                not vector_lanes
                or not da
                or not db
                or len(da) < 2
                or len(db) < 2
                or da[-2] < 2
                or str(call.ty.dtype) != "float32"
            ):
                return call
            n = db[-1]
            main = n // vector_lanes * vector_lanes
            if main == 0 or main == n:
                return call
            axis = len(db) - 1
            parts = []
            for begin, end in ((0, main), (main, n)):
                cols = self.builder_.normalize(relax.op.strided_slice(b, axes=[axis], begin=[begin], end=[end]))
                parts.append(self.builder_.normalize(relax.op.matmul(a, cols, out_dtype=call.attrs.out_dtype)))
            return relax.op.concat(parts, axis=len(_static_dims(call.ty) or db) - 1)

        def _divide_by_constant(self, call: Any) -> Any:
            c = _scalar_float(call.args[1])
            dtype = getattr(call.ty, "dtype", None)
            if c is None or c == 0.0 or not np.isfinite(c) or str(dtype) != "float32":
                return call
            return relax.op.multiply(call.args[0], relax.const(np.float32(1.0) / np.float32(c), "float32"))

        def _softmax(self, call: Any) -> Any:
            x = call.args[0]
            dims = _static_dims(x.ty)
            if not dims or int(call.attrs.axis) % len(dims) != len(dims) - 1 or str(x.ty.dtype) != "float32":
                return call
            scale = None
            producer = self.lookup_binding(x) if isinstance(x, relax.Var) else x
            if isinstance(producer, relax.Call) and producer.op.same_as(multiply_op):
                c = _scalar_float(producer.args[1])
                if c is not None and c > 0 and _static_dims(producer.args[0].ty) == dims:
                    x, scale = producer.args[0], c
            return self.builder_.call_te(scaled_softmax_te, x, scale, fast_math, primfunc_name_hint="scaled_softmax")

        def _take_through_permute(self, call: Any) -> Any:
            data, index = call.args[0], call.args[1]
            i = _scalar_index(index)
            if i is None or call.attrs.axis is None:
                return call
            producer = self.lookup_binding(data) if isinstance(data, relax.Var) else data
            if not (isinstance(producer, relax.Call) and producer.op.same_as(permute_op)):
                return call
            src = producer.args[0]
            rank = len(_static_dims(src.ty) or [])
            if not rank:
                return call
            axes = producer.attrs.axes
            axes = list(range(rank))[::-1] if axes is None else [int(a) for a in axes]
            axis = int(call.attrs.axis) % rank
            src_axis = axes[axis]
            kept = [a for a in axes if a != src_axis]  # source axes in output order, the taken one gone
            new_axes = [a - (a > src_axis) for a in kept]
            dims = _static_dims(src.ty) or []
            if not 0 <= i < dims[src_axis]:
                return call
            # a slice (injective, so FuseOps fuses it with its neighbours; take is opaque to it) + a reshape
            # dropping the axis
            sliced = self.builder_.normalize(relax.op.strided_slice(src, axes=[src_axis], begin=[i], end=[i + 1]))
            taken = self.builder_.normalize(relax.op.reshape(sliced, dims[:src_axis] + dims[src_axis + 1 :]))
            if new_axes == list(range(len(new_axes))):
                return taken
            return relax.op.permute_dims(taken, new_axes)

    @tvm.transform.module_pass(opt_level=0, name="BvitEdgeLayoutGlue")
    def _pass(mod: Any, _ctx: Any) -> Any:
        glue = _Glue(mod)
        state["mod"] = mod
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                state["uses"] = {}
                _Uses().visit_expr(func)
                glue.builder_.update_func(gv, glue.visit_expr(func))
        return glue.builder_.get()

    return _pass


def graph_passes(fast_math: bool = True, vector_lanes: int = 0) -> list[Any]:
    """The rewrites to run on the imported module before FastMathTransform and legalize (constants folded
    first, dead bindings removed after). ``vector_lanes``: f32 lanes of the target's vectors (0: no matmul
    split)."""
    from tvm import relax

    return [
        relax.transform.FoldConstant(),
        layout_glue_pass(fast_math, vector_lanes),
        relax.transform.DeadCodeElimination(),
    ]


__all__ = ["graph_passes", "layout_glue_pass"]
