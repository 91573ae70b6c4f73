"""``bvit_edge::BinaryMatMul`` version 1: schema, numpy reference, standard-ONNX decomposition, translation.

Semantics (docs/ops/BinaryMatMul_v1.md, docs/methods.md "GSB"); A' = A + a_shift [..., M, K],
B' = B + b_shift [..., K, N]; r1, r2 = ``gsb_ratios`` (float32); max / min taken per sample, i.e. over
every axis but the first. Each operand becomes planes P_i (A) / Q_j (B) with scales alpha_i / beta_j:

    signed        P_1 = sgn(A')  (sgn(0) = +1)                                one alpha
    unsigned      P_1 = [A' > alpha_1 / 2]                                     one alpha
    gsb_unsigned  P_1 = [A' > alpha_1/2], P_2 = [A' > r1 max A'], P_3 = [A' > r2 max A']       three
    gsb_signed    Q_1 = sgn(B'), Q_2 = sgn(B') * M1, Q_3 = sgn(B') * M2,                     three
                  M_j = [B' > r_j max B'] or [B' < r_j min B']   (values {-1, 0, +1})

    Y = sum_i sum_j (alpha_i * beta_j) * intdot(P_i, Q_j)      i outer, j inner, accumulated in float32

Thresholds are evaluated in float32 exactly as the torch op does: alpha_1 / 2 and max * r_j.
The integer dots are popcounts on packed uint64 words (see :mod:`bvit_edge.export.ops._bits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import defs

from bvit_edge import packing
from bvit_edge.contract import BINARY_MATMUL, DEFAULT_GSB_RATIOS, ContractError, check_mode, check_ratios
from bvit_edge.contract import MATMUL_A_MODES as A_MODES
from bvit_edge.contract import MATMUL_B_MODES as B_MODES
from bvit_edge.export.ops import _bits
from bvit_edge.export.ops._schema import DOMAIN, VERSION, Attr, AttrType, Param, float_output, input_dims, register_once

OP_TYPE = BINARY_MATMUL

# --------------------------------------------------------------------------------------------------------
# ONNX schema
# --------------------------------------------------------------------------------------------------------


def _infer(ctx: Any) -> None:
    """Y shape = A.shape[:-1] + [B.shape[-1]]."""
    a, b = input_dims(ctx, 0), input_dims(ctx, 1)
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        float_output(ctx, None)
        return
    float_output(ctx, a[:-1] + [b[-1]])


SCHEMA = defs.OpSchema(
    OP_TYPE,
    DOMAIN,
    VERSION,
    "Binary (plane-superposed) matmul of two activations; see docs/ops/BinaryMatMul_v1.md.",
    inputs=[
        Param("A", "tensor(float)", "left operand [..., M, K]"),
        Param("B", "tensor(float)", "right operand [..., K, N]"),
        Param("a_shift", "tensor(float)", "shift of A, broadcastable to A[0]"),
        Param("a_alpha", "tensor(float)", "scales of A's planes [1] or [3]"),
        Param("b_shift", "tensor(float)", "shift of B, broadcastable to B[0]"),
        Param("b_alpha", "tensor(float)", "scales of B's planes [1] or [3]"),
    ],
    outputs=[Param("Y", "tensor(float)", "output [..., M, N]")],
    attributes=[
        Attr("a_mode", AttrType.STRING, "one of " + ", ".join(f'"{m}"' for m in A_MODES), required=True),
        Attr("b_mode", AttrType.STRING, "one of " + ", ".join(f'"{m}"' for m in B_MODES), required=True),
        Attr("gsb_ratios", onnx.helper.make_attribute("gsb_ratios", list(DEFAULT_GSB_RATIOS)), "mask ratios r1, r2"),
    ],
)
register_once(SCHEMA, _infer)

# --------------------------------------------------------------------------------------------------------
# numpy reference
# --------------------------------------------------------------------------------------------------------


def _mode(value: Any, allowed: Sequence[str], what: str) -> str:
    return check_mode(value, allowed, f"BinaryMatMul: {what}", "Fix the node attribute.")


def _ratios(gsb_ratios: Sequence[float] | None) -> tuple[np.float32, np.float32]:
    r1, r2 = check_ratios(gsb_ratios)
    return np.float32(r1), np.float32(r2)


def _per_sample(x: np.ndarray, fn: Any) -> np.ndarray:
    """fn (max or min) over every axis but the first, shaped [B, 1, ..., 1] to broadcast."""
    return fn(x.reshape(x.shape[0], -1), axis=1).reshape((x.shape[0],) + (1,) * (x.ndim - 1))


def _alphas(alpha: np.ndarray, need: int, what: str) -> np.ndarray:
    a = np.asarray(alpha, np.float32).reshape(-1)
    if a.size < need:
        raise ContractError(
            f"BinaryMatMul: {what} needs {need} scale(s) for its mode, got {a.size}. Re-export the model."
        )
    return a


def a_plane_bits(
    a: np.ndarray, alpha: np.ndarray, mode: str, ratios: Sequence[float] | None = None
) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """Planes of A' (already shifted) as (sign, support) boolean arrays [..., M, K] (None = absent)."""
    mode = _mode(mode, A_MODES, "a_mode")
    al = _alphas(alpha, 3 if mode == "gsb_unsigned" else 1, "a_alpha")
    if mode == "signed":
        return [(packing.sign_bits(a), None)]
    p1 = a > al[0] / np.float32(2)
    if mode == "unsigned":
        return [(None, p1)]
    r1, r2 = _ratios(ratios)
    mx = _per_sample(a, np.max)
    return [(None, p1), (None, a > mx * r1), (None, a > mx * r2)]


