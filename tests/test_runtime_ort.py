"""runtime.ort: packed bvit_edge nodes run in onnxruntime as onnxruntime-extensions Python ops backed by the
numpy references (the file is not modified); a missing, empty, corrupt or truncated .onnx gives a clear
DataError (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from bvit_edge.errors import DataError, UsageError
from bvit_edge.export.ops.binary_linear import binary_linear_reference
from bvit_edge.export.ops.binary_matmul import binary_matmul_reference
from bvit_edge.export.ops.builder import feeds, single_node_model
from bvit_edge.runtime.ort import ort_session, rewrite_for_extensions, uses_bvit_ops


def _save(model: onnx.ModelProto, path) -> str:
    path.write_bytes(model.SerializeToString())
    return str(path)


def _linear_inputs(with_bias: bool, k: int = 100, n: int = 9):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 256, size=(n, -(-k // 64) * 8), dtype=np.uint8)
    bits[:, k // 8 + 1 :] = 0
    if k % 8:
        bits[:, k // 8] &= np.uint8((1 << (k % 8)) - 1)  # pad bits are 0
    return {
        "X": rng.standard_normal((2, 3, k)).astype(np.float32),
        "shift": (rng.standard_normal(k) * 0.1).astype(np.float32),
        "alpha": np.array(0.6, np.float32),
        "W_bits": bits,
        "w_scale": rng.uniform(0.01, 0.1, n).astype(np.float32),
        "bias": rng.standard_normal(n).astype(np.float32) if with_bias else None,
    }


@pytest.mark.parametrize("mode", ["signed", "unsigned"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_packed_binary_linear_runs_as_python_op(tmp_path, mode, with_bias):
    inputs = _linear_inputs(with_bias)
    path = _save(single_node_model("BinaryLinear", inputs, mode=mode, in_features=100), tmp_path / "bl.onnx")
    before = Path(path).read_bytes()
    got = ort_session(path, threads=1).run(None, feeds(inputs))[0]
    want = binary_linear_reference(*inputs.values(), mode=mode, in_features=100)
    np.testing.assert_array_equal(got, want)
    assert Path(path).read_bytes() == before  # the rewrite is in memory only


def test_packed_binary_matmul_keeps_exact_non_default_ratios(tmp_path):
    rng = np.random.default_rng(2)
    inputs = {
        "A": np.abs(rng.standard_normal((2, 2, 5, 70))).astype(np.float32) * 0.1,
        "B": rng.standard_normal((2, 2, 70, 4)).astype(np.float32),
        "a_shift": np.zeros((2, 1, 70), np.float32),
        "a_alpha": np.array([0.05, 0.1, 0.2], np.float32),
        "b_shift": np.zeros((2, 1, 4), np.float32),
        "b_alpha": np.array([0.3, 0.2, 0.1], np.float32),
    }
    ratios = [0.61234567, 0.8765432]
    path = _save(
        single_node_model("BinaryMatMul", inputs, a_mode="gsb_unsigned", b_mode="gsb_signed", gsb_ratios=ratios),
        tmp_path / "bm.onnx",
    )
    got = ort_session(path).run(None, feeds(inputs))[0]
    want = binary_matmul_reference(*inputs.values(), a_mode="gsb_unsigned", b_mode="gsb_signed", gsb_ratios=ratios)
    np.testing.assert_array_equal(got, want)
    rewritten = rewrite_for_extensions(onnx.load(path))
    assert not uses_bvit_ops(rewritten) and rewritten.graph.node[0].domain == "ai.onnx.contrib"


def _good_model_path(tmp_path) -> str:
    return _save(
        single_node_model("BinaryLinear", _linear_inputs(True), mode="signed", in_features=100), tmp_path / "good.onnx"
    )


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ort_session(tmp_path / "nope.onnx")


def test_empty_file(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        ort_session(tmp_path / "empty.onnx")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
def test_truncated_file(tmp_path, keep):
    data = Path(_good_model_path(tmp_path)).read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        ort_session(bad)
    assert info.value.exit_code == 2


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="corrupt or truncated"):
        ort_session(bad)


def test_bad_threads(tmp_path):
    with pytest.raises(UsageError, match="threads"):
        ort_session(_good_model_path(tmp_path), threads=0)
