"""Sizes in a benchmark result beside bytes on disk (bvit_edge.runtime.bench_record.measured_sizes): the
1/8/16/32-bit weight counts of the .onnx files (bvit_edge.export.size), and the int8 teacher:
quantized here by onnxruntime when it is not given (bvit_edge.export.int8_teacher), with its bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bvit_edge.runtime.timing import time_once

__all__ = ["add_int8_teacher", "quantized_teacher", "weight_counts"]


def weight_counts(path: Path) -> dict[str, int]:
    """The 1/8/16/32-bit (and other) weight counts of an .onnx (bvit_edge.export.size.weight_counts)."""
    from bvit_edge.export.size import weight_counts as count
    from bvit_edge.runtime.ort import load_model

    return count(load_model(path))


def quantized_teacher(t_onnx: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The teacher quantized by onnxruntime into ``folder`` (bvit_edge.export.int8_teacher), with what it took."""
    from bvit_edge.export.int8_teacher import quantize_teacher

    path = folder / f"{t_onnx.stem}.int8.onnx"
    ms, made = time_once(lambda: quantize_teacher(t_onnx, path))
    info = made.to_dict()
    info.update(
        {
            "made_by": "bench",
            "quantize_s": ms / 1e3,
            "weights": weight_counts(path),
            "path": f"(temporary) {path.name}",
        }
    )
    return path, info


def add_int8_teacher(sizes: dict[str, Any], info: dict[str, Any], path: Path | None) -> None:
    """The int8 teacher's bytes and weight counts (from ``info``, else counted in ``path``) into ``sizes``,
    with its bytes over the student's."""
    i8 = {"onnx_bytes": int(info["bytes"]), "weights": info.pop("weights", None)}
    if i8["weights"] is None and path is not None and path.is_file():
        i8["weights"] = weight_counts(path)
    sizes["teacher_int8"] = i8
    s_bytes = sizes["student_measured_bytes"]
    sizes["teacher_int8_over_student_bytes"] = i8["onnx_bytes"] / s_bytes if s_bytes else None
