"""bvit_edge::BinaryLinear v1: the numpy reference (popcount on packed words) equals the contract's formula
written out here on unpacked ±1 / 0-1 int64 values; the standard-ONNX decomposition run in onnxruntime
equals the reference; the schema infers the output shape."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bvit_edge.errors import UsageError
from bvit_edge.export.ops import binary_linear as bl
from bvit_edge.export.ops.builder import build_model, feeds, single_node_model


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """Independent packing: element k -> bit k % 8 of byte k // 8, K padded with zeros to a multiple of 64."""
    n, k = bits.shape
    kp = -(-k // 64) * 64
    out = np.zeros((n, kp // 8), np.uint8)
    for j in range(k):
        out[:, j // 8] |= (bits[:, j].astype(np.uint8) << (j % 8)).astype(np.uint8)
    return out


def _case(seed: int, lead: tuple[int, ...], k: int, n: int, zeros: bool):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, k)).astype(np.float32)
    shift = (rng.standard_normal(k) * 0.3).astype(np.float32)
    if zeros:  # exact zeros of x' = x + shift (sgn(0) = +1) and values at the unsigned threshold
        x.reshape(-1, k)[0, : k // 2] = -shift[: k // 2]
    alpha = np.array(rng.uniform(0.2, 1.5), np.float32)
    if zeros and k > 1:
        x.reshape(-1, k)[-1, -1] = alpha / np.float32(2) - shift[-1]
    w_sign = rng.random((n, k)) < 0.5
    w_bits = _pack_rows(w_sign)
    w_scale = rng.uniform(0.01, 0.2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    return x, shift, alpha, w_sign, w_bits, w_scale, bias


def _expected_acc(x, shift, alpha, w_sign, mode):
    """The contract written out: a in {-1,+1} (x' < 0 -> -1) or {0,1} (x' > alpha/2), W bit 1 = -1."""
    xs = (x + shift).astype(np.float32)
    a = np.where(xs < 0, -1, 1) if mode == "signed" else (xs > np.float32(alpha) / np.float32(2)).astype(np.int64)
    w = np.where(w_sign, -1, 1).astype(np.int64)
    return a.astype(np.int64) @ w.T


shapes = st.tuples(
    st.integers(0, 10_000),
    st.sampled_from([(1,), (3,), (2, 5)]),
    st.sampled_from([1, 7, 63, 64, 65, 100, 128, 200]),
    st.integers(1, 9),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(shapes, st.sampled_from(["signed", "unsigned"]))
def test_accumulators_equal_unpacked_integer_matmul(params, mode):
    seed, lead, k, n, zeros = params
    x, shift, alpha, w_sign, w_bits, _, _ = _case(seed, lead, k, n, zeros)
    acc = bl.binary_linear_accumulators(x, shift, alpha, w_bits, mode, k)
    assert acc.dtype == np.int64
    np.testing.assert_array_equal(acc, _expected_acc(x, shift, alpha, w_sign, mode))


@settings(max_examples=30, deadline=None)
@given(shapes, st.sampled_from(["signed", "unsigned"]), st.booleans())
def test_output_is_acc_times_alpha_wscale_plus_bias(params, mode, with_bias):
    seed, lead, k, n, zeros = params
    x, shift, alpha, w_sign, w_bits, w_scale, bias = _case(seed, lead, k, n, zeros)
    y = bl.binary_linear_reference(
        x, shift, alpha, w_bits, w_scale, bias if with_bias else None, mode=mode, in_features=k
    )
    s = np.float32(alpha) * w_scale  # float32 first, then acc * s, then + bias
    want = _expected_acc(x, shift, alpha, w_sign, mode).astype(np.float32) * s
    if with_bias:
        want = want + bias
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, want)


def test_sign_of_exact_zero_is_plus_one():
    k = 70
    x = np.zeros((1, k), np.float32)
    w_bits = _pack_rows(np.zeros((1, k), bool))  # all +1
    acc = bl.binary_linear_accumulators(x, np.zeros(k, np.float32), np.array(1.0, np.float32), w_bits, "signed", k)
    assert acc[0, 0] == k  # every sgn(0) = +1 and pads add nothing
    neg = np.full((1, k), -0.0, np.float32)  # -0.0 is not < 0: also +1
    assert (
        bl.binary_linear_accumulators(neg, np.zeros(k, np.float32), np.array(1.0, np.float32), w_bits, "signed", k)[
            0, 0
        ]
        == k
    )


def test_unsigned_threshold_is_strict():
    k, alpha = 3, np.array(1.0, np.float32)
    x = np.array([[0.5, 0.5000001, 0.49]], np.float32)  # only x' > alpha/2 = 0.5 counts
    w_bits = _pack_rows(np.zeros((1, k), bool))
    assert bl.binary_linear_accumulators(x, np.zeros(k, np.float32), alpha, w_bits, "unsigned", k)[0, 0] == 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes, st.sampled_from(["signed", "unsigned"]), st.booleans())
def test_standard_decomposition_in_onnxruntime_equals_reference(params, mode, with_bias):
    seed, lead, k, n, zeros = params
    x, shift, alpha, _, w_bits, w_scale, bias = _case(seed, lead, k, n, zeros)
    inputs = {
        "X": x,
        "shift": shift,
        "alpha": alpha,
        "W_bits": w_bits,
        "w_scale": w_scale,
        "bias": bias if with_bias else None,
    }
    model = build_model(lambda op, *v: bl.binary_linear_standard(op, *v, mode=mode, in_features=k), inputs)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds(inputs))[0]
    want = bl.binary_linear_reference(x, shift, alpha, w_bits, w_scale, inputs["bias"], mode=mode, in_features=k)
    np.testing.assert_array_equal(got, want)


def test_schema_infers_output_shape():
    x = np.zeros((2, 5, 100), np.float32)
    inputs = {
        "X": x,
        "shift": np.zeros(100, np.float32),
        "alpha": np.array(1.0, np.float32),
        "W_bits": np.zeros((7, 16), np.uint8),
        "w_scale": np.ones(7, np.float32),
        "bias": None,
    }
    model = single_node_model("BinaryLinear", inputs, mode="signed", in_features=100)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 5, 7]


def test_bad_inputs_give_clear_errors():
    k = 10
    x = np.zeros((1, k), np.float32)
    with pytest.raises(UsageError, match="mode"):
        bl.binary_linear_accumulators(
            x, np.zeros(k, np.float32), np.array(1.0, np.float32), np.zeros((2, 8), np.uint8), "ternary", k
        )
    with pytest.raises(UsageError, match="in_features"):
        bl.binary_linear_accumulators(
            x, np.zeros(k, np.float32), np.array(1.0, np.float32), np.zeros((2, 8), np.uint8), "signed", 11
        )
    with pytest.raises(UsageError, match="W_bits"):
        bl.binary_linear_accumulators(
            x, np.zeros(k, np.float32), np.array(1.0, np.float32), np.zeros((2, 4), np.uint8), "signed", k
        )
