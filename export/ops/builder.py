"""Build small ONNX models from the op files' decompositions, or one bvit_edge node, for tests and examples.

The standard decompositions (``binary_linear_standard(op, ...)``) are written against an ``op`` object whose
attributes are ONNX op types (``op.MatMul(a, b)``). In the torch exporter ``op`` is ``onnxscript.opset18``;
here :class:`OpBuilder` plays that role and records plain ``onnx.helper`` nodes, so the same decomposition
can be run in onnxruntime on its own, without torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bvit_edge.export.ops._schema import DOMAIN, VERSION

IR_VERSION = 10
OPSET = 18


class OpBuilder:
    """``op.OpType(*inputs, **attributes) -> output name``; a None input is an omitted optional input."""

    def __init__(self, domain: str = "") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.domain = domain
        self._ids = itertools.count()

    def __getattr__(self, op_type: str) -> Callable[..., str]:
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs: str | None, **attrs: Any) -> str:
            out = f"{op_type.lower()}_{next(self._ids)}"
            names = ["" if i is None else i for i in inputs]
            while names and names[-1] == "":
                names.pop()
            self.nodes.append(helper.make_node(op_type, names, [out], domain=self.domain, **attrs))
            return out

        return make


def _value_info(name: str, arr: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape))


def _with_inferred_output(model: onnx.ModelProto, result: str) -> onnx.ModelProto:
    """Give the graph output the type/shape ONNX shape inference finds for ``result`` (its producer)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name == result and vi.type.tensor_type.HasField("shape"):
            model.graph.output[0].type.CopyFrom(vi.type)
            break
    return model


def build_model(
    build: Callable[..., str],
    inputs: Mapping[str, np.ndarray | None],
    initializers: Mapping[str, np.ndarray] | None = None,
    output: str = "Y",
) -> onnx.ModelProto:
    """A model whose graph is what ``build(op, *names)`` records; ``inputs`` (name -> example array, or None
    for an omitted optional input) become graph inputs, ``initializers`` initializers, in that order."""
    op = OpBuilder()
    names: list[str | None] = []
    graph_inputs = []
    for name, arr in inputs.items():
        if arr is None:
            names.append(None)
            continue
        names.append(name)
        graph_inputs.append(_value_info(name, np.asarray(arr)))
    inits = []
    for name, arr in (initializers or {}).items():
        names.append(name)
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
    result = build(op, *names)
    op.nodes.append(helper.make_node("Identity", [result], [output]))
    graph = helper.make_graph(
        op.nodes,
        "decomposition",
        graph_inputs,
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bvit-edge")
    model.ir_version = IR_VERSION
    return _with_inferred_output(model, result)


def single_node_model(op_type: str, inputs: Mapping[str, np.ndarray | None], **attrs: Any) -> onnx.ModelProto:
    """A one-node model of the bvit_edge op ``op_type``; every non-None input is a graph input."""
    graph_inputs = [_value_info(n, np.asarray(a)) for n, a in inputs.items() if a is not None]
    names = [n if a is not None else "" for n, a in inputs.items()]
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(op_type, names, ["Y"], domain=DOMAIN, **attrs)
    node_out = helper.make_node("Identity", ["Y0"], ["Y"])
    node.output[0] = "Y0"
    graph = helper.make_graph(
        [node, node_out], op_type, graph_inputs, [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)]
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, VERSION)],
        producer_name="bvit-edge",
    )
    model.ir_version = IR_VERSION
    return _with_inferred_output(model, "Y0")


def feeds(inputs: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """The session feed for the non-None entries of ``inputs``."""
    return {k: np.asarray(v) for k, v in inputs.items() if v is not None}


__all__ = ["OpBuilder", "build_model", "feeds", "single_node_model"]
