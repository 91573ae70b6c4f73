"""Artifacts keep their weights in params.npz (bvit_edge.runtime.params): the lifting pass, the artifact
layout and manifest, outputs identical to embedded weights and to onnxruntime, old (schema 1) artifacts,
and clear errors for a missing or damaged parameter file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
tvm = pytest.importorskip("tvm")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from bvit_edge.errors import ConfigError, UsageError
from bvit_edge.packing import pack_bits
from bvit_edge.runtime.artifact import load_artifact, read_manifest, read_params, run_artifact
from bvit_edge.runtime.compile import build_relax, compile_model
from bvit_edge.runtime.params import MIN_ELEMENTS, LiftedParams, lift_params_pass
from bvit_edge.runtime.schedules import family_params
from bvit_edge.targets import load_target

SHAPE = [1, 3, 16, 16]
K, HIDDEN, CLASSES = 3 * 16 * 16, 512, 10


def binary_model(path: Path) -> Path:
    """image [1, 3, 16, 16] -> Flatten -> BinaryLinear(768 -> 512, signed, packed) -> Gemm(512 -> 10)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((HIDDEN, K)) < 0
    inits = [
        nh.from_array((rng.standard_normal(K) * 0.1).astype(np.float32), "shift"),
        nh.from_array(np.array(np.float32(0.05)), "alpha"),
        nh.from_array(pack_bits(w), "w_bits"),
        nh.from_array((rng.random(HIDDEN) + 0.5).astype(np.float32), "w_scale"),
        nh.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "bias"),
        nh.from_array((rng.standard_normal((CLASSES, HIDDEN)) * 0.1).astype(np.float32), "head"),
    ]
    nodes = [
        oh.make_node("Flatten", ["image"], ["flat"], axis=1),
        oh.make_node(
            "BinaryLinear",
            ["flat", "shift", "alpha", "w_bits", "w_scale", "bias"],
            ["h"],
            domain="bvit_edge",
            mode="signed",
            in_features=K,
        ),
        oh.make_node("Gemm", ["h", "head"], ["logits"], transB=1),
    ]
    g = oh.make_graph(
        nodes,
        "binary",
        [oh.make_tensor_value_info("image", TensorProto.FLOAT, SHAPE)],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
        inits,
    )
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("bvit_edge", 1)], ir_version=10)
    onnx.save(model, str(path))
    return path


def _initializer(path: Path, name: str) -> np.ndarray:
    return next(nh.to_array(i) for i in onnx.load(str(path)).graph.initializer if i.name == name)


def _popcount(a: np.ndarray) -> int:
    return int(np.unpackbits(np.ascontiguousarray(a).view(np.uint8)).sum())


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """The same model compiled with its weights in params.npz and embedded in lib.so."""
    root = tmp_path_factory.mktemp("params")
    src = binary_model(root / "binary.onnx")
    return {
        "onnx": src,
        "file": compile_model(src, "host", root / "file"),
        "embedded": compile_model(src, "host", root / "embedded", params_storage="embedded"),
    }


# ------------------------------------------------------------------------------------------ the pass
def _const_module():
    """main(x[2, 8]) = ((x + c) * 2 + c) + t: c (16 elements) used twice, t (8 elements) and 2 (scalar) tiny."""
    from tvm import relax

    c = np.arange(16, dtype=np.float32).reshape(2, 8)
    t = np.linspace(-1, 1, 8, dtype=np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 8], "float32"))
    const_c = relax.const(c)
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.add(x, const_c))
            b = bb.emit(relax.op.multiply(a, relax.const(np.float32(2))))
            d = bb.emit(relax.op.add(b, const_c))
            out = bb.emit_output(relax.op.add(d, relax.const(t)))
        bb.emit_func_output(out)
    return bb.get(), c, t


def test_the_pass_lifts_large_constants_once_and_keeps_tiny_ones():
    mod, c, _ = _const_module()
    holder = LiftedParams()
    lifted = lift_params_pass(holder)(mod)
    params = lifted["main"].params
    assert [p.name for p in params] == ["x", "p0"]  # c used twice is one parameter
    assert holder.names == ["p0"] and len(holder) == 1
    np.testing.assert_array_equal(holder.arrays[0], c)
    assert holder.nbytes == c.nbytes
    assert c.size >= MIN_ELEMENTS
    assert "p0" in lifted["main"].script() and lifted["main"].attrs["num_input"] == 1
    # the original module is left as it was
    assert [p.name for p in mod["main"].params] == ["x"]


def test_the_pipeline_lifts_after_folding_and_the_build_takes_the_weights_after_the_input():
    mod, c, t = _const_module()
    spec = load_target("host")
    holder = LiftedParams()
    exe = build_relax(mod, spec, family_params(spec.family), params=holder)
    assert len(holder) == 1
    np.testing.assert_array_equal(holder.arrays[0], c)
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    y = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(a) for a in holder.arrays]).numpy()
    np.testing.assert_allclose(y, (x + c) * 2 + c + t, rtol=1e-6)
    with pytest.raises(Exception):  # noqa: B017 - the weights are not inside any more
        vm["main"](tvm.runtime.tensor(x))


