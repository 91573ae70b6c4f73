"""ONNX export of bvit-edge models (installed as ``bvit_edge.export``).

``export_onnx(model, path, ops="packed" | "standard")`` writes a frozen binary model (or a float teacher)
with the ``bvit_edge`` op domain v1; ``validate_onnx(model, path, inputs)`` checks it against the torch
model (names, shapes, values, top-1); ``size_report(path, teacher_path)`` gives bytes and weight counts.
"""

from bvit_edge.export.onnx_export import ExportResult, export_onnx, export_teacher_onnx
from bvit_edge.export.size import SizeReport, size_report
from bvit_edge.export.validate import (
    OutputNameMismatch,
    ShapeMismatch,
    ValidationReport,
    ValueMismatch,
    validate_onnx,
)

__all__ = [
    "ExportResult",
    "OutputNameMismatch",
    "ShapeMismatch",
    "SizeReport",
    "ValidationReport",
    "ValueMismatch",
    "export_onnx",
    "export_teacher_onnx",
    "size_report",
    "validate_onnx",
]
