"""``bvit_edge::BinaryLinear`` version 1: schema, numpy reference, standard-ONNX decomposition, translation.

Semantics (docs/ops/BinaryLinear_v1.md; constants in :mod:`bvit_edge.contract`), K = ``in_features``:

    x' = X + shift
    signed:   a = sgn(x') in {-1, +1} with sgn(0) = +1          (bit = x' < 0)
    unsigned: a = [x' > alpha / 2] in {0, 1}
    acc[..., n] = sum_k a[..., k] * W[n, k],   W[n, k] = -1 where bit 1 of W_bits, +1 where bit 0
    Y[..., n] = acc * (alpha * w_scale[n]) + bias[n]

Evaluation order (every implementation uses it): s = alpha * w_scale in float32, then float32(acc) * s,
then + bias. The reference computes acc exactly on packed uint64 words with ``np.bitwise_count``:
signed·signed = K - 2·popcount(a XOR w); unsigned·signed = popcount(u) - 2·popcount(u AND w).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import defs

from bvit_edge import packing
from bvit_edge.contract import BINARY_LINEAR, LINEAR_MODES, ContractError, check_mode
from bvit_edge.export.ops import _bits
from bvit_edge.export.ops._schema import (
    DOMAIN,
    OPTIONAL,
    VERSION,
    Attr,
    AttrType,
    Param,
    float_output,
    input_dims,
    register_once,
)

OP_TYPE = BINARY_LINEAR
MODES = LINEAR_MODES

# --------------------------------------------------------------------------------------------------------
# ONNX schema
# --------------------------------------------------------------------------------------------------------


def _infer(ctx: Any) -> None:
    """Y shape = X.shape[:-1] + [W_bits.shape[0]]."""
    x, w = input_dims(ctx, 0), input_dims(ctx, 3)
    if x is None or w is None or not x or not w:
        float_output(ctx, None)
        return
    float_output(ctx, [*x[:-1], w[0]])


SCHEMA = defs.OpSchema(
    OP_TYPE,
    DOMAIN,
    VERSION,
    "Binary (1-bit) linear layer on bit-packed weights; see docs/ops/BinaryLinear_v1.md.",
    inputs=[
        Param("X", "tensor(float)", "input [..., K]"),
        Param("shift", "tensor(float)", "learned input shift [K]"),
        Param("alpha", "tensor(float)", "activation scale, 0-dim"),
        Param("W_bits", "tensor(uint8)", "sign bits of W [N, Kp/8], packed along K, bit 1 = -1"),
        Param("w_scale", "tensor(float)", "weight scale per output row [N]"),
        Param("bias", "tensor(float)", "bias [N]", param_option=OPTIONAL),
    ],
    outputs=[Param("Y", "tensor(float)", "output [..., N]")],
    attributes=[
        Attr(
            "mode",
            AttrType.STRING,
            " or ".join(f'"{m}"' for m in MODES) + " (how X + shift is binarized)",
            required=True,
        ),
        Attr("in_features", AttrType.INT, "K, the true (unpadded) reduction length", required=True),
    ],
)
register_once(SCHEMA, _infer)

# --------------------------------------------------------------------------------------------------------
# numpy reference
# --------------------------------------------------------------------------------------------------------


def _check_mode(mode: str) -> str:
    return check_mode(mode, MODES, "BinaryLinear: mode", "Fix the node's 'mode' attribute.")


def binarize_input(x: np.ndarray, shift: np.ndarray, alpha: np.ndarray, mode: str) -> _bits.Plane:
    """x' = x + shift (float32), binarized along the last axis and packed: a signed or an unsigned plane."""
    xs = np.asarray(x, np.float32) + np.asarray(shift, np.float32)
    if _check_mode(mode) == "signed":
        return _bits.plane_from_bits(packing.sign_bits(xs), None)
    half = np.asarray(alpha, np.float32).reshape(()) / np.float32(2)
    return _bits.plane_from_bits(None, xs > half)


def binary_linear_accumulators(
    x: np.ndarray, shift: np.ndarray, alpha: np.ndarray, w_bits: np.ndarray, mode: str, in_features: int
) -> np.ndarray:
    """The exact integer accumulators acc[..., n] (int64) of BinaryLinear, computed by popcount on words."""
    x = np.asarray(x, np.float32)
    k = int(in_features)
    w_bits = np.asarray(w_bits)
    if x.shape[-1] != k:
        raise ContractError(
            f"BinaryLinear: X has {x.shape[-1]} features but in_features is {k}. Export and input disagree."
        )
    if w_bits.dtype != np.uint8 or w_bits.ndim != 2 or w_bits.shape[1] * 8 != packing.padded_length(k):
        raise ContractError(
            f"BinaryLinear: W_bits must be uint8 [N, {packing.padded_length(k) // 8}] for in_features {k}, "
            f"got {w_bits.dtype} {list(w_bits.shape)}. Re-export the model."
        )
    lead = x.shape[:-1]
    a = binarize_input(x.reshape(-1, k), shift, alpha, mode)
    w = _bits.Plane(packing.as_words(w_bits), None)
    acc = _bits.plane_dot(a, w, k)
    return acc.reshape((*lead, w_bits.shape[0]))


