"""export_onnx: a frozen GSB model exports through torch.onnx (dynamo) to IR 10 / opset 18 (21 with int16 / int4
storage of its attention bias) with bvit_edge v1
nodes on bit-packed uint8 weights (or standard ops only), passes onnx.checker's full check, and shape
inference alone gives the output shape; the float teacher exports as plain ONNX; a model that is not frozen
or holds an unsupported module is refused with a clear error and no file (partial or temporary) is left."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
import torch

import bvit_edge.models.gsb  # noqa: F401  (registers the GSB students)
from bvit_edge.errors import ConfigError, UsageError
from bvit_edge.export import export_onnx, export_teacher_onnx
from bvit_edge.models import create_model
from bvit_edge.runtime.ort import ort_run

torch.set_num_threads(1)


def _frozen_gsb_test_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = create_model("gsb_test_patch4_16")
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 16, 16))  # lazy alpha initialisation from a batch
    return m.freeze()


@pytest.fixture(scope="module")
def frozen():
    return _frozen_gsb_test_model()


@pytest.fixture(scope="module")
def exports(frozen, tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    return {ops: export_onnx(frozen, d / f"gsb_{ops}.onnx", ops=ops) for ops in ("packed", "standard")}


def test_packed_export_has_bvit_edge_nodes_on_packed_weights(exports, frozen):
    res = exports["packed"]
    proto = onnx.load(res.path)
    assert proto.ir_version == 10
    # opset 18, or 21 when B is stored as int16 / int4 codes (the default is int16)
    assert res.storage["att_bias"] == "int16" and res.storage["by_kind"]["att_bias"]["tensors"] >= 1
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 21), ("bvit_edge", 1)}
    nodes = [n for n in proto.graph.node if n.domain == "bvit_edge"]
    depth = len(frozen.blocks)
    assert sum(n.op_type == "BinaryLinear" for n in nodes) == 4 * depth  # qkv, proj, fc1, fc2
    assert sum(n.op_type == "BinaryMatMul" for n in nodes) == 2 * depth  # q k^T, A V
    inits = {i.name: i for i in proto.graph.initializer}
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "BinaryLinear":
            w = inits[n.input[3]]
            assert w.data_type == onnx.TensorProto.UINT8
            assert w.dims[1] * 8 == -(-attrs["in_features"] // 64) * 64
            assert attrs["mode"] in (b"signed", b"unsigned")
        else:
            assert (attrs["a_mode"], attrs["b_mode"]) in {(b"signed", b"signed"), (b"gsb_unsigned", b"gsb_signed")}
            np.testing.assert_allclose(attrs["gsb_ratios"], [0.7, 0.9], rtol=1e-7)
    assert not any(
        i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and i.dims[0] * i.dims[1] >= 32 * 32
        for i in inits.values()
    ), "no float weight matrices"
    assert res.op_counts["bvit_edge::BinaryLinear"] == 4 * depth


def test_exports_pass_full_check_and_shape_inference(exports):
    for res in exports.values():
        proto = onnx.load(res.path)
        onnx.checker.check_model(proto, full_check=True)
        for vi in proto.graph.output:
            vi.type.tensor_type.ClearField("shape")
        del proto.graph.value_info[:]
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        dims = inferred.graph.output[0].type.tensor_type.shape.dim
        assert len(dims) == 2 and dims[1].dim_value == 10
        assert res.output_names == ["logits"] and res.input_shape[1:] == [3, 16, 16]
        assert res.dynamic_batch and isinstance(res.input_shape[0], str)


def test_exports_carry_no_local_paths(exports):
    for res in exports.values():
        assert b"stack_trace" not in Path(res.path).read_bytes()


def test_standard_export_has_only_standard_ops(exports):
    proto = onnx.load(exports["standard"].path)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert {o.domain for o in proto.opset_import} == {""}


def test_dynamic_batch_runs_any_batch(exports, frozen):
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = frozen(torch.from_numpy(x)).numpy()
    for res in exports.values():
        for xb, wb in ((x[:1], want[:1]), (x, want)):
            got = ort_run(res.path, xb, threads=1)[0]
            np.testing.assert_allclose(got, wb, rtol=1e-5, atol=1e-6 * np.abs(wb).max())


def test_teacher_exports_as_plain_onnx(tmp_path):
    teacher = create_model("deit_test_patch4_16").eval()
    res = export_teacher_onnx(teacher, tmp_path / "teacher.onnx")
    proto = onnx.load(res.path)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(
        ort_run(res.path, x)[0], teacher(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5
    )


def _no_files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_unfrozen_model_is_refused_without_output(tmp_path):
    m = create_model("gsb_test_patch4_16")
    with pytest.raises(ConfigError, match=r"not frozen.*freeze"):
        export_onnx(m, tmp_path / "out.onnx")
    assert _no_files(tmp_path) == []


@torch.library.custom_op("bvit_h3test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_mystery.register_fake
def _(x):
    return torch.empty_like(x)


class _Unsupported(torch.nn.Module):
    default_cfg: ClassVar[dict] = {"input_size": (3, 4, 4)}

    def forward(self, x):
        return torch.ops.bvit_h3test.mystery(x).flatten(1)


def test_unsupported_module_is_refused_without_output(tmp_path):
    with pytest.raises(ConfigError, match=r"bvit_h3test\.mystery.*unsupported module") as info:
        export_onnx(_Unsupported(), tmp_path / "out.onnx")
    assert info.value.exit_code == 2
    assert _no_files(tmp_path) == []


def test_bad_arguments(tmp_path, frozen):
    with pytest.raises(UsageError, match="ops"):
        export_onnx(frozen, tmp_path / "x.onnx", ops="fast")
    with pytest.raises(UsageError, match="input_shape"):
        export_onnx(frozen, tmp_path / "x.onnx", input_shape=(3, 16, 16))
    assert _no_files(tmp_path) == []


def test_failed_export_keeps_previous_file(tmp_path, frozen):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ConfigError):
        export_onnx(_Unsupported(), path)
    assert path.read_bytes() == b"previous"
    assert _no_files(tmp_path) == ["model.onnx"]
