"""Residual adds fused into the BinaryLinear epilogue (bvit_edge.runtime.graph_passes): x + BinaryLinear(x)
becomes one kernel computing y = (scale * dot + bias) + x, with the same result as the numpy reference of
the unfused graph; an output used elsewhere is not fused (its value must stay available)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

tvm = pytest.importorskip("tvm")

from bvit_edge.packing import pack_bits
from bvit_edge.runtime.artifact import run_artifact
from bvit_edge.runtime.compile import compile_model
from bvit_edge.runtime.graph_passes import graph_passes
from bvit_edge.runtime.schedules import family_params
from bvit_edge.runtime.tvm_frontend import import_onnx
from bvit_edge.targets import load_target

M, K = 10, 96


def _model(residual_first: bool, extra_output: bool, mode: str, rng: np.random.Generator):
    shift = (rng.standard_normal(K) * 0.2).astype(np.float32)
    alpha = np.float32(0.6)
    w = rng.standard_normal((K, K))
    w_scale = (rng.random(K) + 0.1).astype(np.float32)
    bias = rng.standard_normal(K).astype(np.float32)
    inits = [
        nh.from_array(shift, "shift"),
        nh.from_array(np.array(alpha), "alpha"),
        nh.from_array(pack_bits(w < 0), "w_bits"),
        nh.from_array(w_scale, "w_scale"),
        nh.from_array(bias, "bias"),
    ]
    lin = oh.make_node(
        "BinaryLinear",
        ["x", "shift", "alpha", "w_bits", "w_scale", "bias"],
        ["y"],
        domain="bvit_edge",
        mode=mode,
        in_features=K,
    )
    add = oh.make_node("Add", ["x", "y"] if residual_first else ["y", "x"], ["z"])
    outs = [oh.make_tensor_value_info("z", TensorProto.FLOAT, [1, M, K])]
    if extra_output:
        outs.append(oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, M, K]))
    graph = oh.make_graph([lin, add], "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, M, K])], outs, inits)
    model = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("bvit_edge", 1)], ir_version=10
    )

    def reference(x: np.ndarray) -> np.ndarray:
        xs = x + shift
        a = np.where(xs < 0, -1, 1) if mode == "signed" else (xs > alpha / np.float32(2)).astype(np.int64)
        dot = a.astype(np.int64) @ np.where(w < 0, -1, 1).T.astype(np.int64)
        y = dot.astype(np.float32) * (alpha * w_scale) + bias
        return (x + y).astype(np.float32)

    return model, reference


def _fused_kernels(model) -> list[str]:
    fam = family_params(load_target("host").family)
    mod = import_onnx(model, {"x": [1, M, K]}, fam)
    mod = tvm.transform.Sequential(graph_passes(True, fam.float_lanes))(mod)
    return [gv.name_hint for gv in mod.get_global_vars() if gv.name_hint.endswith("_residual")]


@pytest.mark.parametrize("mode", ["signed", "unsigned"])
@pytest.mark.parametrize("residual_first", [True, False])
def test_residual_add_is_fused_into_the_binary_linear_epilogue(tmp_path, mode, residual_first):
    rng = np.random.default_rng(7)
    model, reference = _model(residual_first, False, mode, rng)
    assert len(_fused_kernels(model)) == 1
    path = tmp_path / "res.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((3, M, K)).astype(np.float32)
    y = run_artifact(compile_model(path, "host", tmp_path / "art"), x, normalize=False)
    ref = np.concatenate([reference(x[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)


def test_a_linear_output_used_elsewhere_is_not_fused():
    model, _ = _model(True, True, "signed", np.random.default_rng(8))
    assert _fused_kernels(model) == []


@pytest.mark.parametrize(
    "target,needle", [("rpi4-aarch64", "cnt\tv"), ("rpi3-armv7", "vcnt.8"), ("rpi5-aarch64", "cnt\tv")]
)
def test_the_residual_kernel_compiles_for_the_boards(target, needle):
    """The fused kernel as the graph pass builds it for each board's family (its word size and knobs)."""
    import contextlib

    from bvit_edge.runtime.tvm_frontend import linear_kernel_spec, linear_kernel_with_residual

    spec = load_target(target)
    fam = family_params(spec.family)
    func = linear_kernel_with_residual(linear_kernel_spec(198, 384, 384, "signed", fam))
    lib = tvm.tirx.build(tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")}), target=spec.tvm())
    asm = []
    for mod in [lib, *list(lib.imports)]:
        with contextlib.suppress(Exception):  # a module without LLVM assembly (e.g. the host wrapper)
            asm.append(mod.inspect_source("asm"))
    assert needle in "\n".join(asm)