def b_plane_bits(
    b: np.ndarray, mode: str, ratios: Sequence[float] | None = None
) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """Planes of B' (already shifted) as (sign, support) boolean arrays [..., K, N] (None = absent)."""
    mode = _mode(mode, B_MODES, "b_mode")
    sign = packing.sign_bits(b)
    if mode == "signed":
        return [(sign, None)]
    r1, r2 = _ratios(ratios)
    mx, mn = _per_sample(b, np.max), _per_sample(b, np.min)
    m1 = (b > mx * r1) | (b < mn * r1)
    m2 = (b > mx * r2) | (b < mn * r2)
    return [(sign, None), (sign, m1), (sign, m2)]


def _pack_along_last(planes: list[tuple[np.ndarray | None, np.ndarray | None]]) -> list[_bits.Plane]:
    return [_bits.plane_from_bits(s, m) for s, m in planes]


def binary_matmul_accumulators(
    a: np.ndarray,
    b: np.ndarray,
    a_shift: np.ndarray,
    a_alpha: np.ndarray,
    b_shift: np.ndarray,
    b_alpha: np.ndarray,
    *,
    a_mode: str,
    b_mode: str,
    gsb_ratios: Sequence[float] | None = None,
) -> list[list[np.ndarray]]:
    """Exact integer dots intdot(P_i, Q_j) (int64 [..., M, N]) for every plane pair, [i][j]."""
    a = np.asarray(a, np.float32) + np.asarray(a_shift, np.float32)
    b = np.asarray(b, np.float32) + np.asarray(b_shift, np.float32)
    if a.ndim < 2 or b.ndim != a.ndim or a.shape[-1] != b.shape[-2]:
        raise ContractError(
            f"BinaryMatMul: A {list(a.shape)} and B {list(b.shape)} must have the same rank and A's last axis "
            "must equal B's second to last (K)."
        )
    k = a.shape[-1]
    pa = _pack_along_last(a_plane_bits(a, a_alpha, a_mode, gsb_ratios))
    pb_bits = b_plane_bits(b, b_mode, gsb_ratios)
    _alphas(b_alpha, len(pb_bits), "b_alpha")
    swap = [
        (None if s is None else np.swapaxes(s, -1, -2), None if m is None else np.swapaxes(m, -1, -2))
        for s, m in pb_bits
    ]
    pb = _pack_along_last(swap)
    return [[_bits.plane_dot(p, q, k) for q in pb] for p in pa]


def binary_matmul_reference(
    a: np.ndarray,
    b: np.ndarray,
    a_shift: np.ndarray,
    a_alpha: np.ndarray,
    b_shift: np.ndarray,
    b_alpha: np.ndarray,
    *,
    a_mode: str,
    b_mode: str,
    gsb_ratios: Sequence[float] | None = None,
) -> np.ndarray:
    """BinaryMatMul in numpy: sum_i sum_j (alpha_i * beta_j) * float32(intdot_ij), i outer, j inner."""
    dots = binary_matmul_accumulators(
        a, b, a_shift, a_alpha, b_shift, b_alpha, a_mode=a_mode, b_mode=b_mode, gsb_ratios=gsb_ratios
    )
    al = np.asarray(a_alpha, np.float32).reshape(-1)
    be = np.asarray(b_alpha, np.float32).reshape(-1)
    out: np.ndarray | None = None
    for i, row in enumerate(dots):
        for j, d in enumerate(row):
            term = (al[i] * be[j]) * d.astype(np.float32)
            out = term if out is None else out + term
    assert out is not None
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------------
# standard-ONNX decomposition (``--ops standard``)
# --------------------------------------------------------------------------------------------------------


def _standard_per_sample_compare(op: Any, x: Any, ratio: float, reduce: str, compare: str, rank: int) -> Any:
    """Boolean [x compare r * (reduce over every axis but the first)]: ReduceMax/ReduceMin over axes
    1..rank-1 with keepdims, so the threshold [B, 1, ..., 1] broadcasts against x.

    (A rank-agnostic Flatten -> Reduce -> Reshape(Shape(x)) form trips the onnxscript optimizer of the
    torch exporter, which leaves the graph unsorted; the rank is known at export time anyway.)"""
    red = getattr(op, reduce)(x, op.Constant(value_ints=list(range(1, int(rank)))), keepdims=1)
    thr = op.Mul(red, op.Constant(value_float=float(np.float32(ratio))))
    return getattr(op, compare)(x, thr)


