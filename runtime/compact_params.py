"""Keep compactly stored weights compact in an artifact's params.npz, decoded once when the artifact is loaded.

An export may store a large float tensor in fewer bytes (bvit_edge.export.storage: GSB's attention bias B
as int8 + per-row scales decoded by ``DequantizeLinear``, or float16 decoded by ``Cast``; the 8-bit layers'
int8 weights decoded by ``DequantizeLinear``). Relax's FoldConstant would evaluate the decoding at compile
time and params.npz would hold a float32 copy again; decoding it inside lib.so at every inference would
cost a kernel call per tensor (FuseOps cannot merge it into the attention's softmax + add group).

:func:`keep_compact_pass` runs first in the pipeline. In ``main`` it replaces every decoding of a large
compact constant, ``dequantize(C, scale, zero_point)`` / ``astype(C, float32)`` with C int16, int8, uint8 or float16
of at least :data:`MIN_COMPACT_ELEMENTS` elements (scale and zero point constants), optionally followed by
``reshape``s, by a float32 parameter of ``main`` (appended after the image, named ``p0``, ``p1``, ... in the
same :class:`~bvit_edge.runtime.params.LiftedParams` the later lifting continues). params.npz stores C in
its own dtype, plus the scale and zero point; the manifest's ``params.decode`` says how to rebuild the
float32 tensor, and :func:`bvit_edge.runtime.param_decode.decode_params` does it when the artifact is loaded
(numpy only):

    dequantize  x = (float32(C) - float32(zero_point)) * scale   (scale per index of ``axis``, or scalar)
    cast        x = float32(C)                                    (float16 -> float32 is exact)
    then        x.reshape(shape)

The same float32 products as ONNX DequantizeLinear and TVM's dequantize (q - zp is exact in float32), so the
artifact computes what the ONNX file does, bit for bit, with no decoding at run time. Integer codes that all
lie in [-8, 7] (an int4 export: TVM cannot read 4-bit initializers, so :func:`widen_int4` gives it int8
ones) are stored two a byte (``"packing": "int4"``: element i is the low nibble of byte i // 2 when i is
even, the high nibble when odd, two's complement), as the ONNX file stores them.

:func:`cast_converter` gives TVM's ONNX importer a ``Cast`` that leaves ``Cast(float16 initializer)`` to
float32 as a ``relax.astype`` call (the stock converter evaluates it at import time, before any pass).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bvit_edge.runtime.param_decode import pack_int4

#: Compact constants with fewer elements than this are decoded at compile time (a scale or two; the same
#: threshold as the lifting of the weights into params.npz, bvit_edge.runtime.params.MIN_ELEMENTS).
MIN_COMPACT_ELEMENTS = 16
COMPACT_DTYPES = ("int16", "int8", "uint8", "float16")
ENTRY = "main"


# --------------------------------------------------------------------------------------------------------
# compile time
# --------------------------------------------------------------------------------------------------------


def _compact_const(expr: Any, min_elements: int) -> bool:
    from tvm.ir import GenericConst

    if not isinstance(expr, GenericConst):
        return False
    value = getattr(expr, "value", None)
    if value is None or not hasattr(value, "shape") or str(value.dtype) not in COMPACT_DTYPES:
        return False
    return int(np.prod([int(d) for d in value.shape])) >= min_elements


def _const_value(expr: Any) -> np.ndarray | None:
    from tvm.ir import GenericConst

    return expr.value.numpy() if isinstance(expr, GenericConst) else None


def _static_shape(expr: Any) -> list[int] | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    values = getattr(shape, "values", None)
    if values is None:
        return None
    try:
        return [int(v.value) for v in values]
    except AttributeError:
        return None


def keep_compact_pass(holder: Any, min_elements: int | None = None, entry: str = ENTRY) -> Any:
    """A module pass turning the large compact constants ``main`` decodes into float32 parameters decoded at
    load time (module docstring); fills ``holder`` (a LiftedParams) from empty and marks them kept for the
    later lifting pass. ``min_elements`` defaults to :data:`MIN_COMPACT_ELEMENTS` (read when the pass runs)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    dequantize, astype = tvm.ir.Op.get("relax.dequantize"), tvm.ir.Op.get("relax.astype")
    reshape = tvm.ir.Op.get("relax.reshape")

    def decoding(call: Any) -> dict[str, Any] | None:
        """The decode spec of ``call`` when it decodes a large compact constant into float32, else None."""
        least = MIN_COMPACT_ELEMENTS if min_elements is None else min_elements
        if not isinstance(call, relax.Call) or not call.args or not _compact_const(call.args[0], least):
            return None
        if call.op == astype and str(call.attrs.dtype) == "float32" and str(call.args[0].value.dtype) == "float16":
            return {"kind": "cast"}
        if call.op == dequantize and str(call.attrs.out_dtype) == "float32" and len(call.args) >= 3:
            scale, zero = _const_value(call.args[1]), _const_value(call.args[2])
            if scale is None or zero is None or scale.dtype != np.float32:
                return None
            return {"kind": "dequantize", "axis": int(call.attrs.axis), "scale_value": scale, "zero_value": zero}
        return None

    def chains(func: Any) -> list[tuple[Any, Any, dict[str, Any]]]:
        """(decoding call, last value of the chain, spec) for each decoding of a compact constant; the chain
        runs through ``reshape``s that are the only use of the value before them."""
        var2val = relax.analysis.get_var2val(func)
        uses: dict[Any, list[Any]] = {}
        for var, value in var2val.items():
            for used in relax.analysis.free_vars(value):
                uses.setdefault(used, []).append(var)
        for used in relax.analysis.free_vars(func.body.body):
            uses.setdefault(used, []).append(None)
        found = []
        for var, value in var2val.items():
            spec = decoding(value)
            if spec is None:
                continue
            last_var, last = var, value
            while len(uses.get(last_var, [])) == 1 and uses[last_var][0] is not None:
                nxt = uses[last_var][0]
                nval = var2val.get(nxt)
                if not (isinstance(nval, relax.Call) and nval.op == reshape):
                    break
                last_var, last = nxt, nval
            found.append((value, last, spec))
        return found

    @mutator
    class _Keep(PyExprMutator):
        def __init__(self, mod: Any, plan: list[tuple[Any, Any, dict[str, Any]]]) -> None:
            super().__init__(mod)
            self.plan = plan
            self.new_params: list[Any] = []

        def visit_call_(self, op: Any) -> Any:
            for call, last, spec in self.plan:
                shape = _static_shape(last)
                if op.same_as(last) and shape is not None:
                    return self._param(call, spec, shape)
            return super().visit_call_(op)

        def _param(self, call: Any, spec: dict[str, Any], shape: list[int]) -> Any:
            name = f"p{len(holder)}"
            var = relax.Var(name, relax.TensorType(shape, "float32"))
            self.new_params.append(var)
            entry_spec: dict[str, Any] = {"kind": spec["kind"], "shape": list(shape)}
            if spec["kind"] == "dequantize":
                entry_spec.update({"axis": spec["axis"], "scale": f"{name}.scale", "zero_point": f"{name}.zero_point"})
                holder.extras[f"{name}.scale"] = np.ascontiguousarray(spec["scale_value"])
                holder.extras[f"{name}.zero_point"] = np.ascontiguousarray(spec["zero_value"])
            data = np.ascontiguousarray(call.args[0].value.numpy())
            if data.dtype == np.int8 and data.size and int(data.min()) >= -8 and int(data.max()) <= 7:
                entry_spec.update({"packing": "int4", "stored_shape": list(data.shape)})
                data = pack_int4(data)
            holder.names.append(name)
            holder.arrays.append(data)
            holder.decode[name] = entry_spec
            return var

    @tvm.transform.module_pass(opt_level=0, name="BvitEdgeKeepCompactParams")
    def _pass(mod: Any, _ctx: Any) -> Any:
        holder.clear()
        gv = next((g for g in mod.get_global_vars() if g.name_hint == entry), None)
        func = mod[gv] if gv is not None else None
        if not isinstance(func, relax.Function):
            return mod
        plan = [c for c in chains(func) if _static_shape(c[1]) is not None]
        if not plan:
            return mod
        keep = _Keep(mod, plan)
        body = keep.visit_expr(func.body)
        holder.kept = len(holder)
        new_func = relax.Function(
            list(func.params) + keep.new_params, body, func.ret_ty, func.is_pure, func.attrs, func.span
        )
        if func.attrs is None or "num_input" not in func.attrs:  # the image input(s) first, then the weights
            new_func = new_func.with_attr("num_input", len(func.params))
        mod = mod.clone()
        mod[gv] = new_func
        return relax.transform.DeadCodeElimination([entry])(mod)  # the decodings replaced are now unused

    return _pass


