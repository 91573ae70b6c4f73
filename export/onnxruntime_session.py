"""onnxruntime sessions for bvit-edge exports (export's validation and size report, ``bvit-edge run`` and
``bench``; :mod:`bvit_edge.runtime.ort` is the runtime's name for this module).

``ort_session(path, threads=None, proto=None)``:

* a standard export (only standard ONNX ops) runs on stock onnxruntime;
* a packed export (``bvit_edge`` domain v1 nodes) runs with the bvit_edge ops registered as
  onnxruntime-extensions Python ops backed by the numpy references of :mod:`bvit_edge.export.ops`. The
  extensions only dispatch Python ops in the "ai.onnx.contrib" domain, so the nodes' domain is rewritten
  in memory before the session is created (the file is never modified). This is the reference path
  (correct, not fast); the fast path is the TVM lowering.

A missing, corrupt or truncated .onnx gives a :class:`bvit_edge.errors.DataError` naming the file.

No malformed model may abort the process: onnxruntime-extensions aborts (SIGABRT) when a Python op raises.
So a packed model is checked from its graph before the session is made (bvit_edge.export.ops.checks: domain
version 1, attributes, constant inputs' shapes and types), and each Python op catches its own errors: it
records the error, returns zeros of the output's shape, and the session wrapper (:class:`CheckedSession`)
raises the recorded error as a DataError once ``run`` returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bvit_edge.contract import BINARY_LINEAR, BINARY_MATMUL, DEFAULT_GSB_RATIOS
from bvit_edge.contract import DOMAIN as BVIT_DOMAIN
from bvit_edge.errors import DataError, MissingDependencyError, UsageError

CONTRIB_DOMAIN = "ai.onnx.contrib"
_NO_BIAS = "BinaryLinearNoBias"
_registered = False
_lock = threading.Lock()
_op_errors: list[str] = []  # errors the Python ops caught during the current run (guarded by _lock)


# --------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read and check an .onnx file; a clear DataError for a missing, corrupt or truncated one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ONNX model {str(path)!r} does not exist. Export one first (`bvit-edge export`).")
    data = path.read_bytes()
    fix = "The file is corrupt or truncated (an interrupted copy?): export the model again (`bvit-edge export`)."
    if not data:
        raise DataError(f"ONNX model {str(path)!r} is empty. {fix}")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # google.protobuf DecodeError and friends
        raise DataError(f"Cannot parse ONNX model {str(path)!r} ({type(exc).__name__}). {fix}") from exc
    if not proto.HasField("graph") or not proto.graph.output:
        raise DataError(f"ONNX model {str(path)!r} has no graph or no outputs. {fix}")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DataError(f"ONNX model {str(path)!r} is not a valid ONNX model: {first}. {fix}") from exc
    return proto


def uses_bvit_ops(proto: onnx.ModelProto) -> bool:
    """True when the graph holds nodes of the bvit_edge domain (a packed export)."""
    return any(n.domain == BVIT_DOMAIN for n in proto.graph.node)


# --------------------------------------------------------------------------------------------------------
# the bvit_edge ops as onnxruntime-extensions Python ops
# --------------------------------------------------------------------------------------------------------


def _register_python_ops() -> None:
    """Register BinaryLinear / BinaryLinearNoBias / BinaryMatMul once per process."""
    global _registered
    with _lock:
        if _registered:
            return
        try:
            from onnxruntime_extensions import PyCustomOpDef, onnx_op
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise MissingDependencyError(
                "Running a packed (bvit_edge) ONNX export in onnxruntime needs onnxruntime-extensions: "
                "pip install onnxruntime-extensions, or export with --ops standard."
            ) from exc
        from bvit_edge.export.ops.binary_linear import binary_linear_reference
        from bvit_edge.export.ops.binary_matmul import binary_matmul_reference

        f, u8, s, i64 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_uint8, PyCustomOpDef.dt_string, PyCustomOpDef.dt_int64

        @onnx_op(op_type=BINARY_LINEAR, inputs=[f, f, f, u8, f, f], outputs=[f], attrs={"mode": s, "in_features": i64})
        def _binary_linear(x, shift, alpha, w_bits, w_scale, bias, mode="signed", in_features=0):
            return _guarded(
                BINARY_LINEAR,
                lambda: binary_linear_reference(
                    x, shift, alpha, w_bits, w_scale, bias, mode=mode, in_features=int(in_features)
                ),
                lambda: (*np.shape(x)[:-1], np.shape(w_bits)[0]),
            )

        @onnx_op(op_type=_NO_BIAS, inputs=[f, f, f, u8, f], outputs=[f], attrs={"mode": s, "in_features": i64})
        def _binary_linear_nb(x, shift, alpha, w_bits, w_scale, mode="signed", in_features=0):
            return _guarded(
                BINARY_LINEAR,
                lambda: binary_linear_reference(
                    x, shift, alpha, w_bits, w_scale, None, mode=mode, in_features=int(in_features)
                ),
                lambda: (*np.shape(x)[:-1], np.shape(w_bits)[0]),
            )

        @onnx_op(op_type=BINARY_MATMUL, inputs=[f] * 6, outputs=[f], attrs={"a_mode": s, "b_mode": s, "gsb_ratios": s})
        def _binary_matmul(*operands, a_mode="signed", b_mode="signed", gsb_ratios=_DEFAULT_RATIOS_TEXT):
            # operands: a, b, a_shift, a_alpha, b_shift, b_alpha (the op's inputs, in order)
            ratios = [float(r) for r in str(gsb_ratios).split(",")]
            return _guarded(
                BINARY_MATMUL,
                lambda: binary_matmul_reference(*operands, a_mode=a_mode, b_mode=b_mode, gsb_ratios=ratios),
                lambda: (*np.shape(operands[0])[:-1], np.shape(operands[1])[-1]),
            )

        _registered = True


def _guarded(op: str, compute: Callable[[], np.ndarray], out_shape: Callable[[], tuple[int, ...]]) -> np.ndarray:
    """Run an op's reference inside onnxruntime without letting an exception escape (that aborts the
    process): on an error, record it and return zeros of the output's shape (empty when even that is
    unknown); :class:`CheckedSession` raises the recorded error after the run."""
    try:
        return compute()
    except Exception as exc:  # noqa: BLE001 - anything escaping here kills the process
        msg = str(exc).strip().rstrip(".") or type(exc).__name__
        with _lock:
            _op_errors.append(msg if msg.startswith(op) else f"{op}: {msg}")
        try:
            return np.zeros(out_shape(), np.float32)
        except Exception:  # noqa: BLE001
            return np.zeros((0,), np.float32)


class CheckedSession:
    """An onnxruntime session of a packed model whose ``run`` raises a DataError for any error a bvit_edge
    op caught (see :func:`_guarded`) or onnxruntime raised; every other attribute is the session's."""

    def __init__(self, session: Any, path: str) -> None:
        self._session, self._path = session, path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            del _op_errors[:]
        try:
            out = self._session.run(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; each becomes a DataError
            raise DataError(self._failure(str(exc))) from None
        with _lock:
            failed = list(_op_errors)
        if failed:
            raise DataError(self._failure(""))
        return out

    def _failure(self, ort_message: str) -> str:
        with _lock:
            failed = list(_op_errors)
        reason = failed[0] if failed else (ort_message.strip().splitlines() or ["unknown error"])[0][:400].rstrip(".")
        return (
            f"Running {self._path!r} in onnxruntime failed: {reason}. The model and its input do not fit "
            "together (a damaged model, or an input of another size): export the model again, or check the "
            "input's shape."
        )


def _float_list_as_string(values: Sequence[float]) -> str:
    # repr of the float32 value as a double round-trips exactly back to the same float32.
    return ",".join(repr(float(np.float32(v))) for v in values)


_DEFAULT_RATIOS_TEXT = _float_list_as_string(DEFAULT_GSB_RATIOS)


def rewrite_for_extensions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose bvit_edge nodes sit in "ai.onnx.contrib" with attributes the Python ops
    take (string / int64 / float only: ``gsb_ratios`` becomes a comma-separated string; a BinaryLinear
    without bias becomes BinaryLinearNoBias)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for node in out.graph.node:
        if node.domain != BVIT_DOMAIN:
            continue
        node.domain = CONTRIB_DOMAIN
        if node.op_type == BINARY_LINEAR and (len(node.input) < 6 or not node.input[5]):
            del node.input[5:]
            node.op_type = _NO_BIAS
        if node.op_type == BINARY_MATMUL:
            attrs = {a.name: a for a in node.attribute}
            ratios = list(attrs["gsb_ratios"].floats) if "gsb_ratios" in attrs else list(DEFAULT_GSB_RATIOS)
            keep = [a for a in node.attribute if a.name != "gsb_ratios"]
            del node.attribute[:]
            node.attribute.extend(keep)
            node.attribute.append(onnx.helper.make_attribute("gsb_ratios", _float_list_as_string(ratios)))
    imports = [o for o in out.opset_import if o.domain != BVIT_DOMAIN]
    if not any(o.domain == CONTRIB_DOMAIN for o in imports):
        imports.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    del out.opset_import[:]
    out.opset_import.extend(imports)
    return out


# --------------------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------------------


def ort_session(path: str | Path, threads: int | None = None, proto: onnx.ModelProto | None = None) -> Any:
    """An onnxruntime InferenceSession (CPU) for a bvit-edge export, packed or standard.

    ``threads``: intra-op threads (None: onnxruntime's default). ``proto``: the model already in memory (the
    export that wrote ``path`` has it): used instead of reading ``path`` again (``path`` then only names it
    in messages)."""
    import onnxruntime as ort

    if threads is not None and int(threads) < 1:
        raise UsageError(f"threads must be >= 1, got {threads}.")
    if proto is None:
        proto = load_model(path)
    packed = uses_bvit_ops(proto) or any(o.domain == BVIT_DOMAIN for o in proto.opset_import)
    if packed:
        from bvit_edge.export.ops.checks import check_bvit_nodes

        check_bvit_nodes(proto, where=f"ONNX model {str(path)!r}")
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if uses_bvit_ops(proto):
        from onnxruntime_extensions import get_library_path

        _register_python_ops()
        proto = rewrite_for_extensions(proto)
        opts.register_custom_ops_library(get_library_path())
    try:
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return CheckedSession(session, str(path)) if packed else session
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        raise DataError(
            f"onnxruntime cannot load {str(path)!r}: {first}. Re-export the model; if it persists, the export "
            "uses an op onnxruntime does not know (export with --ops standard)."
        ) from exc


def run_session(session: Any, x: np.ndarray, batch_size: int | None = None) -> list[np.ndarray]:
    """Run ``session`` on ``x`` [B, C, H, W] float32 in chunks of ``batch_size`` (default: the model's
    static batch, or all of B when the batch is dynamic); outputs concatenated along axis 0."""
    inp = session.get_inputs()[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    static = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = int(batch_size or static or x.shape[0] or 1)
    if static is not None and step != static:
        step = static
    parts: list[list[np.ndarray]] = []
    for i in range(0, x.shape[0], step):
        parts.append(session.run(None, {inp.name: x[i : i + step]}))
    return [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(parts[0]))]


def ort_run(
    path: str | Path, x: np.ndarray, threads: int | None = None, batch_size: int | None = None
) -> list[np.ndarray]:
    """Load ``path`` and run it on ``x``: convenience for scripts and tests."""
    return run_session(ort_session(path, threads), x, batch_size)


__all__ = [
    "CheckedSession",
    "load_model",
    "ort_run",
    "ort_session",
    "rewrite_for_extensions",
    "run_session",
    "uses_bvit_ops",
]
