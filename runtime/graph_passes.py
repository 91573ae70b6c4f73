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

Both rewrites are exact (they move or drop data movement only). :func:`graph_passes` returns them as a
list for bvit_edge.runtime.compile.relax_pipeline, after a constant folding that turns the importer's
index computations into constants.
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
    from tvm.ir.expr import Constant  # noqa: PLC0415 - relax.Constant moved to tvm.ir in 0.27

    if isinstance(expr, Constant):
        value = expr.value.numpy()
        if value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
            return int(value)
    return None


def layout_glue_pass() -> Any:
    """A function pass (on every Relax function) doing both rewrites of the module docstring."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415
    from tvm.relax.expr_functor import PyExprMutator, mutator  # noqa: PLC0415

    reshape_op = tvm.ir.Op.get("relax.reshape")
    permute_op = tvm.ir.Op.get("relax.permute_dims")
    take_op = tvm.ir.Op.get("relax.take")

    @mutator
    class _Glue(PyExprMutator):
        def visit_call_(self, op: Any) -> Any:  # noqa: D102 - TVM's visitor name
            call = super().visit_call_(op)
            if not isinstance(call, relax.Call):
                return call
            if call.op.same_as(reshape_op):
                src = _static_dims(call.args[0].ty)
                if src is not None and src == _static_dims(call.ty):
                    return call.args[0]
            elif call.op.same_as(take_op):
                return self._take_through_permute(call)
            return call

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
            dims = _static_dims(src.ty)
            if not 0 <= i < dims[src_axis]:
                return call
            # a slice (injective, so FuseOps fuses it with its neighbours; take is opaque to it) + a reshape
            # dropping the axis
            sliced = self.builder_.normalize(relax.op.strided_slice(src, axes=[src_axis], begin=[i], end=[i + 1]))
            taken = self.builder_.normalize(relax.op.reshape(sliced, dims[:src_axis] + dims[src_axis + 1 :]))
            if new_axes == list(range(len(new_axes))):
                return taken
            return relax.op.permute_dims(taken, new_axes)

    @relax.transform.function_pass(opt_level=0, name="BvitEdgeLayoutGlue")
    class _Pass:
        def transform_function(self, func: Any, mod: Any, _ctx: Any) -> Any:
            return _Glue(mod).visit_expr(func)

    return _Pass()


def graph_passes() -> list[Any]:
    """The rewrites to run on the imported module before legalize (constants folded first)."""
    from tvm import relax  # noqa: PLC0415

    return [relax.transform.FoldConstant(), layout_glue_pass(), relax.transform.DeadCodeElimination()]


__all__ = ["graph_passes", "layout_glue_pass"]