def widen_int4(model: Any) -> Any:
    """``model`` (an onnx ModelProto) with its INT4 / UINT4 initializers as INT8 / UINT8 of the same values
    (a copy; the model itself when it has none)."""
    import onnx
    from onnx import numpy_helper

    four = {onnx.TensorProto.INT4: np.int8, onnx.TensorProto.UINT4: np.uint8}
    if not any(i.data_type in four for i in model.graph.initializer):
        return model
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for i, init in enumerate(work.graph.initializer):
        if init.data_type in four:
            values = numpy_helper.to_array(init).astype(four[init.data_type])
            work.graph.initializer[i].CopyFrom(numpy_helper.from_array(values, init.name))
    return work


def cast_converter(stock: Any, base: type) -> type | None:
    """An ONNX ``Cast`` converter class for TVM's importer: ``Cast(float16 constant, to=FLOAT)`` with at
    least MIN_COMPACT_ELEMENTS elements becomes ``relax.astype`` (kept for :func:`keep_compact_pass`);
    everything else goes to the stock converter ``stock``."""
    if stock is None:
        return None

    def impl(cls: type, bb: Any, inputs: list, attr: dict, params: Any) -> Any:
        from tvm import relax
        from tvm.relax.frontend.onnx.onnx_frontend import get_type

        x: Any = inputs[0] if inputs else None
        if (
            _compact_const(x, MIN_COMPACT_ELEMENTS)
            and str(x.value.dtype) == "float16"
            and str(get_type(attr["to"])) == "float32"
        ):
            return relax.op.astype(x, "float32")
        return stock.get_converter(13)(bb, inputs, attr, params)

    return type("CompactCast", (base,), {"_impl_v13": classmethod(impl)})
