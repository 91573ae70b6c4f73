"""Export a frozen bvit-edge model (or a full-precision teacher) to ONNX through torch.onnx (dynamo).

``export_onnx(model, path, ops="packed")`` runs ``torch.onnx.export(..., dynamo=True, opset_version=18,
custom_translation_table=...)``: the ``torch.ops.bvit`` calls of a frozen model become ``bvit_edge`` domain
v1 nodes with bit-packed uint8 weights (``ops="packed"``), or their standard-ONNX decomposition
(``ops="standard"``, runnable by any ONNX runtime); int8 parts become DequantizeLinear / QuantizeLinear on
int8 initializers either way. A full-precision teacher has no custom ops and exports as plain ONNX.

After the export the model is set to IR version 10 (onnxruntime 1.31 refuses newer), checked with
``onnx.checker.check_model(full_check=True)``, and ONNX shape inference must give every graph output a
shape on its own (the exporter's output shapes are cleared in a copy first). The file is written once,
atomically, with all its metadata (bvit_edge.contract: ops, op domain, model name, default_cfg, storage and,
given ``data``, the data description): on any failure no partial file is left. The result keeps the model in
memory (``ExportResult.proto``) so that validation and the size report need not read the file again.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import onnx

from bvit_edge.atomic import write_bytes
from bvit_edge.contract import (
    META_DEFAULT_CFG,
    META_MODEL_NAME,
    META_OP_DOMAIN,
    META_OPS,
    META_STORAGE,
    data_metadata,
    op_domain_tag,
)
from bvit_edge.errors import BvitEdgeError, ConfigError, UsageError, ValidationError
from bvit_edge.export.ops import DOMAIN, OPS_CHOICES, VERSION, translation_table
from bvit_edge.export.storage import (
    DEFAULT_ATT_BIAS,
    DEFAULT_FLOAT_PARAMS,
    Encoded,
    check_choice,
    compact_proto,
    state_names,
)

IR_VERSION = 10
OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


@dataclass
class ExportResult:
    """What an export wrote: path, flavour, graph facts and bytes on disk."""

    path: str
    ops: str
    opset: int
    ir_version: int
    input_name: str
    input_shape: list[Any]
    output_names: list[str]
    output_shapes: list[list[Any]]
    dynamic_batch: bool
    bytes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    #: name -> how the export stores that tensor (bvit_edge.export.storage); not part of to_dict()
    encoded: dict[str, Encoded] = field(default_factory=dict, repr=False, compare=False)
    #: the model as written to ``path`` (metadata included); not part of to_dict()
    proto: onnx.ModelProto | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        kept = [f.name for f in fields(self) if f.name not in ("encoded", "proto")]
        return {name: copy.deepcopy(getattr(self, name)) for name in kept}


# --------------------------------------------------------------------------------------------------------
# checks before the export
# --------------------------------------------------------------------------------------------------------


def check_frozen(model: Any) -> None:
    """A model with quantized training layers (anything offering ``frozen()`` / ``freeze_()``) must be
    frozen first; a plain float model (a teacher) passes."""
    if getattr(model, "is_frozen", False):
        return
    for name, module in model.named_modules():
        if callable(getattr(module, "frozen", None)) or callable(getattr(module, "freeze_", None)):
            where = name or type(model).__name__
            raise ConfigError(
                f"The model is not frozen: module {where!r} ({type(module).__name__}) is a training-mode "
                "quantized layer. Export needs the deployment form: call "
                "bvit_edge.quant.freeze.freeze(model) (or `bvit-edge export` on a checkpoint, which freezes "
                "it) and export again."
            )


def _example_input(model: Any, input_shape: Sequence[int] | None) -> Any:
    import torch

    if input_shape is None:
        cfg = getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size")
        if size is None:
            raise UsageError(
                "Cannot tell the model's input size: it has no default_cfg['input_size']. Pass "
                "input_shape=(1, C, H, W) (CLI: --input-size)."
            )
        input_shape = (1, *size)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise UsageError(f"input_shape must be (batch, channels, height, width) with positive sizes, got {shape}.")
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen)


# --------------------------------------------------------------------------------------------------------
# the export itself
# --------------------------------------------------------------------------------------------------------


def _torch_export(model: Any, example: Any, ops: str, dynamic_batch: bool) -> onnx.ModelProto:
    import torch

    kwargs: dict[str, Any] = dict(
        dynamo=True,
        opset_version=OPSET,
        custom_translation_table=translation_table(ops),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        optimize=True,
        verbose=False,
    )
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=65536)},)
    # The exporter prints progress with print(): keep stdout clean for `--json` callers.
    noisy = logging.getLogger("torch.onnx")
    old_level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            program = torch.onnx.export(model, (example,), **kwargs)
    finally:
        noisy.setLevel(old_level)
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ConfigError("torch.onnx.export returned no program.")
    return program.model_proto


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OP_NAME = re.compile(r"OpOverload\(op='([\w.:]+)'")


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    msg = next((t.strip() for t in text if t.strip()), type(exc).__name__)
    return msg[:400]


def _describe_export_failure(exc: BaseException) -> str:
    """The op the exporter could not translate (searched along the exception chain), else the first line."""
    seen: BaseException | None = exc
    while seen is not None:
        found = _OP_NAME.search(str(seen))
        if found:
            return f"it has no ONNX translation for the op {found.group(1)!r}."
        seen = seen.__cause__ or seen.__context__
    return _first_line(exc)


def _strip_debug_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces / local paths: artifacts should not carry them."""

    def strip_graph(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    strip_graph(attr.g)
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            del vi.metadata_props[:]
        for init in graph.initializer:
            del init.metadata_props[:]

    strip_graph(proto.graph)
    del proto.metadata_props[:]


def _finalize(proto: onnx.ModelProto, ops: str, model: Any) -> onnx.ModelProto:
    proto.ir_version = IR_VERSION
    _strip_debug_metadata(proto)
    domains = {n.domain for n in proto.graph.node}
    if proto.functions:
        raise ConfigError(
            f"The export left {len(proto.functions)} ONNX local function(s) "
            f"({', '.join(sorted({f.name for f in proto.functions}))}): a module the exporter could not "
            "inline. Replace it with standard torch ops or a torch.ops.bvit op."
        )
    unknown = sorted(d for d in domains if d not in ("", "ai.onnx", DOMAIN))
    if unknown:
        raise ConfigError(
            f"The export produced nodes in unsupported ONNX domains {unknown}; only standard ops and "
            f"{DOMAIN!r} are allowed."
        )
    if ops == "standard" and DOMAIN in domains:
        raise ConfigError(f"A standard export still holds {DOMAIN!r} nodes: a translation was bypassed. This is a bug.")
    imports = {o.domain: o for o in proto.opset_import}
    if DOMAIN in domains and DOMAIN not in imports:
        proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, VERSION))
    if DOMAIN not in domains and DOMAIN in imports:
        keep = [o for o in proto.opset_import if o.domain != DOMAIN]
        del proto.opset_import[:]
        proto.opset_import.extend(keep)
    cfg = dict(getattr(model, "default_cfg", None) or {})
    meta = {
        META_OPS: ops if DOMAIN in domains else "standard",
        META_OP_DOMAIN: op_domain_tag(),
        META_MODEL_NAME: str(getattr(model, "model_name", type(model).__name__)),
        META_DEFAULT_CFG: json.dumps({k: v for k, v in cfg.items() if isinstance(v, (int, float, str, tuple, list))}),
    }
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "bvit-edge"
    return proto


