"""The baseline a user gets for free: the float teacher quantized by onnxruntime, int8 weights, one call.

``quantize_teacher(teacher_onnx, out_onnx)`` runs ``onnxruntime.quantization.quantize_dynamic(src, dst,
weight_type=QuantType.QInt8)`` with its defaults otherwise (no calibration data, no retraining, per-tensor
weight scales): every MatMul / Gemm weight becomes int8 with a float scale (w~ = s * q, s = max|w| / 127
per tensor, as onnxruntime chooses it), activations are quantized to uint8 on the fly at run time
(DynamicQuantizeLinear) and the products run as integer GEMMs (MatMulInteger / DynamicQuantizeMatMul).
That is the comparison a binarized model must win: it costs no training and almost no accuracy.

The file is written atomically (a failed quantization leaves nothing), keeps the source's metadata
(normalisation, classes) and is checked by onnx.checker.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from bvit_edge.atomic import write_bytes
from bvit_edge.errors import DataError, MissingDependencyError

METHOD = "onnxruntime.quantization.quantize_dynamic"
WEIGHT_TYPE = "QInt8"
#: Ops of an onnxruntime-quantized graph that multiply in integers.
INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger", "QLinearMatMul", "QLinearConv")


@dataclass
class Int8Teacher:
    """What :func:`quantize_teacher` wrote."""

    path: str
    bytes: int
    source: str
    source_bytes: int
    method: str
    weight_type: str
    onnxruntime: str
    integer_nodes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(path: Path) -> onnx.ModelProto:
    """The ONNX model at ``path``; DataError for a missing or unreadable file."""
    if not path.is_file():
        raise DataError(f"The teacher {path} does not exist; export it first (`bvit-edge export` writes teacher.onnx).")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise several types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DataError(f"{path} is not a readable ONNX model ({first}); export the teacher again.") from None
    return proto


def quantize_teacher(teacher_onnx: str | os.PathLike[str], out_onnx: str | os.PathLike[str]) -> Int8Teacher:
    """Quantize the float ``teacher_onnx`` with onnxruntime's ``quantize_dynamic`` (int8 weights) into
    ``out_onnx`` (see the module docstring)."""
    try:
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:  # pragma: no cover - a declared dependency
        raise MissingDependencyError("The int8 teacher needs onnxruntime: pip install onnxruntime.") from None
    src = Path(teacher_onnx)
    source = _load(src)
    tmpdir = Path(tempfile.mkdtemp(prefix="bvit-edge-int8-"))
    try:
        raw = tmpdir / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to pre-process is for calibrated (static) quantization
        try:
            quantize_dynamic(str(src), str(raw), weight_type=QuantType.QInt8)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
            raise DataError(
                f"onnxruntime could not quantize {src} ({type(exc).__name__}: {first}). Give the "
                "float teacher exported by `bvit-edge export` (teacher.onnx)."
            ) from None
        finally:
            root.setLevel(level)
        proto = _load(raw)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    have = {p.key for p in proto.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in have:
            proto.metadata_props.add(key=prop.key, value=prop.value)
    data = proto.SerializeToString()
    write_bytes(out_onnx, data)
    quantized = sum(1 for n in proto.graph.node if n.op_type in INTEGER_OPS)
    return Int8Teacher(
        path=str(out_onnx),
        bytes=len(data),
        source=str(src),
        source_bytes=src.stat().st_size,
        method=METHOD,
        weight_type=WEIGHT_TYPE,
        onnxruntime=onnxruntime.__version__,
        integer_nodes=quantized,
    )


__all__ = ["METHOD", "WEIGHT_TYPE", "Int8Teacher", "quantize_teacher"]