def _sign_standard(op: Any, x: Any) -> Any:
    return op.Where(
        op.Less(x, op.Constant(value_float=0.0)), op.Constant(value_float=-1.0), op.Constant(value_float=1.0)
    )


def _scalar(op: Any, alpha: Any, i: int) -> Any:
    """alpha[i] as a 0-dim tensor (alpha is [1] or [3])."""
    flat = op.Reshape(alpha, op.Constant(value_ints=[-1]))
    return op.Squeeze(
        op.Slice(flat, op.Constant(value_ints=[i]), op.Constant(value_ints=[i + 1])), op.Constant(value_ints=[0])
    )


def binary_matmul_standard(
    op: Any,
    a: Any,
    b: Any,
    a_shift: Any,
    a_alpha: Any,
    b_shift: Any,
    b_alpha: Any,
    *,
    a_mode: str,
    b_mode: str,
    gsb_ratios: Sequence[float] | None = None,
    rank: int = 4,
) -> Any:
    """BinaryMatMul in standard ONNX ops (opset 18): planes as float tensors in {-1, 0, +1}, one MatMul per
    plane pair (exact integers in float32), scaled by alpha_i * beta_j and summed i outer, j inner.
    ``rank``: the rank of A and B (the per-sample max/min reduce over axes 1..rank-1)."""
    a_mode = _mode(a_mode, A_MODES, "a_mode")
    b_mode = _mode(b_mode, B_MODES, "b_mode")
    r1, r2 = (float(r) for r in _ratios(gsb_ratios))
    f32 = onnx.TensorProto.FLOAT
    xa = op.Add(a, a_shift)
    xb = op.Add(b, b_shift)
    if a_mode == "signed":
        pa = [_sign_standard(op, xa)]
    else:
        p1 = op.Cast(op.Greater(xa, op.Div(_scalar(op, a_alpha, 0), op.Constant(value_float=2.0))), to=f32)
        pa = [p1]
        if a_mode == "gsb_unsigned":
            pa += [
                op.Cast(_standard_per_sample_compare(op, xa, r, "ReduceMax", "Greater", rank), to=f32) for r in (r1, r2)
            ]
    sb = _sign_standard(op, xb)
    pb = [sb]
    if b_mode == "gsb_signed":
        zero = op.Constant(value_float=0.0)
        for r in (r1, r2):
            mask = op.Or(
                _standard_per_sample_compare(op, xb, r, "ReduceMax", "Greater", rank),
                _standard_per_sample_compare(op, xb, r, "ReduceMin", "Less", rank),
            )
            pb.append(op.Where(mask, sb, zero))
    out = None
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            s = op.Mul(_scalar(op, a_alpha, i), _scalar(op, b_alpha, j))
            term = op.Mul(s, op.MatMul(p, q))
            out = term if out is None else op.Add(out, term)
    return out


# --------------------------------------------------------------------------------------------------------
# torch.onnx (dynamo) translation of torch.ops.bvit.binary_matmul
# --------------------------------------------------------------------------------------------------------


def translate_packed(
    a: Any,
    b: Any,
    a_shift: Any,
    a_alpha: Any,
    b_shift: Any,
    b_alpha: Any,
    a_mode: str,
    b_mode: str,
    gsb_ratios: Sequence[float] = DEFAULT_GSB_RATIOS,
) -> Any:
    """torch.ops.bvit.binary_matmul -> one bvit_edge::BinaryMatMul node."""
    import onnxscript

    bvit = onnxscript.values.Opset(DOMAIN, VERSION)
    return bvit.BinaryMatMul(
        a,
        b,
        a_shift,
        a_alpha,
        b_shift,
        b_alpha,
        a_mode=_mode(a_mode, A_MODES, "a_mode"),
        b_mode=_mode(b_mode, B_MODES, "b_mode"),
        gsb_ratios=[float(r) for r in gsb_ratios],
    )


def translate_standard(
    a: Any,
    b: Any,
    a_shift: Any,
    a_alpha: Any,
    b_shift: Any,
    b_alpha: Any,
    a_mode: str,
    b_mode: str,
    gsb_ratios: Sequence[float] = DEFAULT_GSB_RATIOS,
) -> Any:
    """torch.ops.bvit.binary_matmul -> its standard-ONNX decomposition."""
    from onnxscript import opset18

    shape = getattr(a, "shape", None)
    rank = len(shape) if shape is not None else 4  # the torch op's contract: [B, H, M, K]
    return binary_matmul_standard(
        opset18,
        a,
        b,
        a_shift,
        a_alpha,
        b_shift,
        b_alpha,
        a_mode=a_mode,
        b_mode=b_mode,
        gsb_ratios=gsb_ratios,
        rank=rank,
    )


__all__ = [
    "OP_TYPE",
    "SCHEMA",
    "a_plane_bits",
    "b_plane_bits",
    "binary_matmul_accumulators",
    "binary_matmul_reference",
    "binary_matmul_standard",
    "translate_packed",
    "translate_standard",
]
