"""Static checks of a model's ``bvit_edge`` nodes, before any runtime executes them.

A runtime that executes the ops from Python (onnxruntime-extensions) cannot report an error raised inside
an op: the process aborts. So a packed model is checked as a whole first, from its graph alone (no data
runs): the domain version, each node's op type, attributes and inputs, and every input that is a constant
(an initializer or a Constant node) against the shapes and types the op's spec (docs/ops/*_v1.md) requires:

BinaryLinear   mode in {signed, unsigned}; in_features = K >= 1; 5 or 6 inputs; shift f32 [K]; alpha f32
               with one element; W_bits u8 [N, Kp/8] (Kp = K padded to a multiple of 64); w_scale f32 [N];
               bias f32 [N]
BinaryMatMul   a_mode in {signed, unsigned, gsb_unsigned}, b_mode in {signed, gsb_signed}; two finite
               gsb_ratios; 6 inputs; a_alpha / b_alpha f32 with 3 elements for a gsb mode, else at least 1

Each problem is a :class:`~bvit_edge.errors.DataError` (exit code 2) naming the node, what is wrong and
that the model must be exported again. Inputs computed at run time are checked by the op itself.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import onnx

from bvit_edge import packing
from bvit_edge.contract import (
    BINARY_LINEAR,
    BINARY_MATMUL,
    DEFAULT_GSB_RATIOS,
    DOMAIN,
    LINEAR_MODES,
    MATMUL_A_MODES,
    MATMUL_B_MODES,
    PLANES,
)
from bvit_edge.contract import DOMAIN_VERSION as VERSION
from bvit_edge.errors import DataError

F32, U8 = onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8
_TYPE_NAMES: dict[int, str] = {F32: "float32", U8: "uint8"}


def _consts(graph: onnx.GraphProto) -> dict[str, tuple[int, list[int]]]:
    """name -> (element type, dims) of every initializer and Constant node output of ``graph``."""
    out = {i.name: (i.data_type, list(i.dims)) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = (attr.t.data_type, list(attr.t.dims))
    return out


def _type_name(code: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(code).lower()
    except ValueError:
        return f"element type {code}"


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Node:
    def __init__(self, node: onnx.NodeProto, consts: dict[str, tuple[int, list[int]]], where: str) -> None:
        self.node, self.consts = node, consts
        self.name = f"{where}: node {node.name or '(unnamed)'} ({DOMAIN}::{node.op_type})"

    def fail(self, problem: str) -> NoReturn:
        raise DataError(
            f"{self.name}: {problem}. The model is damaged or was not written by this bvit-edge: "
            "export it again (`bvit-edge export`)."
        )

    def const(
        self,
        index: int,
        label: str,
        dtype: int,
        shape: list[int] | None = None,
        size: int | None = None,
        min_size: int | None = None,
    ) -> list[int] | None:
        """Check input ``index`` when it is a constant; its dims (None when it is computed at run time)."""
        if index >= len(self.node.input) or not self.node.input[index]:
            return None
        found = self.consts.get(self.node.input[index])
        if found is None:
            return None
        got_type, dims = found
        if got_type != dtype:
            self.fail(f"input {label} is {_type_name(got_type)}, expected {_TYPE_NAMES[dtype]}")
        n = math.prod(dims)
        if shape is not None and dims != shape:
            self.fail(f"input {label} has shape {dims}, expected {shape}")
        if size is not None and n != size:
            self.fail(f"input {label} has {n} elements, expected {size}")
        if min_size is not None and n < min_size:
            self.fail(f"input {label} has {n} elements, expected at least {min_size}")
        return dims


def _check_binary_linear(n: _Node, attrs: dict[str, Any]) -> None:
    mode, k = _text(attrs.get("mode")), attrs.get("in_features")
    if mode not in LINEAR_MODES:
        n.fail(f"attribute mode is {mode!r}, expected one of {', '.join(LINEAR_MODES)}")
    if not isinstance(k, int) or k < 1:
        n.fail(f"attribute in_features is {k!r}, expected a positive integer")
    if len(n.node.input) not in (5, 6):
        n.fail(f"it has {len(n.node.input)} inputs, expected 5 or 6 (X, shift, alpha, W_bits, w_scale[, bias])")
    n.const(1, "shift", F32, shape=[k])
    n.const(2, "alpha", F32, size=1)
    w = n.const(3, "W_bits", U8)
    rows = None
    if w is not None:
        if len(w) != 2 or w[1] * 8 != packing.padded_length(k):
            n.fail(
                f"input W_bits has shape {w}, expected [N, {packing.padded_length(k) // 8}] for in_features {k} "
                "(bits packed along K)"
            )
        rows = w[0]
    n.const(4, "w_scale", F32, shape=None if rows is None else [rows])
    n.const(5, "bias", F32, shape=None if rows is None else [rows])


def _check_binary_matmul(n: _Node, attrs: dict[str, Any]) -> None:
    a_mode, b_mode = _text(attrs.get("a_mode", "signed")), _text(attrs.get("b_mode", "signed"))
    if a_mode not in MATMUL_A_MODES:
        n.fail(f"attribute a_mode is {a_mode!r}, expected one of {', '.join(MATMUL_A_MODES)}")
    if b_mode not in MATMUL_B_MODES:
        n.fail(f"attribute b_mode is {b_mode!r}, expected one of {', '.join(MATMUL_B_MODES)}")
    ratios = list(attrs.get("gsb_ratios", DEFAULT_GSB_RATIOS))
    if len(ratios) != 2 or not all(isinstance(r, float) and math.isfinite(r) for r in ratios):
        n.fail(f"attribute gsb_ratios is {ratios}, expected two ratios (r1, r2)")
    if len(n.node.input) != 6:
        n.fail(f"it has {len(n.node.input)} inputs, expected 6 (A, B, a_shift, a_alpha, b_shift, b_alpha)")
    n.const(2, "a_shift", F32)
    n.const(4, "b_shift", F32)
    n.const(3, "a_alpha", F32, min_size=PLANES[a_mode])
    n.const(5, "b_alpha", F32, min_size=PLANES[b_mode])


_CHECKS = {BINARY_LINEAR: _check_binary_linear, BINARY_MATMUL: _check_binary_matmul}


def check_bvit_nodes(model: onnx.ModelProto, where: str = "the model") -> None:
    """DataError unless every ``bvit_edge`` node of ``model`` fits its spec (see the module docstring)."""
    versions = {imp.domain: imp.version for imp in model.opset_import}
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    if DOMAIN in versions and versions[DOMAIN] != VERSION:
        raise DataError(
            f"{where} uses op domain {DOMAIN!r} version {versions[DOMAIN]}, but this bvit-edge runs "
            f"only version {VERSION}. Re-export the model with this bvit-edge version, or upgrade "
            "bvit-edge."
        )
    if nodes and DOMAIN not in versions:
        raise DataError(f"{where} has {DOMAIN} nodes but does not import the {DOMAIN!r} domain. Export it again.")
    consts = _consts(model.graph)
    for node in nodes:
        check = _CHECKS.get(node.op_type)
        n = _Node(node, consts, where)
        if check is None:
            n.fail(
                f"{node.op_type} is not an op of domain {DOMAIN!r} version {VERSION} "
                f"(ops: {', '.join(sorted(_CHECKS))})"
            )
        check(n, _attrs(node))


__all__ = ["check_bvit_nodes"]
