"""ONNX graphs with bvit_edge ops compiled for the host through TVM match numpy (1e-5 relative).

The references are written out here from the op contract (docs/ops/, docs/methods.md "GSB") with float
+-1 / 0-1 plane matrices and an int64 matmul: they share no code with the kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
tvm = pytest.importorskip("tvm")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from bvit_edge.packing import pack_bits
from bvit_edge.runtime.artifact import run_artifact
from bvit_edge.runtime.compile import compile_model

R1, R2 = 0.7, 0.9


# ---------------------------------------------------------------- references (numpy, from the contract)
def ref_binary_linear(x, shift, alpha, w_pm, w_scale, bias, mode):
    """Y = intdot(a, W) * (alpha * w_scale) + bias with a = sgn(x') (sgn(0)=+1) or [x' > alpha/2]."""
    xp = x + shift
    a = np.where(xp < 0, -1, 1) if mode == "signed" else (xp > np.float32(alpha) * np.float32(0.5)).astype(int)
    acc = a.astype(np.int64) @ w_pm.T.astype(np.int64)
    s = np.float32(alpha) * w_scale
    return acc.astype(np.float32) * s + bias


def planes_a(a, mode, alpha):
    if mode == "signed":
        return [np.where(a < 0, -1, 1)]
    if mode == "unsigned":
        return [(a > alpha[0] * np.float32(0.5)).astype(int)]
    mx = a.reshape(a.shape[0], -1).max(axis=1).reshape(-1, 1, 1, 1)
    return [
        (a > alpha[0] * np.float32(0.5)).astype(int),
        (a > np.float32(R1) * mx).astype(int),
        (a > np.float32(R2) * mx).astype(int),
    ]


def planes_b(b, mode):
    s = np.where(b < 0, -1, 1)
    if mode == "signed":
        return [s]
    mx = b.reshape(b.shape[0], -1).max(axis=1).reshape(-1, 1, 1, 1)
    mn = b.reshape(b.shape[0], -1).min(axis=1).reshape(-1, 1, 1, 1)
    m1 = (b > np.float32(R1) * mx) | (b < np.float32(R1) * mn)
    m2 = (b > np.float32(R2) * mx) | (b < np.float32(R2) * mn)
    return [s, s * m1, s * m2]


def ref_binary_matmul(a, b, a_shift, a_alpha, b_shift, b_alpha, a_mode, b_mode):
    pa = planes_a(a + a_shift, a_mode, a_alpha)
    pb = planes_b(b + b_shift, b_mode)
    out = np.zeros((*a.shape[:-1], b.shape[-1]), np.float32)
    for i, ai in enumerate(pa):
        for j, bj in enumerate(pb):
            dot = np.matmul(ai.astype(np.int64), bj.astype(np.int64))
            out = out + (a_alpha[i] * b_alpha[j]) * dot.astype(np.float32)
    return out


# ---------------------------------------------------------------- graph building
def _model(nodes, inputs, outputs, inits, domain_version=1):
    g = oh.make_graph(nodes, "g", inputs, outputs, inits)
    return oh.make_model(
        g, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("bvit_edge", domain_version)], ir_version=10
    )


def linear_case(rng, m, k, n, mode):
    x = rng.standard_normal((1, m, k)).astype(np.float32)
    shift = (rng.standard_normal(k) * 0.2).astype(np.float32)
    alpha = np.float32(0.6)
    w = rng.standard_normal((n, k))
    w_scale = (rng.random(n) + 0.1).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    inits = [
        nh.from_array(shift, "shift"),
        nh.from_array(np.array(alpha), "alpha"),
        nh.from_array(pack_bits(w < 0), "w_bits"),
        nh.from_array(w_scale, "w_scale"),
        nh.from_array(bias, "bias"),
    ]
    node = oh.make_node(
        "BinaryLinear",
        ["x", "shift", "alpha", "w_bits", "w_scale", "bias"],
        ["y"],
        domain="bvit_edge",
        mode=mode,
        in_features=k,
    )
    model = _model(
        [node],
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])],
        inits,
    )
    ref = ref_binary_linear(x, shift, alpha, np.where(w < 0, -1, 1), w_scale, bias, mode)
    return model, x, ref


def matmul_case(rng, a_mode, b_mode, heads=2, m=9, k=70, n=24):
    """x [1, heads, m, k] -> A = x (or softmax(x) for unsigned/gsb modes), B = constant value tensor."""
    x = rng.standard_normal((1, heads, m, k)).astype(np.float32)
    pa_n, pb_n = (3 if a_mode.startswith("gsb") else 1), (3 if b_mode.startswith("gsb") else 1)
    a_alpha = (rng.random(pa_n) * 0.5 + 0.05).astype(np.float32)
    b_alpha = (rng.random(pb_n) * 0.5 + 0.05).astype(np.float32)
    b = rng.standard_normal((1, heads, k, n)).astype(np.float32)
    a_shift = (rng.standard_normal((heads, m, k)) * 0.01).astype(np.float32)
    b_shift = (rng.standard_normal((heads, k, n)) * 0.1).astype(np.float32)
    nodes, a_name = [], "x"
    if a_mode != "signed":
        nodes.append(oh.make_node("Softmax", ["x"], ["p"], axis=-1))
        a_name = "p"
    nodes.append(
        oh.make_node(
            "BinaryMatMul",
            [a_name, "b", "a_shift", "a_alpha", "b_shift", "b_alpha"],
            ["y"],
            domain="bvit_edge",
            a_mode=a_mode,
            b_mode=b_mode,
            gsb_ratios=[R1, R2],
        )
    )
    inits = [
        nh.from_array(b, "b"),
        nh.from_array(a_shift, "a_shift"),
        nh.from_array(a_alpha, "a_alpha"),
        nh.from_array(b_shift, "b_shift"),
        nh.from_array(b_alpha, "b_alpha"),
    ]
    model = _model(
        nodes,
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, heads, m, k])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, heads, m, n])],
        inits,
    )
    a = x
    if a_mode != "signed":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        a = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
        a_alpha = a_alpha * np.float32(0.05)  # thresholds a1/2 inside the softmax range
        inits[2] = nh.from_array(a_alpha, "a_alpha")
        model = _model(
            nodes,
            [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, heads, m, k])],
            [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, heads, m, n])],
            inits,
        )
    ref = ref_binary_matmul(a, b, a_shift, a_alpha, b_shift, b_alpha, a_mode, b_mode)
    return model, x, ref, a


def _compile_run(tmp_path, model, x, name):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    art = compile_model(path, "host", tmp_path / name)
    return run_artifact(art, x, normalize=False)


def _close(y, ref, rtol=1e-5):
    scale = np.maximum(np.abs(ref), 1.0)
    assert y.shape == ref.shape
    assert np.max(np.abs(y - ref) / scale) <= rtol, np.max(np.abs(y - ref) / scale)


@pytest.mark.parametrize("mode", ["signed", "unsigned"])
@pytest.mark.parametrize("k", [64, 100, 150])
def test_binary_linear_graph_matches_numpy(tmp_path, mode, k):
    model, x, ref = linear_case(np.random.default_rng(k), m=7, k=k, n=40, mode=mode)
    _close(_compile_run(tmp_path, model, x, f"lin_{mode}_{k}"), ref)


MATMUL_MODES = [
    ("signed", "signed"),
    ("unsigned", "signed"),
    ("gsb_unsigned", "gsb_signed"),
    ("signed", "gsb_signed"),
    ("unsigned", "gsb_signed"),
    ("gsb_unsigned", "signed"),
]


@pytest.mark.parametrize("a_mode,b_mode", MATMUL_MODES)
def test_binary_matmul_graph_matches_numpy(tmp_path, a_mode, b_mode):
    rng = np.random.default_rng(len(a_mode) * 7 + len(b_mode))
    model, x, ref, _ = matmul_case(rng, a_mode, b_mode)
    y = _compile_run(tmp_path, model, x, f"mm_{a_mode}_{b_mode}")
    _close(y, ref)


@pytest.mark.parametrize("a_mode,b_mode", [("signed", "signed"), ("gsb_unsigned", "gsb_signed")])
@pytest.mark.parametrize("n", [66, 198])
def test_binary_matmul_with_token_count_columns_matches_numpy(tmp_path, a_mode, b_mode, n):
    """N = a token count (66, 198: no power-of-two tile >= 4 divides it): the kernel tiles N by a divisor
    (11, 18) and must stay exact."""
    rng = np.random.default_rng(n)
    model, x, ref, _ = matmul_case(rng, a_mode, b_mode, heads=1, m=5, k=64, n=n)
    _close(_compile_run(tmp_path, model, x, f"mmn_{a_mode}_{n}"), ref)


def test_linear_then_matmul_graph(tmp_path):
    """q = BinaryLinear(x), k = BinaryLinear(x); scores = BinaryMatMul(q, k^T) (signed x signed)."""
    rng = np.random.default_rng(5)
    m, d = 11, 96
    x = rng.standard_normal((1, m, d)).astype(np.float32)
    ws = [rng.standard_normal((d, d)) for _ in range(2)]
    inits, nodes = [], []
    for i, w in enumerate(ws):
        inits += [
            nh.from_array(np.zeros(d, np.float32), f"s{i}"),
            nh.from_array(np.array(np.float32(0.5)), f"al{i}"),
            nh.from_array(pack_bits(w < 0), f"wb{i}"),
            nh.from_array(np.full(d, 0.1, np.float32), f"sc{i}"),
            nh.from_array(np.zeros(d, np.float32), f"b{i}"),
        ]
        nodes.append(
            oh.make_node(
                "BinaryLinear",
                ["x", f"s{i}", f"al{i}", f"wb{i}", f"sc{i}", f"b{i}"],
                [f"y{i}"],
                domain="bvit_edge",
                mode="signed",
                in_features=d,
            )
        )
    inits += [
        nh.from_array(np.array([np.float32(0.3)]), "aa"),
        nh.from_array(np.array([np.float32(0.2)]), "ba"),
        nh.from_array(np.zeros((1, m, d), np.float32), "zs"),
        nh.from_array(np.zeros((1, d, m), np.float32), "zt"),
    ]
    nodes.append(oh.make_node("Transpose", ["y1"], ["y1t"], perm=[0, 2, 1]))
    nodes.append(
        oh.make_node(
            "BinaryMatMul",
            ["y0", "y1t", "zs", "aa", "zt", "ba"],
            ["out"],
            domain="bvit_edge",
            a_mode="signed",
            b_mode="signed",
        )
    )
    model = _model(
        nodes,
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, d])],
        [oh.make_tensor_value_info("out", TensorProto.FLOAT, [1, m, m])],
        inits,
    )
    y = _compile_run(tmp_path, model, x, "attn")
    q = ref_binary_linear(x, 0, 0.5, np.where(ws[0] < 0, -1, 1), np.full(d, 0.1, np.float32), 0, "signed")
    k = ref_binary_linear(x, 0, 0.5, np.where(ws[1] < 0, -1, 1), np.full(d, 0.1, np.float32), 0, "signed")
    ref = ref_binary_matmul(
        q[:, None], np.swapaxes(k, 1, 2)[:, None], 0, [np.float32(0.3)], 0, [np.float32(0.2)], "signed", "signed"
    )[:, 0]
    _close(y, ref)
