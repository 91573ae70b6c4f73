"""Compact storage of an export's float parameters, in standard ONNX.

GSB's attention bias B (``blocks.N.attn.att_bias``, [H, N, N] per block, the a_shift of the A·V
BinaryMatMul) is most of a packed GSB file when stored as float32 (11.3 of 15.8 MB for DeiT-S). This
module stores it, and optionally the other float parameters, in fewer bytes. Each choice is an encoding
``encode(x) -> Encoded`` whose ``decoded()`` float32 values are what every runtime computes with:

``float32``  x as it is (4 bytes an element).
``float16``  x~ = fp16(x), round to nearest even (2 bytes an element); in the graph: a FLOAT16 initializer
             and ``Cast(to=FLOAT)``. |x~ - x| <= 2^-11 |x| in fp16's normal range (|x| >= 6.1e-5), and
             <= 2^-25 below it.
``int8``     per row, symmetric (1 byte an element plus one float32 scale a row): x is viewed as R rows of
             its last dimension (B: R = H * N rows of N); s_r = max_k |x_rk| / 127 (s_r = 1 for an all-zero
             row), q_rk = clip(round_half_even(x_rk / s_r), -127, 127), x~_rk = q_rk * s_r (one float32
             multiply, as ONNX DequantizeLinear and TVM's dequantize compute it); |x~ - x| <= s_r / 2.
             In the graph: an INT8 initializer [R, K], a FLOAT scale [R], ``DequantizeLinear(axis=0)``,
             then ``Reshape`` to x's shape.
``int16``    the same with 32767 instead of 127 (2 bytes an element plus the float32 scale a row);
             |x~ - x| <= s_r / 2 = max_k |x_rk| / 65534.
``int4``     the same with 7 instead of 127 (q in [-7, 7]; half a byte an element, packed two a byte by ONNX's
             INT4 type, plus the float32 scale a row); |x~ - x| <= s_r / 2.
             DequantizeLinear of INT16 and INT4 needs opset 21: the file's default-domain opset becomes 21
             (every op the exporter writes has the same meaning there).

Which tensors: ``att_bias`` applies to B (an initializer named ``*.att_bias``, or the a_shift input of a
``gsb_unsigned`` BinaryMatMul); ``float_params`` to every other float32 initializer that is a parameter or
buffer of the model (its name is a state_dict key) with at least :data:`MIN_ELEMENTS` elements (the position
embedding, tokens, LayerNorm weights, biases, shifts, per-row scales). Scalars and exporter-made constants
stay float32: they are tiny, and an exporter constant is often a product of parameters that a torch
reference could not reproduce after rounding the factors.

:func:`compact_proto` rewrites a ModelProto in place (the decoded values are bit-identical to
``Encoded.decoded()``); :func:`apply_to_model` gives a copy of the torch model whose tensors hold the same
decoded values, so an export is validated against exactly what it computes; :func:`storage_bytes` tells
what each choice would weigh without writing anything.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from bvit_edge.contract import (
    ATT_BIAS_STORAGES,
    DEFAULT_ATT_BIAS,
    DEFAULT_FLOAT_PARAMS,
    FLOAT_PARAMS_STORAGES,
    STORAGE_MIN_ELEMENTS,
)
from bvit_edge.errors import UsageError

ATT_BIAS_CHOICES = ATT_BIAS_STORAGES
FLOAT_PARAMS_CHOICES = FLOAT_PARAMS_STORAGES
#: float_params leaves tensors with fewer elements than this in float32.
MIN_ELEMENTS = STORAGE_MIN_ELEMENTS
ATT_BIAS_SUFFIX = "att_bias"
INT8_MAX = 127
INT4_MAX = 7
INT16_MAX = 32767
#: the default-domain opset a DequantizeLinear of INT16 / INT4 needs
INT4_OPSET = 21
#: storage dtype -> (largest integer code, numpy dtype of the codes)
_INT_CODES = {"int16": (INT16_MAX, np.int16), "int8": (INT8_MAX, np.int8), "int4": (INT4_MAX, np.int8)}
_OPSET21 = ("int16", "int4")

_T = onnx.TensorProto


def check_choice(att_bias: str, float_params: str) -> None:
    """UsageError for an unknown storage choice."""
    if att_bias not in ATT_BIAS_CHOICES:
        raise UsageError(f"att_bias={att_bias!r}: choose one of {', '.join(ATT_BIAS_CHOICES)} (--att-bias).")
    if float_params not in FLOAT_PARAMS_CHOICES:
        raise UsageError(
            f"float_params={float_params!r}: choose one of {', '.join(FLOAT_PARAMS_CHOICES)} (--float-params)."
        )


# --------------------------------------------------------------------------------------------------------
# encodings
# --------------------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """One tensor in a storage dtype: ``data`` (float32 / float16 / int16 / int8 codes), ``scale`` (integer
    codes: float32 [R])."""

    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray
    scale: np.ndarray | None = None

    def decoded(self) -> np.ndarray:
        """The float32 values a runtime computes with (see the module docstring)."""
        if self.dtype in _INT_CODES:
            assert self.scale is not None
            return (self.data.astype(np.float32) * self.scale[:, None]).reshape(self.shape)
        return self.data.astype(np.float32).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors (data, plus the scales of integer codes; int4 packs two a byte)."""
        data = -(-self.data.size // 2) if self.dtype == "int4" else self.data.nbytes
        return int(data + (self.scale.nbytes if self.scale is not None else 0))


def encode(x: np.ndarray, dtype: str) -> Encoded:
    """``x`` (float32) in the storage ``dtype``: "float32", "float16", or integer codes "int16" / "int8" /
    "int4" (per row of the last axis)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    shape = tuple(int(d) for d in x.shape)
    if not np.all(np.isfinite(x)):
        raise UsageError(
            "A parameter holds NaN or infinity; it cannot be stored compactly (train or load the model again)."
        )
    if dtype == "float32":
        return Encoded(dtype, shape, x.copy())
    if dtype == "float16":
        return Encoded(dtype, shape, x.astype(np.float16))
    if dtype in _INT_CODES:
        top, codes = _INT_CODES[dtype]
        rows = x.reshape(-1, shape[-1] if shape else 1)
        peak = np.max(np.abs(rows), axis=1)
        scale = np.where(peak > 0, peak / np.float32(top), np.float32(1.0)).astype(np.float32)
        q = np.clip(np.rint(rows / scale[:, None]), -top, top).astype(codes)
        return Encoded(dtype, shape, q, scale)
    raise UsageError(f"Unknown storage dtype {dtype!r}; use one of {', '.join(ATT_BIAS_CHOICES)}.")


def rounding_error(x: np.ndarray, dtype: str) -> float:
    """max |decoded - x| of ``x`` stored as ``dtype``."""
    x = np.asarray(x, np.float32)
    return float(np.max(np.abs(encode(x, dtype).decoded().astype(np.float64) - x))) if x.size else 0.0


# --------------------------------------------------------------------------------------------------------
# which tensors
# --------------------------------------------------------------------------------------------------------


def _attr_s(node: onnx.NodeProto, name: str) -> str:
    for a in node.attribute:
        if a.name == name:
            return a.s.decode()
    return ""


def att_bias_names(proto: onnx.ModelProto) -> set[str]:
    """Names of the float32 initializers that are GSB attention biases B."""
    inits = {i.name for i in proto.graph.initializer if i.data_type == _T.FLOAT}
    names = {n for n in inits if n.rsplit(".", 1)[-1] == ATT_BIAS_SUFFIX}
    for node in proto.graph.node:
        if (
            node.op_type == "BinaryMatMul"
            and _attr_s(node, "a_mode") == "gsb_unsigned"
            and len(node.input) > 2
            and node.input[2] in inits
        ):
            names.add(node.input[2])
    return names


def _numel(init: onnx.TensorProto) -> int:
    return int(np.prod(init.dims, dtype=np.int64)) if init.dims else 1


def float_param_names(proto: onnx.ModelProto, state_names: Iterable[str]) -> set[str]:
    """float32 initializers named after a model tensor (``state_names``), >= MIN_ELEMENTS, B excluded."""
    wanted = set(state_names)
    bias = att_bias_names(proto)
    return {
        i.name
        for i in proto.graph.initializer
        if i.data_type == _T.FLOAT and i.name in wanted and i.name not in bias and _numel(i) >= MIN_ELEMENTS
    }


# --------------------------------------------------------------------------------------------------------
# the graph rewrite
# --------------------------------------------------------------------------------------------------------


@dataclass
class StoredTensor:
    """How one initializer is stored: its elements, bytes as float32 and as stored, the rounding error."""

    name: str
    dtype: str
    shape: list[int]
    elements: int
    float32_bytes: int
    stored_bytes: int
    max_abs_error: float


@dataclass
class StorageReport:
    """What :func:`compact_proto` did: the choices and each tensor it re-encoded."""

    att_bias: str
    float_params: str
    tensors: list[StoredTensor] = field(default_factory=list)

    @property
    def saved_bytes(self) -> int:
        return sum(t.float32_bytes - t.stored_bytes for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        by_kind: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            kind = "att_bias" if t.name in self._bias else "float_params"
            agg = by_kind.setdefault(kind, {"tensors": 0, "elements": 0, "float32_bytes": 0, "stored_bytes": 0})
            agg["tensors"] += 1
            agg["elements"] += t.elements
            agg["float32_bytes"] += t.float32_bytes
            agg["stored_bytes"] += t.stored_bytes
        return {
            "att_bias": self.att_bias,
            "float_params": self.float_params,
            "saved_bytes": self.saved_bytes,
            "by_kind": by_kind,
            "max_abs_error": {
                k: max(
                    (t.max_abs_error for t in self.tensors if (t.name in self._bias) == (k == "att_bias")), default=0.0
                )
                for k in by_kind
            },
            "tensors": [asdict(t) for t in self.tensors],
        }

    _bias: set[str] = field(default_factory=set, repr=False)


def _unique(proto: onnx.ModelProto, base: str) -> str:
    taken = {i.name for i in proto.graph.initializer} | {o for n in proto.graph.node for o in n.output}
    taken |= {i.name for i in proto.graph.input}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _replace(proto: onnx.ModelProto, init: onnx.TensorProto, enc: Encoded) -> list[onnx.NodeProto]:
    """Replace float32 initializer ``init`` by ``enc`` plus the decoding nodes that recreate its name."""
    name = init.name
    graph = proto.graph
    if enc.dtype == "float16":
        stored = _unique(proto, f"{name}.float16")
        graph.initializer.append(numpy_helper.from_array(enc.data, stored))
        return [onnx.helper.make_node("Cast", [stored], [name], name=f"{name}.decode", to=_T.FLOAT)]
    stored, scale = _unique(proto, f"{name}.{enc.dtype}"), _unique(proto, f"{name}.scale")
    graph.initializer.append(numpy_helper.from_array(_int4(enc.data) if enc.dtype == "int4" else enc.data, stored))
    assert enc.scale is not None
    graph.initializer.append(numpy_helper.from_array(enc.scale, scale))
    if len(enc.shape) == 2:
        return [onnx.helper.make_node("DequantizeLinear", [stored, scale], [name], name=f"{name}.decode", axis=0)]
    rows = _unique(proto, f"{name}.rows")
    shape = _unique(proto, f"{name}.shape")
    graph.initializer.append(numpy_helper.from_array(np.asarray(enc.shape, np.int64), shape))
    return [
        onnx.helper.make_node("DequantizeLinear", [stored, scale], [rows], name=f"{name}.decode", axis=0),
        onnx.helper.make_node("Reshape", [rows, shape], [name], name=f"{name}.reshape"),
    ]


def _int4(q: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return q.astype(ml_dtypes.int4)


def _use_opset(proto: onnx.ModelProto, version: int) -> None:
    """Raise the default-domain opset import to at least ``version``."""
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = max(int(imp.version), version)
            return
    proto.opset_import.append(onnx.helper.make_opsetid("", version))


def compact_proto(
    proto: onnx.ModelProto,
    att_bias: str = DEFAULT_ATT_BIAS,
    float_params: str = DEFAULT_FLOAT_PARAMS,
    state_names: Iterable[str] = (),
) -> tuple[StorageReport, dict[str, Encoded]]:
    """Re-encode B (``att_bias``) and the model's other float tensors (``float_params``; only initializers
    named in ``state_names``) in place. The decoding nodes go first in the graph (they depend on
    initializers alone), so the node order stays topological. Returns the report and name -> Encoded."""
    check_choice(att_bias, float_params)
    bias = att_bias_names(proto)
    plan: dict[str, str] = {n: att_bias for n in bias if att_bias != "float32"}
    if float_params != "float32":
        plan.update(dict.fromkeys(float_param_names(proto, state_names), float_params))
    report = StorageReport(att_bias, float_params, _bias=bias)
    encoded: dict[str, Encoded] = {}
    if not plan:
        return report, encoded
    decoders: list[onnx.NodeProto] = []
    for init in list(proto.graph.initializer):
        dtype = plan.get(init.name)
        if dtype is None:
            continue
        x = numpy_helper.to_array(init).astype(np.float32)
        if dtype in _INT_CODES and x.ndim < 2:
            dtype = "float16"  # per-row scales of a vector would cost more than the vector
        enc = encode(x, dtype)
        encoded[init.name] = enc
        report.tensors.append(
            StoredTensor(
                init.name,
                dtype,
                list(enc.shape),
                int(x.size),
                int(x.nbytes),
                enc.nbytes,
                float(np.max(np.abs(enc.decoded() - x))) if x.size else 0.0,
            )
        )
        decoders += _replace(proto, init, enc)
    replaced = set(encoded)
    originals = [i for i in proto.graph.initializer if i.name not in replaced or i.data_type != _T.FLOAT]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(originals)
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(decoders + nodes)
    if any(e.dtype in _OPSET21 for e in encoded.values()):
        _use_opset(proto, INT4_OPSET)
    return report, encoded


def storage_bytes(
    proto: onnx.ModelProto, state_names: Iterable[str] = (), choices: Iterable[tuple[str, str]] | None = None
) -> dict[str, int]:
    """Serialized bytes of ``proto`` under each (att_bias, float_params) choice, key "att_bias=X,float_params=Y".
    ``proto`` is not modified (B is decoded back to float32 first when it is already compact)."""
    base = decompacted(proto)
    names = list(state_names)
    out: dict[str, int] = {}
    for ab, fp in choices or [(a, f) for f in FLOAT_PARAMS_CHOICES for a in ATT_BIAS_CHOICES]:
        work = onnx.ModelProto()
        work.CopyFrom(base)
        compact_proto(work, ab, fp, names)
        out[f"att_bias={ab},float_params={fp}"] = work.ByteSize()
    return out


def decompacted(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` with the decoders this module adds folded back into float32 initializers."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    inits = {i.name: i for i in work.graph.initializer}
    decoded: dict[str, np.ndarray] = {}
    drop_nodes: list[onnx.NodeProto] = []
    for node in work.graph.node:
        if not node.name.endswith((".decode", ".reshape")):
            continue
        if node.op_type == "Cast" and node.input[0] in inits:
            decoded[node.output[0]] = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits and node.input[1] in inits:
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
            s = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            decoded[node.output[0]] = q * (s[:, None] if s.ndim == 1 and q.ndim == 2 else s)
        elif node.op_type == "Reshape" and node.input[0] in decoded and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]])
            decoded[node.output[0]] = decoded.pop(node.input[0]).reshape(shape)
        else:
            continue
        drop_nodes.append(node)
    if not drop_nodes:
        return work
    used = {i for n in drop_nodes for i in n.input}
    keep_nodes = [n for n in work.graph.node if n not in drop_nodes]
    still_used = {i for n in keep_nodes for i in n.input}
    finals = {n.output[0] for n in drop_nodes} & still_used
    inits_kept = [i for i in work.graph.initializer if i.name not in used or i.name in still_used]
    del work.graph.initializer[:]
    work.graph.initializer.extend(inits_kept)
    work.graph.initializer.extend(numpy_helper.from_array(decoded[n].astype(np.float32), n) for n in sorted(finals))
    del work.graph.node[:]
    work.graph.node.extend(keep_nodes)
    return work


def restore_float32(proto: onnx.ModelProto, tensors: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``proto`` (modified in place and returned) with every float32 initializer named in ``tensors`` (a
    model's state, name -> array of the same shape) set to those exact values: after :func:`decompacted`,
    the export as it would be with float32 storage."""
    for i, init in enumerate(proto.graph.initializer):
        value = tensors.get(init.name)
        if value is None or init.data_type != _T.FLOAT or list(init.dims) != list(np.shape(value)):
            continue
        proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), init.name))
    return proto


