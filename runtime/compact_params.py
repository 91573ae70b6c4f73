"""Keep compactly stored weights compact in an artifact: decode them in lib.so at run time, not at compile time.

An export may store a large float tensor in fewer bytes (bvit_edge.export.storage: GSB's attention bias B
as int8 + per-row scales decoded by ``DequantizeLinear``, or float16 decoded by ``Cast``). Relax's
FoldConstant would evaluate ``dequantize(int8 constant)`` / ``astype(float16 constant)`` at compile time and
the parameter lifting (bvit_edge.runtime.params) would then save the float32 result: params.npz would hold
a float32 copy of B again.

:func:`keep_compact_pass` runs before legalization: in ``main`` every int8 / uint8 / float16 constant with at
least :data:`MIN_COMPACT_ELEMENTS` elements that is the data operand of ``relax.dequantize`` or
``relax.astype`` becomes a parameter of ``main`` in its stored dtype (appended after the image, numbered
``p0``, ``p1``, ... in the same :class:`~bvit_edge.runtime.params.LiftedParams` the later lifting
continues). Its decoding is then an ordinary elementwise op that FuseOps merges into its consumer (for B:
the add of the attention probabilities), so it costs no extra kernel call. Smaller compact constants
(a LayerNorm weight stored as float16) are still decoded at compile time: their float32 copies are a few
hundred bytes, and a run-time decode of each would be one more kernel call per inference.

:func:`cast_converter` gives TVM's ONNX importer a ``Cast`` that leaves ``Cast(float16 initializer)`` to
float32 as a ``relax.astype`` call (the stock converter evaluates it at import time, before any pass).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Compact constants with fewer elements than this are decoded at compile time.
MIN_COMPACT_ELEMENTS = 4096
COMPACT_DTYPES = ("int8", "uint8", "float16")
ENTRY = "main"


def _compact_const(expr: Any, min_elements: int) -> bool:
    from tvm.ir import GenericConst  # noqa: PLC0415

    if not isinstance(expr, GenericConst):
        return False
    value = getattr(expr, "value", None)
    if value is None or not hasattr(value, "shape") or str(value.dtype) not in COMPACT_DTYPES:
        return False
    return int(np.prod([int(d) for d in value.shape])) >= min_elements


def keep_compact_pass(holder: Any, min_elements: int = MIN_COMPACT_ELEMENTS, entry: str = ENTRY) -> Any:
    """A module pass turning the large compact constants that ``main`` decodes into parameters (see the
    module docstring); fills ``holder`` (a LiftedParams) from empty and marks them kept for the later
    lifting pass."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415
    from tvm.relax.expr_functor import PyExprMutator, mutator  # noqa: PLC0415

    decoders = {tvm.ir.Op.get("relax.dequantize"), tvm.ir.Op.get("relax.astype")}

    @mutator
    class _Keep(PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.by_handle: dict[int, Any] = {}
            self.new_params: list[Any] = []
            self.keep: list[Any] = []

        def _param(self, const: Any) -> Any:
            key = int(const.__chandle__())
            var = self.by_handle.get(key)
            if var is None:
                name = f"p{len(holder)}"
                var = relax.Var(name, const.ty)
                self.by_handle[key] = var
                self.new_params.append(var)
                self.keep.append(const)
                holder.names.append(name)
                holder.arrays.append(np.ascontiguousarray(const.value.numpy()))
            return var

        def visit_call_(self, op: Any) -> Any:  # noqa: N802 - TVM's name
            call = super().visit_call_(op)
            if call.op in decoders and call.args and _compact_const(call.args[0], min_elements):
                args = [self._param(call.args[0])] + list(call.args[1:])
                return relax.Call(call.op, args, call.attrs, call.ty_args, call.span)
            return call

    @tvm.transform.module_pass(opt_level=0, name="BvitEdgeKeepCompactParams")
    def _pass(mod: Any, _ctx: Any) -> Any:
        holder.clear()
        holder.kept = 0
        gv = next((g for g in mod.get_global_vars() if g.name_hint == entry), None)
        func = mod[gv] if gv is not None else None
        if not isinstance(func, relax.Function):
            return mod
        keep = _Keep(mod)
        body = keep.visit_expr(func.body)
        holder.kept = len(holder)
        if not keep.new_params:
            return mod
        new_func = relax.Function(list(func.params) + keep.new_params, body, func.ret_ty, func.is_pure,
                                  func.attrs, func.span)
        if func.attrs is None or "num_input" not in func.attrs:  # the image input(s) first, then the weights
            new_func = new_func.with_attr("num_input", len(func.params))
        mod = mod.clone()
        mod[gv] = new_func
        return mod

    return _pass


def cast_converter(stock: Any, base: type) -> type | None:
    """An ONNX ``Cast`` converter class for TVM's importer: ``Cast(float16 constant, to=FLOAT)`` with at
    least MIN_COMPACT_ELEMENTS elements becomes ``relax.astype`` (kept for :func:`keep_compact_pass`);
    everything else goes to the stock converter ``stock``."""
    if stock is None:
        return None

    def impl(cls: type, bb: Any, inputs: list, attr: dict, params: Any) -> Any:
        from tvm import relax  # noqa: PLC0415
        from tvm.relax.frontend.onnx.onnx_frontend import get_type  # noqa: PLC0415

        x = inputs[0] if inputs else None
        if _compact_const(x, MIN_COMPACT_ELEMENTS) and str(x.value.dtype) == "float16" \
                and str(get_type(attr["to"])) == "float32":
            return relax.op.astype(x, "float32")
        return stock.get_converter(13)(bb, inputs, attr, params)

    return type("CompactCast", (base,), {"_impl_v13": classmethod(impl)})
