"""Small helpers shared by the op files: idempotent schema registration and shape-inference plumbing.

Every op of the ``bvit_edge`` domain registers an :class:`onnx.defs.OpSchema` (version 1) so that the
torch exporter accepts the node, :func:`onnx.checker.check_model` (full check) knows it, and ONNX shape
inference gives its output shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx
from onnx import defs

from bvit_edge.contract import DOMAIN as DOMAIN  # re-exported for the op files
from bvit_edge.contract import DOMAIN_VERSION

VERSION = DOMAIN_VERSION

Param = defs.OpSchema.FormalParameter
Attr = defs.OpSchema.Attribute
AttrType = defs.OpSchema.AttrType
OPTIONAL = defs.OpSchema.FormalParameterOption.Optional


def register_once(schema: defs.OpSchema, infer: Callable[[object], None]) -> None:
    """Register ``schema`` (with its shape-inference function) unless the domain already has the op."""
    if defs.has(schema.name, schema.domain):
        return
    schema.set_type_and_shape_inference_function(infer)
    defs.register_schema(schema)


def float_output(ctx: object, dims: Sequence[onnx.TensorShapeProto.Dimension] | None) -> None:
    """Set output 0 of ``ctx`` to float32 with ``dims`` (None: rank unknown, type only)."""
    out = onnx.TypeProto()
    out.tensor_type.elem_type = onnx.TensorProto.FLOAT
    if dims is not None:
        shape = out.tensor_type.shape
        shape.SetInParent()
        for d in dims:
            shape.dim.add().CopyFrom(d)
    ctx.set_output_type(0, out)  # type: ignore[attr-defined]


def input_dims(ctx: object, index: int) -> list[onnx.TensorShapeProto.Dimension] | None:
    """Dimensions of input ``index`` when its rank is known, else None."""
    if not ctx.has_input(index):  # type: ignore[attr-defined]
        return None
    t = ctx.get_input_type(index)  # type: ignore[attr-defined]
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return list(t.tensor_type.shape.dim)
