"""bvit_edge::BinaryMatMul v1: the numpy reference (popcount on packed words) equals the contract written
out here (planes as int64 values in {-1, 0, +1}, per-sample max/min in float32, int64 matmul) for every mode
pair including the gsb planes; the standard-ONNX decomposition run in onnxruntime equals the reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bvit_edge.errors import UsageError
from bvit_edge.export.ops import binary_matmul as bm
from bvit_edge.export.ops.builder import build_model, feeds, single_node_model

MODE_PAIRS = [
    ("signed", "signed"),
    ("unsigned", "signed"),
    ("gsb_unsigned", "gsb_signed"),
    ("gsb_unsigned", "signed"),
    ("signed", "gsb_signed"),
    ("unsigned", "gsb_signed"),
]
R1, R2 = np.float32(0.7), np.float32(0.9)


def _case(seed, b, h, m, k, n, a_mode, b_mode, zeros):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((b, h, m, k)).astype(np.float32)
    if a_mode != "signed":  # attention-like probabilities
        a = (np.abs(a) * rng.uniform(0.05, 0.5)).astype(np.float32)
    bb = rng.standard_normal((b, h, k, n)).astype(np.float32)
    a_shift = (rng.standard_normal((h, 1, k)) * 0.01).astype(np.float32)
    b_shift = (rng.standard_normal((h, 1, n)) * 0.01).astype(np.float32)
    if zeros:
        a[0, 0, 0, :] = -a_shift[0, 0, :]  # A' exactly 0 (sgn(0) = +1; 0 is not > alpha/2)
        bb[-1, -1, :, -1] = -b_shift[-1, 0, -1]  # B' exactly 0
    a_alpha = rng.uniform(0.01, 0.3, 3 if a_mode.startswith("gsb") else 1).astype(np.float32)
    b_alpha = rng.uniform(0.1, 1.0, 3 if b_mode.startswith("gsb") else 1).astype(np.float32)
    return a, bb, a_shift, a_alpha, b_shift, b_alpha


def _planes_a(x, alpha, mode):
    """Contract for A' (float32): values as int64."""
    if mode == "signed":
        return [np.where(x < 0, -1, 1)]
    p1 = (x > alpha[0] / np.float32(2)).astype(np.int64)
    if mode == "unsigned":
        return [p1]
    mx = np.float32(x.max(axis=(1, 2, 3), keepdims=True))
    return [p1, (x > mx * R1).astype(np.int64), (x > mx * R2).astype(np.int64)]


def _planes_b(x, mode):
    s = np.where(x < 0, -1, 1)
    if mode == "signed":
        return [s]
    mx = x.max(axis=(1, 2, 3), keepdims=True)
    mn = x.min(axis=(1, 2, 3), keepdims=True)
    m1 = (x > mx * R1) | (x < mn * R1)
    m2 = (x > mx * R2) | (x < mn * R2)
    return [s, s * m1, s * m2]


def _expected(a, b, a_shift, a_alpha, b_shift, b_alpha, a_mode, b_mode):
    pa = _planes_a(a + a_shift, a_alpha, a_mode)
    pb = _planes_b(b + b_shift, b_mode)
    dots = [[p.astype(np.int64) @ q.astype(np.int64) for q in pb] for p in pa]
    out = None
    for i in range(len(pa)):  # i outer, j inner, float32
        for j in range(len(pb)):
            term = (a_alpha[i] * b_alpha[j]) * dots[i][j].astype(np.float32)
            out = term if out is None else out + term
    return dots, out


cases = st.tuples(
    st.integers(0, 10_000),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 6),
    st.sampled_from([1, 5, 63, 64, 65, 130]),
    st.integers(1, 7),
    st.sampled_from(MODE_PAIRS),
    st.booleans(),
)


@settings(max_examples=80, deadline=None)
@given(cases)
def test_plane_dots_equal_unpacked_integer_matmul(params):
    seed, b, h, m, k, n, (a_mode, b_mode), zeros = params
    args = _case(seed, b, h, m, k, n, a_mode, b_mode, zeros)
    dots = bm.binary_matmul_accumulators(*args, a_mode=a_mode, b_mode=b_mode)
    want, _ = _expected(*args, a_mode, b_mode)
    assert len(dots) == len(want) and len(dots[0]) == len(want[0])
    for got_row, want_row in zip(dots, want, strict=True):
        for got, w in zip(got_row, want_row, strict=True):
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, w)


@settings(max_examples=40, deadline=None)
@given(cases)
def test_output_is_alpha_beta_weighted_sum_of_dots(params):
    seed, b, h, m, k, n, (a_mode, b_mode), zeros = params
    args = _case(seed, b, h, m, k, n, a_mode, b_mode, zeros)
    y = bm.binary_matmul_reference(*args, a_mode=a_mode, b_mode=b_mode)
    _, want = _expected(*args, a_mode, b_mode)
    assert y.dtype == np.float32 and y.shape == (b, h, m, n)
    np.testing.assert_array_equal(y, want)


