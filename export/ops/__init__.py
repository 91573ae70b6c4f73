"""The ``bvit_edge`` ONNX op domain, version 1: one file per op.

Importing this package registers the ONNX schemas (BinaryLinear, BinaryMatMul). :func:`translation_table`
gives the torch.onnx (dynamo) ``custom_translation_table`` for an export with ``ops="packed"`` (the
bvit_edge nodes, bit-packed weights) or ``ops="standard"`` (only standard ONNX ops, runnable anywhere).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bvit_edge.errors import UsageError
from bvit_edge.export.ops import binary_linear, binary_matmul, int8
from bvit_edge.export.ops._schema import DOMAIN, VERSION

OPS_CHOICES = ("packed", "standard")


def translation_table(ops: str = "packed") -> dict[Any, Callable[..., Any]]:
    """{torch op overload: translation function} for every ``torch.ops.bvit`` op, for ``ops`` packed|standard."""
    if ops not in OPS_CHOICES:
        raise UsageError(f"ops must be one of {', '.join(OPS_CHOICES)}, got {ops!r}.")
    import torch

    import bvit_edge.quant.deploy  # noqa: F401  (defines torch.ops.bvit.*)

    bvit = torch.ops.bvit
    packed = ops == "packed"
    return {
        bvit.binary_linear.default: binary_linear.translate_packed if packed else binary_linear.translate_standard,
        bvit.binary_matmul.default: binary_matmul.translate_packed if packed else binary_matmul.translate_standard,
        bvit.dequantize_int8.default: int8.translate_dequantize,
        bvit.quantize_dequantize_int8.default: int8.translate_quantize_dequantize,
    }


__all__ = ["DOMAIN", "OPS_CHOICES", "VERSION", "binary_linear", "binary_matmul", "int8", "translation_table"]