def binary_linear_reference(
    x: np.ndarray,
    shift: np.ndarray,
    alpha: np.ndarray,
    w_bits: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    mode: str,
    in_features: int,
) -> np.ndarray:
    """BinaryLinear in numpy: Y = float32(acc) * (alpha * w_scale) + bias, in that order, float32."""
    acc = binary_linear_accumulators(x, shift, alpha, w_bits, mode, in_features)
    s = np.asarray(alpha, np.float32).reshape(()) * np.asarray(w_scale, np.float32)
    y = acc.astype(np.float32) * s
    if bias is not None and np.size(bias):
        y = y + np.asarray(bias, np.float32)
    return y.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------------
# standard-ONNX decomposition (``--ops standard``)
# --------------------------------------------------------------------------------------------------------


def unpack_signed_weight_standard(op: Any, w_bits: Any, in_features: int) -> Any:
    """Standard ONNX: uint8 W_bits [N, Kp/8] -> float32 W^T [K, N] in {-1, +1} (bit 1 = -1).

    bits = (W_bits[..., None] >> [0..7]) & 1 -> [N, Kp] -> [:, :K];  W = 1 - 2 * bits;  transpose.
    The packed bytes stay the initializer, so a standard export is as small as a packed one.
    """
    u8 = onnx.TensorProto.UINT8
    shifts = op.Cast(op.Constant(value_ints=list(range(8))), to=u8)
    one_u8 = op.Cast(op.Constant(value_int=1), to=u8)
    expanded = op.Unsqueeze(w_bits, op.Constant(value_ints=[-1]))
    bits = op.BitwiseAnd(op.BitShift(expanded, shifts, direction="RIGHT"), one_u8)
    bits = op.Reshape(bits, op.Constant(value_ints=[0, -1]))
    bits = op.Slice(
        bits, op.Constant(value_ints=[0]), op.Constant(value_ints=[int(in_features)]), op.Constant(value_ints=[1])
    )
    bits_f = op.Cast(bits, to=onnx.TensorProto.FLOAT)
    w = op.Sub(op.Constant(value_float=1.0), op.Mul(op.Constant(value_float=2.0), bits_f))
    return op.Transpose(w, perm=[1, 0])


def binarize_standard(op: Any, xs: Any, alpha: Any, mode: str) -> Any:
    """Standard ONNX: signed -> Where(x' < 0, -1, +1); unsigned -> Cast(x' > alpha/2) (float 0/1)."""
    if mode == "signed":
        return op.Where(
            op.Less(xs, op.Constant(value_float=0.0)), op.Constant(value_float=-1.0), op.Constant(value_float=1.0)
        )
    half = op.Div(alpha, op.Constant(value_float=2.0))
    return op.Cast(op.Greater(xs, half), to=onnx.TensorProto.FLOAT)


def binary_linear_standard(
    op: Any, x: Any, shift: Any, alpha: Any, w_bits: Any, w_scale: Any, bias: Any, *, mode: str, in_features: int
) -> Any:
    """BinaryLinear in standard ONNX ops (opset 18). MatMul of {-1,0,+1} floats: every partial sum is an
    integer of magnitude <= K < 2^24, so acc is exact in float32 whatever the summation order."""
    mode = _check_mode(mode)
    a = binarize_standard(op, op.Add(x, shift), alpha, mode)
    acc = op.MatMul(a, unpack_signed_weight_standard(op, w_bits, in_features))
    y = op.Mul(acc, op.Mul(alpha, w_scale))
    return y if bias is None else op.Add(y, bias)


# --------------------------------------------------------------------------------------------------------
# torch.onnx (dynamo) translation of torch.ops.bvit.binary_linear
# --------------------------------------------------------------------------------------------------------


def translate_packed(
    x: Any, shift: Any, alpha: Any, w_bits: Any, w_scale: Any, bias: Any, mode: str, in_features: int
) -> Any:
    """torch.ops.bvit.binary_linear -> one bvit_edge::BinaryLinear node (a plain traced function; a
    decorated @onnxscript.script one fails in the exporter's inliner: docs/architecture.md, "Exporting")."""
    import onnxscript

    bvit = onnxscript.values.Opset(DOMAIN, VERSION)
    return bvit.BinaryLinear(
        x, shift, alpha, w_bits, w_scale, bias, mode=_check_mode(mode), in_features=int(in_features)
    )


def translate_standard(
    x: Any, shift: Any, alpha: Any, w_bits: Any, w_scale: Any, bias: Any, mode: str, in_features: int
) -> Any:
    """torch.ops.bvit.binary_linear -> its standard-ONNX decomposition."""
    from onnxscript import opset18

    return binary_linear_standard(
        opset18, x, shift, alpha, w_bits, w_scale, bias, mode=mode, in_features=int(in_features)
    )


__all__ = [
    "OP_TYPE",
    "SCHEMA",
    "binarize_input",
    "binary_linear_accumulators",
    "binary_linear_reference",
    "binary_linear_standard",
    "translate_packed",
    "translate_standard",
]