# --------------------------------------------------------------------------------------------------------
# the torch side
# --------------------------------------------------------------------------------------------------------


def state_names(model: Any) -> list[str]:
    """The model's parameter and buffer names (the names the exporter gives their initializers)."""
    return [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]


def apply_to_model(model: Any, encoded: dict[str, Encoded]) -> Any:
    """A deep copy of ``model`` whose tensors named in ``encoded`` hold the decoded values (the model as
    the compact export computes it). ``model`` itself is not touched."""
    import torch

    if not encoded:
        return model
    work = copy.deepcopy(model)
    tensors = dict(work.named_parameters())
    tensors.update(dict(work.named_buffers()))
    missing = sorted(set(encoded) - set(tensors))
    if missing:
        raise UsageError(f"The model has no tensors named {missing[:3]}: the export is not of this model.")
    with torch.no_grad():
        for name, enc in encoded.items():
            t = tensors[name]
            t.copy_(torch.from_numpy(enc.decoded()).reshape(t.shape).to(t.dtype))
    return work


def encode_model(model: Any, att_bias: str, float_params: str = "float32") -> dict[str, Encoded]:
    """name -> Encoded for the model's own tensors under a choice, without exporting: B (buffers or
    parameters named ``*.att_bias``) and, with float_params, every other float tensor of >= MIN_ELEMENTS.
    The same tensors an export of a frozen model re-encodes when its exporter keeps every tensor as a
    named initializer (the packed export of a GSB model does)."""
    check_choice(att_bias, float_params)
    out: dict[str, Encoded] = {}
    for name in state_names(model):
        t = model.get_parameter(name) if name in dict(model.named_parameters()) else model.get_buffer(name)
        if not t.is_floating_point():
            continue
        x = t.detach().cpu().float().numpy()
        if name.rsplit(".", 1)[-1] == ATT_BIAS_SUFFIX:
            if att_bias != "float32":
                out[name] = encode(x, att_bias if (att_bias not in _INT_CODES or x.ndim >= 2) else "float16")
        elif float_params != "float32" and x.size >= MIN_ELEMENTS:
            out[name] = encode(x, float_params)
    return out


__all__ = [
    "ATT_BIAS_CHOICES",
    "DEFAULT_ATT_BIAS",
    "DEFAULT_FLOAT_PARAMS",
    "FLOAT_PARAMS_CHOICES",
    "MIN_ELEMENTS",
    "Encoded",
    "StorageReport",
    "StoredTensor",
    "apply_to_model",
    "att_bias_names",
    "check_choice",
    "compact_proto",
    "decompacted",
    "encode",
    "encode_model",
    "float_param_names",
    "restore_float32",
    "rounding_error",
    "state_names",
    "storage_bytes",
]