# ------------------------------------------------------------------------------------------ artifacts
def test_the_artifact_folder_holds_lib_params_and_manifest(arts):
    art = arts["file"]
    # plus the marker saying `bvit-edge compile` wrote the folder (bvit_edge.output_folder)
    assert sorted(p.name for p in art.iterdir()) == [".bvit-edge-output.json", "lib.so", "manifest.json", "params.npz"]
    m = read_manifest(art)
    assert m["schema_version"] == 2
    info = m["params"]
    npz_path = art / "params.npz"
    assert info["storage"] == "file" and info["file"] == "params.npz"
    assert info["bytes"] == npz_path.stat().st_size
    assert info["sha256"] == hashlib.sha256(npz_path.read_bytes()).hexdigest()
    with np.load(npz_path, allow_pickle=False) as npz:
        assert npz.files == info["names"] == [f"p{i}" for i in range(info["count"])]
        arrays = [npz[n] for n in npz.files]
    assert all(a.ndim >= 1 and a.size >= MIN_ELEMENTS for a in arrays)
    # the binary weights are in the file, repacked into the target's words: same bytes, same set bits
    w_bits = _initializer(arts["onnx"], "w_bits")
    words = [a for a in arrays if a.dtype.kind == "u"]
    assert len(words) == 1 and words[0].nbytes == w_bits.nbytes and _popcount(words[0]) == _popcount(w_bits)
    head = _initializer(arts["onnx"], "head")
    assert any(
        a.size == head.size and np.array_equal(np.sort(a, axis=None), np.sort(head, axis=None)) for a in arrays
    )  # the float head (maybe transposed by constant folding)
    assert npz_path.stat().st_size >= w_bits.nbytes + head.nbytes
    assert read_manifest(arts["embedded"])["params"] == {"storage": "embedded"}
    assert sorted(p.name for p in arts["embedded"].iterdir()) == [".bvit-edge-output.json", "lib.so", "manifest.json"]


def test_lib_so_is_smaller_by_about_the_weights(arts):
    weights = sum(a.nbytes for a in read_params(arts["file"], read_manifest(arts["file"])))
    lib_file = (arts["file"] / "lib.so").stat().st_size
    lib_embedded = (arts["embedded"] / "lib.so").stat().st_size
    assert lib_embedded - lib_file >= 0.9 * weights, (lib_embedded, lib_file, weights)


def test_file_and_embedded_weights_give_identical_outputs_matching_onnxruntime(arts):
    from bvit_edge.runtime.ort import ort_run

    x = np.random.default_rng(1).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    y_file = run_artifact(arts["file"], x, normalize=False)
    y_embedded = run_artifact(arts["embedded"], x, normalize=False)
    np.testing.assert_array_equal(y_file, y_embedded)
    ref = ort_run(arts["onnx"], x)[0]
    np.testing.assert_allclose(y_file, ref, rtol=1e-5, atol=1e-4)


def test_loaded_artifact_keeps_the_weight_tensors_for_other_callers(arts):
    art = load_artifact(arts["file"])
    m = art.manifest
    assert len(art.params) == m["params"]["count"] > 0
    x = tvm.runtime.tensor(np.zeros(SHAPE, np.float32), device=art.device)
    np.testing.assert_array_equal(art.invoke(x).numpy(), art.vm["main"](x, *art.params).numpy())
    assert load_artifact(arts["embedded"]).params == []


def test_a_schema_1_artifact_still_runs(arts, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(arts["embedded"], old)
    m = json.loads((old / "manifest.json").read_text())
    m["schema_version"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    x = np.random.default_rng(2).standard_normal((2, *SHAPE[1:])).astype(np.float32)
    np.testing.assert_array_equal(run_artifact(old, x, normalize=False), run_artifact(arts["file"], x, normalize=False))
    m["schema_version"] = 3
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UsageError, match="schema_version 3"):
        read_manifest(old)


def test_an_unknown_storage_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="params_storage"):
        compile_model(binary_model(tmp_path / "m.onnx"), "host", tmp_path / "out", params_storage="cloud")
    assert not (tmp_path / "out").exists()


def test_a_missing_params_file_is_a_usage_error_from_the_cli(arts, tmp_path):
    from PIL import Image

    broken = tmp_path / "broken"
    shutil.copytree(arts["file"], broken)
    (broken / "params.npz").unlink()
    with pytest.raises(UsageError, match=r"params\.npz.*recompile"):
        read_manifest(broken)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    r = subprocess.run(
        [sys.executable, "-m", "bvit_edge", "run", str(broken), "--image", str(image)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == UsageError.exit_code == 2, r.stdout + r.stderr
    out = " ".join((r.stdout + r.stderr).split())
    assert "params.npz" in out and "recompile" in out


def test_a_damaged_params_file_is_a_usage_error(arts, tmp_path):
    broken = tmp_path / "damaged"
    shutil.copytree(arts["file"], broken)
    data = (broken / "params.npz").read_bytes()
    (broken / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"params\.npz"):
        load_artifact(broken)
    np.savez(broken / "params.npz", p0=np.zeros(3, np.float32))  # readable, but not the manifest's arrays
    with pytest.raises(UsageError, match="recompile"):
        load_artifact(broken)


# ------------------------------------------------------------------------------------------ over RPC
@pytest.fixture()
def rpc_session():
    """TVM's stock RPC server on this host (in a worker process, as test_targets_rpc uses), connected."""
    server = tvm.rpc.Server(host="127.0.0.1", port=9190, port_end=9390, silent=True)
    try:
        yield tvm.rpc.connect("127.0.0.1", server.port)
    finally:
        server.terminate()


def test_the_weights_are_sent_to_an_rpc_device(arts, rpc_session):
    x = np.random.default_rng(3).standard_normal((2, *SHAPE[1:])).astype(np.float32)
    remote = run_artifact(arts["file"], x, session=rpc_session, normalize=False)
    np.testing.assert_array_equal(remote, run_artifact(arts["file"], x, normalize=False))
