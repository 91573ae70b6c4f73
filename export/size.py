"""Size report of an ONNX export: bytes on disk and weight counts by precision, read from the initializers.

* 1-bit: bit-packed uint8 matrices [N, Kp/8]. Fed to a BinaryLinear node (input W_bits): N x in_features
  true weights; any other one (a standard export, where the decomposition unpacks it in the graph):
  8 bits a byte, pad bits included (none when K is a multiple of 64).
* 8-bit: int8 initializers (DequantizeLinear weights, GSB's attention bias stored as int8; zero points
  count as "other").
* 16-bit: float16 and int16 initializers (parameters stored compactly, bvit_edge.export.storage).
* 32-bit: float32 initializers (LayerNorm, biases, scales, float weights).
* other: any other element type (int64 shape constants, ...), counted apart.

The compression ratio is teacher bytes / these bytes (both on disk).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bvit_edge.errors import DataError
from bvit_edge.export.onnxruntime_session import load_model

_T = onnx.TensorProto


@dataclass
class SizeReport:
    path: str
    bytes_on_disk: int
    weights_1bit: int
    weights_8bit: int
    weights_32bit: int
    weights_other: int
    weights_16bit: int = 0
    #: serialized bytes of this file under every storage choice (bvit_edge.export.storage.storage_bytes)
    storage_bytes: dict[str, int] | None = None
    largest_32bit: list[tuple[str, int]] | None = None
    teacher_path: str | None = None
    teacher_bytes: int | None = None
    compression_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """{"weights_1bit", "weights_8bit", "weights_16bit", "weights_32bit", "weights_other"} counted from the
    initializers."""
    binary_k: dict[str, int] = {}
    zero_points: set[str] = set()
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero_points.add(node.input[2])
        if node.op_type == "BinaryLinear" and len(node.input) > 3:
            k = next((a.i for a in node.attribute if a.name == "in_features"), 0)
            binary_k[node.input[3]] = int(k)
    counts = {"weights_1bit": 0, "weights_8bit": 0, "weights_16bit": 0, "weights_32bit": 0, "weights_other": 0}
    for init in proto.graph.initializer:
        n = int(np.prod(init.dims, dtype=np.int64)) if init.dims else 1
        if init.data_type == _T.UINT8 and len(init.dims) != 2:
            counts["weights_other"] += n  # e.g. the decomposition's shift amounts 0..7, not weights
        elif init.data_type == _T.UINT8:
            if init.name in binary_k:
                counts["weights_1bit"] += int(init.dims[0]) * binary_k[init.name]
            else:
                counts["weights_1bit"] += 8 * n
        elif init.data_type == _T.INT8 and init.name not in zero_points:
            counts["weights_8bit"] += n
        elif init.data_type == _T.FLOAT:
            counts["weights_32bit"] += n
        elif init.data_type in (_T.FLOAT16, _T.INT16):
            counts["weights_16bit"] += n
        else:
            counts["weights_other"] += n
    return counts


def largest_float32(proto: onnx.ModelProto, top: int = 5) -> list[tuple[str, int]]:
    """The ``top`` largest float32 initializers (name, elements): what dominates the 32-bit share."""
    sizes = [
        (init.name, int(np.prod(init.dims, dtype=np.int64)) if init.dims else 1)
        for init in proto.graph.initializer
        if init.data_type == _T.FLOAT
    ]
    return sorted(sizes, key=lambda t: -t[1])[:top]


def size_report(
    onnx_path: str | Path,
    teacher_path: str | Path | None = None,
    state_names: list[str] | None = None,
    proto: onnx.ModelProto | None = None,
) -> SizeReport:
    """Bytes on disk and weight counts of ``onnx_path``; compression ratio vs ``teacher_path`` if given;
    the file's bytes under every storage choice of B (and, given the model's ``state_names``, of its other
    float parameters) in ``storage_bytes``. ``proto``: the model of ``onnx_path`` already in memory (the
    export's ``ExportResult.proto``), counted instead of reading the file again."""
    from bvit_edge.export.storage import att_bias_names, decompacted, storage_bytes

    if proto is None:
        proto = load_model(onnx_path)
    size = Path(onnx_path).stat().st_size
    counts = weight_counts(proto)
    rep = SizeReport(
        path=str(onnx_path),
        bytes_on_disk=size,
        weights_1bit=counts["weights_1bit"],
        weights_8bit=counts["weights_8bit"],
        weights_32bit=counts["weights_32bit"],
        weights_other=counts["weights_other"],
        weights_16bit=counts["weights_16bit"],
        largest_32bit=largest_float32(proto),
    )
    if att_bias_names(decompacted(proto)) or state_names:
        rep.storage_bytes = storage_bytes(proto, state_names or [])
    if teacher_path is not None:
        if not Path(teacher_path).is_file():
            raise DataError(f"The teacher ONNX model {str(teacher_path)!r} does not exist. Export it first.")
        tb = Path(teacher_path).stat().st_size
        rep.teacher_path, rep.teacher_bytes = str(teacher_path), tb
        rep.compression_ratio = tb / size if size else None
    return rep


__all__ = ["SizeReport", "largest_float32", "size_report", "weight_counts"]