def test_gsb_masks_are_per_sample():
    """Sample 1 scaled by 100 must not change sample 0's result (max/min over one sample only)."""
    args = list(_case(3, 2, 2, 4, 70, 5, "gsb_unsigned", "gsb_signed", False))
    y0 = bm.binary_matmul_reference(*args, a_mode="gsb_unsigned", b_mode="gsb_signed")
    args[0] = args[0].copy()
    args[1] = args[1].copy()
    args[0][1] *= 100
    args[1][1] *= 100
    y1 = bm.binary_matmul_reference(*args, a_mode="gsb_unsigned", b_mode="gsb_signed")
    np.testing.assert_array_equal(y0[0], y1[0])


def test_gsb_signed_planes_superpose_to_three_levels():
    """With A = identity (unsigned, alpha 1: every 1 > 1/2), Y = v_hat = b1 sgn(v') + b2 sgn(v' M1) +
    b3 sgn(v' M2), so |Y| takes only the levels b1, b1+b2, b1+b2+b3 (docs/methods.md "GSB")."""
    rng = np.random.default_rng(0)
    k = n = 6
    v = rng.standard_normal((1, 1, k, n)).astype(np.float32)
    eye = np.eye(k, dtype=np.float32)[None, None]
    beta = np.array([1.0, 10.0, 100.0], np.float32)
    y = bm.binary_matmul_reference(
        eye,
        v,
        np.zeros((1, 1, k), np.float32),
        np.array([1.0], np.float32),
        np.zeros((1, 1, n), np.float32),
        beta,
        a_mode="unsigned",
        b_mode="gsb_signed",
    )[0, 0]
    x = v[0, 0]
    s = np.where(x < 0, -1.0, 1.0)
    m1 = (x > x.max() * R1) | (x < x.min() * R1)
    m2 = (x > x.max() * R2) | (x < x.min() * R2)
    np.testing.assert_array_equal(y, (beta[0] * s + beta[1] * s * m1 + beta[2] * s * m2).astype(np.float32))
    assert set(np.unique(np.abs(y)).tolist()) <= {1.0, 11.0, 111.0}
    assert {1.0, 111.0} <= set(np.unique(np.abs(y)).tolist())  # the max and a small value are both present


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_standard_decomposition_in_onnxruntime_equals_reference(params):
    seed, b, h, m, k, n, (a_mode, b_mode), zeros = params
    a, bb, a_shift, a_alpha, b_shift, b_alpha = _case(seed, b, h, m, k, n, a_mode, b_mode, zeros)
    inputs = {"A": a, "B": bb, "a_shift": a_shift, "a_alpha": a_alpha, "b_shift": b_shift, "b_alpha": b_alpha}
    model = build_model(lambda op, *v: bm.binary_matmul_standard(op, *v, a_mode=a_mode, b_mode=b_mode, rank=4), inputs)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds(inputs))[0]
    want = bm.binary_matmul_reference(a, bb, a_shift, a_alpha, b_shift, b_alpha, a_mode=a_mode, b_mode=b_mode)
    np.testing.assert_array_equal(got, want)


def test_schema_infers_output_shape_and_default_ratios():
    inputs = {
        "A": np.zeros((2, 3, 4, 70), np.float32),
        "B": np.zeros((2, 3, 70, 5), np.float32),
        "a_shift": np.zeros((3, 1, 70), np.float32),
        "a_alpha": np.ones(3, np.float32),
        "b_shift": np.zeros((3, 1, 5), np.float32),
        "b_alpha": np.ones(3, np.float32),
    }
    model = single_node_model("BinaryMatMul", inputs, a_mode="gsb_unsigned", b_mode="gsb_signed")
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 4, 5]
    ratios = list(bm.SCHEMA.attributes["gsb_ratios"].default_value.floats)
    np.testing.assert_allclose(ratios, [0.7, 0.9], rtol=1e-7)


def test_bad_inputs_give_clear_errors():
    a = np.zeros((1, 1, 2, 3), np.float32)
    b = np.zeros((1, 1, 3, 2), np.float32)
    z = np.zeros(1, np.float32)
    with pytest.raises(UsageError, match="a_mode"):
        bm.binary_matmul_reference(a, b, z, z + 1, z, z + 1, a_mode="gsb_signed", b_mode="signed")
    with pytest.raises(UsageError, match="needs 3"):
        bm.binary_matmul_reference(a, b, z, z + 1, z, z + 1, a_mode="gsb_unsigned", b_mode="signed")
    with pytest.raises(UsageError, match="K"):
        bm.binary_matmul_reference(a, b[:, :, :2], z, z + 1, z, z + 1, a_mode="signed", b_mode="signed")
