"""The 8-bit parts of a frozen model, exported as standard ONNX DequantizeLinear / QuantizeLinear.

No custom op is needed: int8 weights stay int8 initializers.

``torch.ops.bvit.dequantize_int8(w, scale, axis)``  ->  ``DequantizeLinear(w, scale[, axis])``
    y = w * scale  (per channel along ``axis`` when scale is 1-D, per tensor when it is 0-dim)
``torch.ops.bvit.quantize_dequantize_int8(x, scale)``  ->  ``QuantizeLinear(x, scale, int8 0)`` then
``DequantizeLinear(q, scale, int8 0)``
    y = clamp(round_half_even(x / scale), -128, 127) * scale
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx


def dequantize_int8_reference(w: np.ndarray, scale: np.ndarray, axis: int = 0) -> np.ndarray:
    """w * scale in float32, per channel along ``axis`` (1-D scale) or per tensor (0-dim / 1-element)."""
    w = np.asarray(w).astype(np.float32)
    scale = np.asarray(scale, np.float32)
    if scale.ndim == 0 or (scale.size == 1 and w.shape[axis % w.ndim] != 1):
        return w * scale.reshape(())
    shape = [1] * w.ndim
    shape[axis % w.ndim] = scale.size
    return w * scale.reshape(shape)


def quantize_dequantize_int8_reference(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """clamp(round_half_even(x / scale), -128, 127) * scale, float32, per-tensor scale."""
    s = np.asarray(scale, np.float32).reshape(())
    q = np.clip(np.rint(np.asarray(x, np.float32) / s), -128, 127)
    return (q * s).astype(np.float32)


def _int8_zero(op: Any) -> Any:
    return op.Cast(op.Constant(value_int=0), to=onnx.TensorProto.INT8)


def translate_dequantize(w: Any, scale: Any, axis: int) -> Any:
    """torch.ops.bvit.dequantize_int8 -> DequantizeLinear (no zero point: 0; ``axis`` used for 1-D scales;
    onnxruntime wants a per-axis zero point to be absent or 1-D, so it is left out)."""
    from onnxscript import opset18 as op

    return op.DequantizeLinear(w, scale, None, axis=int(axis))


def translate_quantize_dequantize(x: Any, scale: Any) -> Any:
    """torch.ops.bvit.quantize_dequantize_int8 -> QuantizeLinear + DequantizeLinear (int8, zero point 0)."""
    from onnxscript import opset18 as op

    zero = _int8_zero(op)
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero), scale, zero)


__all__ = [
    "dequantize_int8_reference",
    "quantize_dequantize_int8_reference",
    "translate_dequantize",
    "translate_quantize_dequantize",
]
