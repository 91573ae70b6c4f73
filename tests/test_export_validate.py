"""validate_onnx (Optimum-style: names, then shapes, then values) and size_report.

A faithful export passes with its max differences and top-1 agreement reported; a renamed output, a model
of another shape and a model with other weights fail with OutputNameMismatch / ShapeMismatch /
ValueMismatch (ValidationError, exit code 3) that state the difference; a corrupt .onnx is a DataError.
The size report counts 1/8/32-bit weights from the initializers (checked against the model's own tensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import bvit_edge.models.gsb  # noqa: F401
from bvit_edge.errors import DataError, ValidationError
from bvit_edge.export import (
    OutputNameMismatch,
    ShapeMismatch,
    ValueMismatch,
    export_onnx,
    export_teacher_onnx,
    size_report,
    validate_onnx,
)
from bvit_edge.models import create_model

torch.set_num_threads(1)


def _frozen(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = create_model("gsb_test_patch4_16", **kw)
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 16, 16))
    return m.freeze()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("val")
    model = _frozen(0)
    packed = export_onnx(model, d / "packed.onnx", ops="packed")
    x = np.random.default_rng(0).standard_normal((12, 3, 16, 16)).astype(np.float32)
    return d, model, packed, x


def test_faithful_export_passes(setup):
    _, model, packed, x = setup
    rep = validate_onnx(model, packed.path, x, threads=1)
    assert rep.passed and rep.num_inputs == 12
    assert rep.output_names == ["logits"] and rep.output_shapes == [[12, 10]]
    assert rep.top1_agreement == 1.0 and rep.top1_mismatches == 0
    assert rep.max_rel_diff <= 1e-5


def test_renamed_output_is_output_name_mismatch(setup, tmp_path):
    _, model, packed, x = setup
    proto = onnx.load(packed.path)
    old = proto.graph.output[0].name
    proto.graph.output[0].name = "scores"
    for n in proto.graph.node:
        for i, o in enumerate(n.output):
            if o == old:
                n.output[i] = "scores"
    bad = tmp_path / "renamed.onnx"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(OutputNameMismatch, match="scores") as info:
        validate_onnx(model, bad, x)
    assert isinstance(info.value, ValidationError) and info.value.exit_code == 3


def test_other_shape_is_shape_mismatch(setup):
    _, _, packed, x = setup
    other = _frozen(0, num_classes=7)
    with pytest.raises(ShapeMismatch, match=r"\[12, 10\].*\[12, 7\]"):
        validate_onnx(other, packed.path, x)


def test_other_weights_is_value_mismatch_with_max_difference(setup):
    _, _, packed, x = setup
    other = _frozen(1)
    with pytest.raises(ValueMismatch, match="max abs diff") as info:
        validate_onnx(other, packed.path, x)
    assert info.value.exit_code == 3


def test_corrupt_file_is_data_error(setup, tmp_path):
    _, model, packed, x = setup
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(Path(packed.path).read_bytes()[:5000])
    with pytest.raises(DataError, match="corrupt or truncated"):
        validate_onnx(model, bad, x)


def test_size_report_counts_weights_by_precision(setup):
    d, model, packed, _ = setup
    teacher = create_model("deit_test_patch4_16", distilled=True).eval()
    t = export_teacher_onnx(teacher, d / "teacher.onnx")
    rep = size_report(packed.path, t.path)
    # independent counts from the frozen model's own buffers
    ones = sum(m.out_features * m.in_features for m in model.modules() if hasattr(m, "w_bits"))
    eights = sum(b.numel() for b in model.buffers() if b.dtype == torch.int8)
    # B, stored as int8; blocks with equal B (all zero at initialisation) share one initializer
    bias = sum({b.numpy().tobytes(): b.numel() for n, b in model.named_buffers() if n.endswith("att_bias")}.values())
    assert packed.storage["att_bias"] == "int16" and bias > 0  # the default storage of B
    assert rep.weights_1bit == ones
    assert rep.weights_8bit == eights
    assert rep.weights_16bit == bias
    # the bytes of this very file under every storage choice: the default's is the file's size
    assert rep.storage_bytes["att_bias=int16,float_params=float32"] == rep.bytes_on_disk
    assert rep.storage_bytes["att_bias=float32,float_params=float32"] - rep.bytes_on_disk == pytest.approx(
        2 * bias, abs=4 * bias // 16 + 2048
    )  # 4 bytes instead of 2 a value, minus the per-row scales
    assert rep.storage_bytes["att_bias=int8,float_params=float32"] - rep.bytes_on_disk == pytest.approx(-bias, abs=2048)
    assert rep.bytes_on_disk == len(Path(packed.path).read_bytes())
    t_floats = sum(p.numel() for p in teacher.parameters())
    # the exporter's constant folding merges a few small tensors (tokens + position embedding), so the
    # file's float count is close to, not equal to, the parameter count
    assert size_report(t.path).weights_32bit == pytest.approx(t_floats, rel=0.05)
    assert rep.compression_ratio == pytest.approx(t.bytes / packed.bytes)


class _Step(torch.nn.Module):
    """logits = [1, 0] when sum(x) > 0 else [0, 1]: a discontinuity at sum(x) = 0, like a binarizer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(dim=1, keepdim=True)
        return torch.cat([(s > 0).float(), (s <= 0).float()], dim=1)


def test_tie_probe_recognises_an_input_on_a_discontinuity():
    from bvit_edge.export.validate import tie_probe

    rng = np.random.default_rng(0)
    on_edge = rng.standard_normal((1, 4, 4)).astype(np.float32)
    on_edge[0, 0, 0] -= on_edge.sum(dtype=np.float64)  # sum within rounding of 0
    stable = np.abs(rng.standard_normal((1, 4, 4))).astype(np.float32)  # sum far above 0
    model = _Step()
    with torch.no_grad():
        here = model(torch.from_numpy(on_edge[None])).numpy()[0]
    other = here[::-1].copy()  # the other side of the edge: what another runtime may legitimately give
    assert tie_probe(model, on_edge, [other], tol=1e-5)
    assert not tie_probe(model, stable, [np.array([0.0, 1.0], np.float32)], tol=1e-5)  # stable: must match
    assert not tie_probe(model, on_edge, [np.array([7.0, 7.0], np.float32)], tol=1e-5)  # not a torch outcome
