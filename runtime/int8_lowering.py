"""Lowering of the 8-bit layers (ONNX QuantizeLinear / DequantizeLinear around Conv, Gemm, MatMul) to the
integer kernels of bvit_edge.runtime.kernels, called by the converters of bvit_edge.runtime.tvm_frontend.

TVM's importer turns ``DequantizeLinear(W, s, 0)`` into ``relax.dequantize`` and ``QuantizeLinear`` into
``relax.quantize``; the converters of Conv/Gemm/MatMul receive those calls (or variables bound to them)
as their inputs, and this module recognizes:

* weights ``dequantize(W int8 constant, s constant, zero point 0, axis = output channel)`` (per channel, or
  one scale);
* activations ``dequantize(quantize(x, s_a, 0 int8), s_a, 0)`` with one constant scale s_a (the W8A8 form).

W8A8 (both) becomes the integer GEMM (``int8_linear``: exact int32 accumulators, the dot instruction of the
target); W8A32 (float activations) becomes ``int8_weight_linear`` (the float GEMM with the weights kept
int8). Either way the weights are int8 constants in the module, so they stay int8 in ``params.npz``. A node
of any other form returns None and goes to the stock converter (float, dequantized weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Int8Weight:
    """W int8 with its float scale per output (n,) and the output axis of the ONNX tensor."""

    codes: np.ndarray
    scale: np.ndarray
    axis: int


def _resolve(bb: Any, expr: Any) -> Any:
    """``expr`` with variables replaced by the value they are bound to (as far as the builder knows)."""
    from tvm import relax

    seen = 0
    while isinstance(expr, relax.Var) and seen < 16:
        value = bb.lookup_binding(expr)
        if value is None:
            break
        expr, seen = value, seen + 1
    return expr


def _call_of(bb: Any, expr: Any, op_name: str) -> Any | None:
    from tvm import relax

    expr = _resolve(bb, expr)
    if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == op_name:
        return expr
    return None


def _const(bb: Any, expr: Any) -> np.ndarray | None:
    from tvm.ir.expr import Constant

    expr = _resolve(bb, expr)
    return expr.value.numpy() if isinstance(expr, Constant) else None


def int8_weight(bb: Any, expr: Any, out_axis: int) -> Int8Weight | None:
    """The int8 weight behind ``expr`` = dequantize(W const int8, s const, 0), scaled along ``out_axis``
    (per output channel) or by one scale; None for anything else."""
    call = _call_of(bb, expr, "relax.dequantize")
    if call is None:
        return None
    w, s, zp = (_const(bb, a) for a in call.args[:3])
    if w is None or s is None or zp is None or w.dtype != np.int8 or np.any(zp != 0):
        return None
    axis = int(call.attrs.axis) % max(w.ndim, 1)
    n = w.shape[out_axis % w.ndim]
    s = np.asarray(s, np.float32)
    if s.size == 1:
        scale = np.full(n, s.reshape(()), np.float32)
    elif s.ndim == 1 and s.size == n and axis == out_axis % w.ndim:
        scale = s.copy()
    else:
        return None
    return Int8Weight(w, scale, out_axis % w.ndim)


def quantized_activation(bb: Any, expr: Any) -> tuple[Any, float] | None:
    """(x, s_a) when ``expr`` = dequantize(quantize(x, s_a, 0 -> int8), s_a, 0) with one constant s_a."""
    deq = _call_of(bb, expr, "relax.dequantize")
    if deq is None:
        return None
    q = _call_of(bb, deq.args[0], "relax.quantize")
    if q is None or str(q.attrs.out_dtype) != "int8":
        return None
    consts = [_const(bb, a) for a in (q.args[1], q.args[2], deq.args[1], deq.args[2])]
    if any(v is None or v.size != 1 for v in consts):
        return None
    s1, z1, s2, z2 = (float(np.asarray(v).reshape(())) for v in consts)
    if z1 != 0 or z2 != 0 or s1 != s2:
        return None
    scale = float(np.float32(s1))
    if not scale > 0:
        return None
    return q.args[0], scale


def _static_shape(expr: Any) -> list[int] | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    values = getattr(shape, "values", None)
    if values is None or not all(hasattr(d, "value") for d in values):
        return None
    return [int(d.value) for d in values]


def _add_kernel(bb: Any, func: Any, name: str) -> Any:
    # op_pattern 8 (kOpaque): FuseOps must not merge the scheduled kernel with its neighbours.
    return bb.add_func(func.with_attr("op_pattern", 8), name)


def _linear_w8a8(bb: Any, x: Any, a_scale: float, w_nk: Int8Weight, bias: np.ndarray | None, fam: Any) -> Any:
    """y[..., N] = int8_linear(x[..., K]) for W [N, K]."""
    from tvm import relax

    from bvit_edge.runtime.kernels.int8_dot import dot_scheme, offset_correction, pack_weights
    from bvit_edge.runtime.kernels.int8_linear import int8_linear_kernel
    from bvit_edge.runtime.schedules.int8 import schedule_int8_linear

    xs = _static_shape(x)
    n, k = w_nk.codes.shape
    if xs is None or not xs or xs[-1] != k:
        return None
    m = int(np.prod(xs[:-1])) if len(xs) > 1 else 1
    scheme = dot_scheme(fam.int8_dot)
    n_block = _n_block(n, scheme.lanes)
    packed = pack_weights(w_nk.codes, scheme, n_block)
    corr = offset_correction(w_nk.codes, scheme, packed.shape[0] * scheme.lanes)
    func = schedule_int8_linear(int8_linear_kernel(m, k, n, scheme, n_block), scheme, n_block, fam.float_lanes)
    gv = _add_kernel(bb, func, f"bvit_int8_linear_{scheme.name}")
    b = np.zeros(n, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(n)
    args = [
        bb.normalize(relax.op.reshape(x, (m, k))),
        relax.const(np.array([a_scale], np.float32)),
        relax.const(packed),
        relax.const(w_nk.scale.astype(np.float32)),
        relax.const(b),
        relax.const(corr),
    ]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((m, n), "float32")))
    return relax.op.reshape(y, (*xs[:-1], n)) if len(xs) != 2 else y


def _n_block(n: int, lanes: int) -> int:
    """Independent accumulator tiles per parallel task: 4 (latency of the dot instructions hidden) unless
    N is so small that padding to 4 tiles would waste most of it."""
    tiles = -(-n // lanes)
    return 4 if tiles >= 8 else max(1, min(2, tiles))


def _linear_w8a32(bb: Any, x: Any, w_nk: Int8Weight, bias: np.ndarray | None, fam: Any) -> Any:
    """y[..., N] = int8_weight_linear(x[..., K]) for W [N, K] and float x."""
    from tvm import relax

    from bvit_edge.runtime.kernels.int8_weight_linear import (
        int8_weight_linear_kernel,
        pack_weight_panels,
        pad_vector,
    )
    from bvit_edge.runtime.schedules.int8 import register_tile, schedule_int8_weight_linear

    xs = _static_shape(x)
    n, k = w_nk.codes.shape
    if xs is None or not xs or xs[-1] != k:
        return None
    m = int(np.prod(xs[:-1])) if len(xs) > 1 else 1
    lanes = fam.float_lanes
    rows, vectors = register_tile(m, _round_up(n, lanes), lanes, fam.float_registers)
    panel = vectors * lanes
    pn = -(-n // panel) * panel
    func = schedule_int8_weight_linear(int8_weight_linear_kernel(m, k, n, panel), rows, vectors, lanes)
    gv = _add_kernel(bb, func, "bvit_int8_weight_linear")
    b = np.zeros(n, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(n)
    args = [
        bb.normalize(relax.op.reshape(x, (m, k))),
        relax.const(pack_weight_panels(w_nk.codes, panel)),
        relax.const(pad_vector(w_nk.scale, pn)),
        relax.const(pad_vector(b, pn)),
    ]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((m, n), "float32")))
    return relax.op.reshape(y, (*xs[:-1], n)) if len(xs) != 2 else y


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def linear(bb: Any, a: Any, b: Any, bias: Any, fam: Any, b_transposed: bool) -> Any | None:
    """``a @ B (+ bias)`` with 8-bit B (B [K, N], or [N, K] when ``b_transposed``): the integer kernel, or None."""
    w = int8_weight(bb, b, 0 if b_transposed else 1)
    if w is None or w.codes.ndim != 2:
        return None
    codes = w.codes if b_transposed else np.ascontiguousarray(w.codes.T)
    w_nk = Int8Weight(codes, w.scale, 0)
    bias_v = None
    if bias is not None:
        bias_v = _const(bb, bias)
        if bias_v is None or bias_v.size != codes.shape[0]:
            return None
    qa = quantized_activation(bb, a)
    if qa is not None:
        return _linear_w8a8(bb, qa[0], qa[1], w_nk, bias_v, fam)
    return _linear_w8a32(bb, a, w_nk, bias_v, fam)


def gemm(bb: Any, inputs: list, attr: dict, fam: Any) -> Any | None:
    """ONNX Gemm(A, B, C) with alpha = beta = 1, transA = 0 and 8-bit B: the integer kernel, or None."""
    if float(attr.get("alpha", 1.0)) != 1.0 or float(attr.get("beta", 1.0)) != 1.0 or int(attr.get("transA", 0)):
        return None
    c = inputs[2] if len(inputs) > 2 else None
    return linear(bb, inputs[0], inputs[1], c, fam, bool(int(attr.get("transB", 0))))


def matmul(bb: Any, inputs: list, fam: Any) -> Any | None:
    """ONNX MatMul(A, B) with 8-bit B [K, N]: the integer kernel, or None."""
    return linear(bb, inputs[0], inputs[1], None, fam, b_transposed=False)


def patch_conv(bb: Any, inputs: list, geometry: Any, fam: Any) -> Any | None:
    """A patch-embedding Conv (``geometry``: bvit_edge.runtime.kernels.int8_weight_linear.PatchGeometry)
    with 8-bit weights [O, C, P, P]: the W8A32 kernel reading the image directly, NCHW output; or None."""
    from tvm import relax

    from bvit_edge.runtime.kernels.int8_weight_linear import (
        int8_weight_linear_kernel,
        pack_weight_panels,
        pad_vector,
    )
    from bvit_edge.runtime.schedules.int8 import register_tile, schedule_int8_weight_linear

    w = int8_weight(bb, inputs[1], 0)
    if w is None or w.codes.ndim != 4:
        return None
    o = w.codes.shape[0]
    bias = _const(bb, inputs[2]) if len(inputs) > 2 and inputs[2] is not None else np.zeros(o, np.float32)
    if bias is None or bias.size != o:
        return None
    hp, wp = geometry.height // geometry.patch, geometry.width // geometry.patch
    lanes = fam.float_lanes
    rows, vectors = register_tile(wp, _round_up(o, lanes), lanes, fam.float_registers)
    panel = vectors * lanes
    pn = -(-o // panel) * panel
    func = int8_weight_linear_kernel(geometry.tokens, geometry.k, o, panel, geometry)
    func = schedule_int8_weight_linear(func, rows, vectors, lanes)
    gv = _add_kernel(bb, func, "bvit_int8_patch_embed")
    args = [
        inputs[0],
        relax.const(pack_weight_panels(w.codes.reshape(o, -1), panel)),
        relax.const(pad_vector(w.scale, pn)),
        relax.const(pad_vector(bias, pn)),
    ]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((hp, wp, o), "float32")))
    return relax.op.permute_dims(relax.op.reshape(y, (1, hp, wp, o)), [0, 3, 1, 2])


__all__ = ["Int8Weight", "gemm", "int8_weight", "linear", "matmul", "patch_conv", "quantized_activation"]
