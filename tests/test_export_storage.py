"""Compact storage of float parameters (bvit_edge.export.storage) and its lowering (bvit_edge.runtime.compact_params).

The encodings follow the formulas written out here (numpy); a compact export is standard ONNX that
onnxruntime runs, and it computes exactly the torch model whose tensors hold the decoded values; the bytes of
every storage choice are reported; the compiled artifact keeps B as int8 (and float16 tensors as float16) in
params.npz, rebuilds them at load time and gives onnxruntime's outputs.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from bvit_edge.bench_models import random_frozen_student
from bvit_edge.contract import META_STORAGE
from bvit_edge.errors import UsageError
from bvit_edge.export import export_onnx
from bvit_edge.export.storage import (
    apply_to_model,
    decompacted,
    encode,
    encode_model,
    rounding_error,
    storage_bytes,
)
from bvit_edge.runtime.ort import ort_session, run_session
from bvit_edge.runtime.param_decode import decode_param

torch.set_num_threads(1)


def test_int8_storage_is_symmetric_per_row_written_out():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 7)) * rng.uniform(0.01, 1, (2, 3, 1))).astype(np.float32)
    x[1, 2] = 0.0  # an all-zero row
    enc = encode(x, "int8")
    rows = x.reshape(6, 7)
    for r in range(6):
        peak = np.abs(rows[r]).max()
        s = np.float32(peak / np.float32(127)) if peak > 0 else np.float32(1.0)
        assert enc.scale[r] == s
        q = np.clip(np.rint(rows[r] / s), -127, 127)
        assert np.array_equal(enc.data[r], q.astype(np.int8))
        assert np.abs(enc.data[r].astype(np.float32) * s - rows[r]).max() <= s / 2 * (1 + 1e-6)
    assert enc.data.dtype == np.int8 and enc.scale.dtype == np.float32 and enc.data.shape == (6, 7)
    assert np.array_equal(enc.decoded(), (enc.data.astype(np.float32) * enc.scale[:, None]).reshape(x.shape))
    assert enc.nbytes == 6 * 7 + 4 * 6
    assert not np.any(enc.decoded()[1, 2])


def test_int16_storage_has_32767_levels_a_side():
    x = np.random.default_rng(5).standard_normal((4, 11)).astype(np.float32) * 0.05
    enc = encode(x, "int16")
    s = (np.abs(x).max(axis=1) / np.float32(32767)).astype(np.float32)
    assert enc.data.dtype == np.int16 and np.array_equal(enc.scale, s)
    assert np.array_equal(enc.data, np.clip(np.rint(x / s[:, None]), -32767, 32767).astype(np.int16))
    assert np.abs(enc.decoded() - x).max() <= s.max() / 2 * (1 + 1e-6)
    assert enc.nbytes == 2 * 44 + 4 * 4


def test_int4_storage_uses_seven_levels_a_side_and_packs_two_a_byte():
    from bvit_edge.runtime.param_decode import pack_int4, unpack_int4

    x = np.random.default_rng(4).standard_normal((5, 9)).astype(np.float32)
    enc = encode(x, "int4")
    s = (np.abs(x).max(axis=1) / np.float32(7)).astype(np.float32)
    assert np.array_equal(enc.scale, s)
    assert np.array_equal(enc.data, np.clip(np.rint(x / s[:, None]), -7, 7).astype(np.int8))
    assert np.abs(enc.decoded() - x).max() <= s.max() / 2 * (1 + 1e-6)
    assert enc.nbytes == -(-45 // 2) + 4 * 5
    codes = np.array([[-8, 7, 0], [1, -1, 5]], np.int8)
    packed = pack_int4(codes)
    # element i: low nibble of byte i // 2 when i is even, high nibble when odd (two's complement)
    assert packed.tolist() == [0x08 | 0x70, 0x00 | 0x10, 0x0F | 0x50]
    assert np.array_equal(unpack_int4(packed, [2, 3]), codes)


def test_float16_storage_rounds_to_nearest_within_half_an_ulp():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 0.05
    enc = encode(x, "float16")
    assert enc.data.dtype == np.float16 and enc.nbytes == 2000
    err = np.abs(enc.decoded().astype(np.float64) - x)
    assert np.all(err <= np.maximum(np.abs(x) * 2.0**-11, 2.0**-25))
    assert rounding_error(x, "float32") == 0.0
    with pytest.raises(UsageError):
        encode(np.array([np.nan], np.float32), "int8")
    with pytest.raises(UsageError):
        encode(x, "int2")


def test_load_time_decoding_is_the_dequantize_formula():
    q = np.array([[-3, 0, 5], [127, -127, 1]], np.int8)
    scale, zero = np.array([0.5, 0.25], np.float32), np.array(1, np.int8)
    got = decode_param(
        q, {"kind": "dequantize", "axis": 0, "scale": "s", "zero_point": "z", "shape": [3, 2]}, {"s": scale, "z": zero}
    )
    want = ((q.astype(np.float32) - 1.0) * scale[:, None]).reshape(3, 2)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    h = np.array([1.5, -0.1], np.float16)
    assert np.array_equal(decode_param(h, {"kind": "cast", "shape": [2]}, {}), h.astype(np.float32))
    with pytest.raises(ValueError, match="unknown"):
        decode_param(h, {"kind": "lz4", "shape": [2]}, {})


@pytest.fixture(scope="module")
def student():
    return random_frozen_student("gsb_test_patch4_16", seed=3)


@pytest.fixture(scope="module")
def exports(student, tmp_path_factory):
    d = tmp_path_factory.mktemp("storage")
    out = {}
    for ops, ab, fp in (
        ("packed", "int8", "float16"),
        ("packed", "float16", "float32"),
        ("standard", "int16", "float32"),
        ("packed", "float32", "float32"),
        ("packed", "int4", "float32"),
        ("packed", "int16", "float32"),
    ):
        path = d / f"{ops}_{ab}_{fp}.onnx"
        out[(ops, ab, fp)] = (path, export_onnx(student, path, ops=ops, att_bias=ab, float_params=fp))
    return out


def test_compact_exports_are_standard_onnx_computing_the_decoded_model(student, exports):
    x = np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32)
    heads, n = student.blocks[0].attn.num_heads, student.blocks[0].attn.num_tokens
    for (ops, ab, fp), (path, res) in exports.items():
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        inits = {i.name: i for i in proto.graph.initializer}
        biases = [k for k in inits if k.startswith("blocks.") and ".att_bias" in k]
        assert biases, (ops, ab)
        dtypes = {
            onnx.TensorProto.DataType.Name(inits[k].data_type)
            for k in biases
            if not k.endswith(".scale") and not k.endswith(".shape")
        }
        want = {"int16": "INT16", "int8": "INT8", "int4": "INT4", "float16": "FLOAT16", "float32": "FLOAT"}[ab]
        assert dtypes == {want}, (ops, ab, dtypes)
        opset = {o.domain: o.version for o in proto.opset_import}[""]
        assert opset == (21 if ab in ("int16", "int4") else 18)  # DequantizeLinear of INT16 / INT4 is opset 21
        if ab in ("int16", "int8", "int4"):
            assert any(list(inits[k].dims) == [heads * n, n] for k in biases)
            assert any(nd.op_type == "DequantizeLinear" and ".att_bias" in nd.output[0] for nd in proto.graph.node)
        if fp == "float16":
            assert inits["pos_embed.float16"].data_type == onnx.TensorProto.FLOAT16
        assert json.loads({p.key: p.value for p in proto.metadata_props}[META_STORAGE]) == {
            "att_bias": ab,
            "float_params": fp,
        }
        with torch.no_grad():
            want = apply_to_model(student, res.encoded)(torch.from_numpy(x)).numpy()
        got = run_session(ort_session(path), x, 6)[0]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), (ops, ab, fp)
        assert np.array_equal(got.argmax(1), want.argmax(1))


def test_the_decoded_model_is_what_encode_model_gives(student, exports):
    _, res = exports[("packed", "int8", "float16")]
    mine = encode_model(student, "int8", "float16")
    assert set(res.encoded) <= set(mine)
    for name, enc in res.encoded.items():
        assert np.array_equal(enc.decoded(), mine[name].decoded()), name
    assert res.storage["by_kind"]["att_bias"]["stored_bytes"] < res.storage["by_kind"]["att_bias"]["float32_bytes"] / 3


def test_bytes_of_every_choice_and_decompacting(exports):
    _, res32 = exports[("packed", "float32", "float32")]
    path8, res8 = exports[("packed", "int8", "float16")]
    proto = onnx.load(str(path8))
    back = decompacted(proto)
    b = {i.name: i for i in back.graph.initializer}
    for name, enc in res8.encoded.items():
        assert b[name].data_type == onnx.TensorProto.FLOAT
        assert np.array_equal(onnx.numpy_helper.to_array(b[name]), enc.decoded()), name
    sizes = storage_bytes(proto)
    # float32 storage weighs what the float32 export weighs (the graphs differ only in metadata and names)
    assert sizes["att_bias=float32,float_params=float32"] == pytest.approx(res32.bytes, rel=0.01)
    assert (
        sizes["att_bias=int8,float_params=float32"]
        < sizes["att_bias=float16,float_params=float32"]
        < sizes["att_bias=float32,float_params=float32"]
    )


@pytest.mark.slow
def test_the_artifact_keeps_b_int8_decodes_it_at_load_and_matches_onnxruntime(exports, tmp_path, monkeypatch):
    pytest.importorskip("tvm")
    from bvit_edge.runtime import compact_params
    from bvit_edge.runtime.artifact import read_manifest, run_artifact
    from bvit_edge.runtime.compile import compile_model

    monkeypatch.setattr(compact_params, "MIN_COMPACT_ELEMENTS", 64)  # the test model's B has 648 values
    path, _ = exports[("packed", "int8", "float16")]
    art = compile_model(path, "host", tmp_path / "art")
    manifest = read_manifest(art)
    decode = manifest["params"]["decode"]
    with np.load(art / "params.npz", allow_pickle=False) as z:
        kinds = {name: (str(z[name].dtype), tuple(z[name].shape)) for name in manifest["params"]["names"]}
        assert all(f"{n}.scale" in z.files for n, spec in decode.items() if spec["kind"] == "dequantize")
    int8_b = [n for n, (dt, shape) in kinds.items() if dt == "int8" and shape == (2 * 18, 18)]
    assert len(int8_b) == 2 and all(decode[n]["shape"] == [2, 18, 18] for n in int8_b)
    assert any(dt == "float16" for dt, _ in kinds.values())
    assert not [n for n, (dt, shape) in kinds.items() if dt == "float32" and shape in ((2, 18, 18), (1, 2, 18, 18))]
    x = np.random.default_rng(2).standard_normal((4, 3, 16, 16)).astype(np.float32)
    got = run_artifact(art, x, normalize=False)
    want = run_session(ort_session(path), x, 4)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # int4: TVM reads the 4-bit codes as int8; params.npz packs them two a byte again
    path4, _ = exports[("packed", "int4", "float32")]
    art4 = compile_model(path4, "host", tmp_path / "art4")
    from bvit_edge.bench_models import att_bias_in_artifact

    assert att_bias_in_artifact(art4, 2, 18) == ["uint8 (int4)", "uint8 (int4)"]
    got4 = run_artifact(art4, x, normalize=False)
    want4 = run_session(ort_session(path4), x, 4)[0]
    assert np.abs(got4 - want4).max() <= 1e-5 * np.abs(want4).max()
    # int16, the default
    path16, _ = exports[("packed", "int16", "float32")]
    art16 = compile_model(path16, "host", tmp_path / "art16")
    assert att_bias_in_artifact(art16, 2, 18) == ["int16", "int16"]
    got16 = run_artifact(art16, x, normalize=False)
    want16 = run_session(ort_session(path16), x, 4)[0]
    assert np.abs(got16 - want16).max() <= 1e-5 * np.abs(want16).max()
