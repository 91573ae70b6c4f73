"""The 8-bit parts: torch.ops.bvit.dequantize_int8 / quantize_dequantize_int8 export to standard
DequantizeLinear / QuantizeLinear on int8 initializers; onnxruntime gives what the formulas written out
here give (w * scale; clamp(round_half_even(x / scale), -128, 127) * scale)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import bvit_edge.quant.deploy  # noqa: F401  (torch.ops.bvit.*)
from bvit_edge.export import export_onnx
from bvit_edge.export.ops.int8 import dequantize_int8_reference, quantize_dequantize_int8_reference
from bvit_edge.runtime.ort import ort_run


class _Int8Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randint(-128, 128, (5, 12), generator=g, dtype=torch.int8))
        self.register_buffer("w_scale", torch.rand(5, generator=g) * 0.02 + 0.001)
        self.register_buffer("a_scale", torch.tensor(0.05))
        self.default_cfg = {"input_size": (3, 2, 2)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.ops.bvit.quantize_dequantize_int8(x.flatten(1) * 3.0, self.a_scale)
        w = torch.ops.bvit.dequantize_int8(self.w, self.w_scale, 0)
        return torch.nn.functional.linear(x, w)


def test_formulas_written_out():
    w = np.array([[-128, 0, 127], [5, -6, 7]], np.int8)
    s = np.array([0.5, 0.25], np.float32)
    np.testing.assert_array_equal(dequantize_int8_reference(w, s, 0), w.astype(np.float32) * s[:, None])
    np.testing.assert_array_equal(dequantize_int8_reference(w, np.float32(2.0), 0), w.astype(np.float32) * 2)
    x = np.array([0.25, 0.75, -0.25, 100.0, -100.0], np.float32)
    # halves round to even: 0.5 -> 0, 1.5 -> 2, -0.5 -> -0; saturation at -128 / 127
    np.testing.assert_array_equal(
        quantize_dequantize_int8_reference(x, np.float32(0.5)), np.array([0.0, 1.0, -0.0, 63.5, -64.0], np.float32)
    )


@pytest.mark.parametrize("ops", ["packed", "standard"])
def test_int8_export_uses_standard_qdq_and_matches(tmp_path, ops):
    net = _Int8Net().eval()
    res = export_onnx(net, tmp_path / "int8.onnx", ops=ops)
    proto = onnx.load(res.path)
    types = {n.op_type for n in proto.graph.node}
    assert {"DequantizeLinear", "QuantizeLinear"} <= types
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    int8_inits = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert any(list(i.dims) == [5, 12] for i in int8_inits)
    x = np.random.default_rng(1).standard_normal((7, 3, 2, 2)).astype(np.float32)
    got = ort_run(res.path, x, threads=1)[0]
    xq = quantize_dequantize_int8_reference(x.reshape(7, -1) * np.float32(3.0), net.a_scale.numpy())
    want = xq @ dequantize_int8_reference(net.w.numpy(), net.w_scale.numpy(), 0).T
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)