def check_exported(proto: onnx.ModelProto) -> list[list[Any]]:
    """onnx.checker full check, then shape inference alone must give every output a shape.

    Returns the inferred output shapes (ints, or the symbolic name of a dynamic dim)."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise ValidationError(f"The exported ONNX model fails onnx.checker (full check): {_first_line(exc)}") from exc
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.value_info[:]
    for out in probe.graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True)
    shapes: list[list[Any]] = []
    for out in inferred.graph.output:
        tt = out.type.tensor_type
        if not tt.HasField("shape"):
            raise ValidationError(
                f"ONNX shape inference gives no shape for output {out.name!r}; the export is incomplete."
            )
        shapes.append([d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim])
    return shapes


def export_onnx(
    model: Any,
    path: str | Path,
    *,
    ops: str = "packed",
    input_shape: Sequence[int] | None = None,
    dynamic_batch: bool = True,
    att_bias: str = DEFAULT_ATT_BIAS,
    float_params: str = DEFAULT_FLOAT_PARAMS,
    data: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Export ``model`` (frozen binary student, or float teacher) to ``path`` and return what was written.

    ``ops``: "packed" (bvit_edge nodes, 1 bit a weight) or "standard" (standard ONNX ops only).
    ``input_shape``: (1, C, H, W); default from ``model.default_cfg['input_size']``.
    ``dynamic_batch``: the batch axis is symbolic ("batch"); falls back to a static one if the model
    cannot be traced with it.
    ``att_bias`` ("float32" | "float16" | "int8") and ``float_params`` ("float32" | "float16"): how GSB's
    attention bias B and the other float parameters are stored (bvit_edge.export.storage; standard
    DequantizeLinear / Cast nodes decode them). The result's ``encoded`` says which tensors were re-encoded:
    ``bvit_edge.export.storage.apply_to_model(model, result.encoded)`` is the model the file computes.
    ``data``: the data description to record (a checkpoint config's mean, std, classes, image_size;
    bvit_edge.contract.DATA_METADATA), which compile copies into the artifact and ``run`` uses.
    """
    if ops not in OPS_CHOICES:
        raise UsageError(f"ops must be one of {', '.join(OPS_CHOICES)}, got {ops!r}.")
    check_choice(att_bias, float_params)
    import torch

    check_frozen(model)
    model.eval()
    example = _example_input(model, input_shape)
    proto = None
    errors: list[str] = []
    for dyn in [True, False] if dynamic_batch else [False]:
        try:
            with torch.no_grad():
                proto = _torch_export(model, example, ops, dyn)
            dynamic_batch = dyn
            break
        except BvitEdgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; report the first line
            errors.append(_describe_export_failure(exc))
            if errors[-1].startswith("it has no ONNX translation"):
                break  # a static batch would not help
    if proto is None:
        raise ConfigError(
            f"torch.onnx could not export {type(model).__name__}: {errors[-1]} A module or op in the model "
            "is not supported by the exporter (an unsupported module). Binary layers must be frozen into "
            "torch.ops.bvit calls (bvit_edge.quant.freeze.freeze); other layers must use standard torch ops."
        )
    proto = _finalize(proto, ops, model)
    storage, encoded = compact_proto(proto, att_bias, float_params, state_names(model))
    proto.metadata_props.add(key=META_STORAGE, value=json.dumps({"att_bias": att_bias, "float_params": float_params}))
    for key, value in data_metadata(data or {}).items():
        proto.metadata_props.add(key=key, value=value)
    out_shapes = check_exported(proto)
    serialized = proto.SerializeToString()
    write_bytes(path, serialized)
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        key = f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        counts[key] = counts.get(key, 0) + 1
    in_dims = proto.graph.input[0].type.tensor_type.shape.dim
    return ExportResult(
        path=str(path),
        ops=ops if any(n.domain == DOMAIN for n in proto.graph.node) else "standard",
        opset=OPSET,
        ir_version=proto.ir_version,
        input_name=proto.graph.input[0].name,
        input_shape=[d.dim_value if d.HasField("dim_value") else d.dim_param for d in in_dims],
        output_names=[o.name for o in proto.graph.output],
        output_shapes=out_shapes,
        dynamic_batch=dynamic_batch,
        bytes=len(serialized),
        op_counts=dict(sorted(counts.items())),
        storage=storage.to_dict(),
        encoded=encoded,
        proto=proto,
    )


def export_teacher_onnx(model: Any, path: str | Path, **kwargs: Any) -> ExportResult:
    """Export a full-precision model (the baseline teacher) as plain ONNX (standard ops only)."""
    return export_onnx(model, path, ops="standard", **kwargs)


__all__ = [
    "IR_VERSION",
    "OPSET",
    "ExportResult",
    "check_exported",
    "check_frozen",
    "export_onnx",
    "export_teacher_onnx",
]
