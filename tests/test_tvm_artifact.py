"""Artifacts: compile for the host and run; manifest contents; aarch64/armv7 builds; emulated ARM kernels;
clear errors (exit codes 2 / 4) and no half-written folder on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
tvm = pytest.importorskip("tvm")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from bvit_edge.errors import ConfigError, ToolchainError, UsageError
from bvit_edge.packing import as_words, pack_bits
from bvit_edge.runtime.artifact import read_manifest, run_artifact, topk
from bvit_edge.runtime.compile import compile_model
from bvit_edge.targets import load_target

K, N, C = 48, 32, 5  # features of a flattened 1x3x4x4 image, hidden, classes


def tiny_classifier(domain_version: int = 1) -> tuple[onnx.ModelProto, dict]:
    """image [1, 3, 4, 4] -> Flatten -> BinaryLinear(48->32, signed) -> Gemm(32->5) -> logits."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, K)) < 0
    ws = (rng.random(N) + 0.5).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    head = rng.standard_normal((C, N)).astype(np.float32)
    inits = [
        nh.from_array(np.zeros(K, np.float32), "shift"),
        nh.from_array(np.array(np.float32(0.25)), "alpha"),
        nh.from_array(pack_bits(w), "wb"),
        nh.from_array(ws, "ws"),
        nh.from_array(bias, "b"),
        nh.from_array(head, "head"),
    ]
    nodes = [
        oh.make_node("Flatten", ["image"], ["flat"], axis=1),
        oh.make_node(
            "BinaryLinear",
            ["flat", "shift", "alpha", "wb", "ws", "b"],
            ["h"],
            domain="bvit_edge",
            mode="signed",
            in_features=K,
        ),
        oh.make_node("Gemm", ["h", "head"], ["logits"], transB=1),
    ]
    g = oh.make_graph(
        nodes,
        "tiny",
        [oh.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", C])],
        inits,
    )
    model = oh.make_model(
        g, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("bvit_edge", domain_version)], ir_version=10
    )
    meta = {
        "bvit_edge.mean": json.dumps([0.5, 0.4, 0.3]),
        "bvit_edge.std": json.dumps([0.2, 0.25, 0.3]),
        "bvit_edge.classes": json.dumps([f"c{i}" for i in range(C)]),
        "bvit_edge.image_size": json.dumps([4, 4]),
    }
    for key, val in meta.items():
        model.metadata_props.add(key=key, value=val)
    params = {"w_pm": np.where(w, -1, 1), "ws": ws, "bias": bias, "head": head, "alpha": np.float32(0.25)}
    return model, params


def reference_logits(images: np.ndarray, p: dict) -> np.ndarray:
    mean = np.array([0.5, 0.4, 0.3], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.2, 0.25, 0.3], np.float32).reshape(1, 3, 1, 1)
    x = ((images - mean) / std).reshape(len(images), -1)
    acc = np.where(x < 0, -1, 1).astype(np.int64) @ p["w_pm"].T.astype(np.int64)
    h = acc.astype(np.float32) * (p["alpha"] * p["ws"]) + p["bias"]
    return h @ p["head"].T


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("art")
    model, params = tiny_classifier()
    path = tmp / "tiny.onnx"
    onnx.save(model, str(path))
    return compile_model(path, "host", tmp / "tiny_host"), path, params


def test_host_artifact_runs_and_matches_reference(host_artifact):
    art, _, params = host_artifact
    images = np.random.default_rng(1).random((3, 3, 4, 4)).astype(np.float32)
    logits = run_artifact(art, images)
    ref = reference_logits(images, params)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-4)
    best = topk(logits, k=2, classes=[f"c{i}" for i in range(C)])
    assert [row[0][0] for row in best] == [f"c{i}" for i in ref.argmax(-1)]


def test_manifest_records_target_model_and_metadata(host_artifact):
    art, onnx_path, _ = host_artifact
    m = read_manifest(art)
    import hashlib

    assert m["schema_version"] == 2
    assert m["model"]["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert m["input"]["shape"] == [1, 3, 4, 4]
    assert m["normalization"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    assert m["classes"] == [f"c{i}" for i in range(C)]
    assert m["op_domains"] == {"bvit_edge": 1}
    assert m["target"]["name"] == "host" and m["target"]["family"] in ("x86-avx512", "x86-avx2", "aarch64-neon")
    assert m["tool_versions"]["tvm"] == tvm.__version__
    # plus the marker saying `bvit-edge compile` wrote the folder (bvit_edge.output_folder)
    assert sorted(os.listdir(art)) == [".bvit-edge-output.json", "lib.so", "manifest.json", "params.npz"]
    assert m["params"]["storage"] == "file" and m["params"]["file"] == "params.npz"
    assert m["params"]["bytes"] == (art / "params.npz").stat().st_size
    assert m["params"]["sha256"] == hashlib.sha256((art / "params.npz").read_bytes()).hexdigest()


def test_running_an_artifact_needs_neither_torch_nor_onnx(host_artifact):
    """A board has only the TVM runtime and numpy: with torch/onnx/onnxruntime made unimportable, it runs.

    (tvm_ffi itself imports torch when it is installed, so the check blocks the imports instead of
    looking at sys.modules.)
    """
    art, _, _ = host_artifact
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "onnxruntime"):
                    raise ImportError("blocked: " + name)
                return None
        sys.meta_path.insert(0, Block())
        import numpy as np
        from bvit_edge.runtime.artifact import run_artifact
        y = run_artifact({str(art)!r}, np.zeros((1, 3, 4, 4), np.float32))
        assert y.shape == (1, {C}), y.shape
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


@pytest.mark.parametrize("target,machine", [("rpi4-aarch64", 183), ("rpi3-armv7", 40)])
def test_arm_artifacts_build(tmp_path, target, machine):
    spec = load_target(target)
    if shutil.which(spec.cross_compiler) is None:
        pytest.skip(f"{spec.cross_compiler} not installed")
    model, _ = tiny_classifier()
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    art = compile_model(path, target, tmp_path / target)
    assert _elf_machine(art / "lib.so") == machine
    assert read_manifest(art)["word_bits"] == spec.word_bits


HARNESS_C = r"""
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlpack/dlpack.h>
/* Calls one exported TIR function of a .so (TVM FFI packed ABI) without the TVM runtime:
   harness lib.so func in.bin out.bin spec... ; spec = dtype_code:bits:d0,d1 ; the last spec is the output. */
typedef struct { int32_t type_index; uint32_t pad; union { int64_t v_int64; void *v_ptr; }; } Any;
typedef struct { void *sync_handle; int32_t num_task; } Env;
typedef int (*Lambda)(int, Env *, void *);
static int launch(Lambda f, void *cdata, int num_task) { Env env = {0, 1}; (void)num_task; return f(0, &env, cdata); }
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int n) {
    fprintf(stderr, "error %s:", kind);
    for (int i = 0; i < n; i++) fprintf(stderr, " %s", parts[i]);
    fprintf(stderr, "\n");
}
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    void **pl = (void **)dlsym(h, "__TVMBackendParallelLaunch");
    if (pl) *pl = (void *)launch;
    char sym[256];
    snprintf(sym, sizeof sym, "__tvm_ffi_%s", argv[2]);
    int (*fn)(void *, const Any *, int32_t, Any *) = (int (*)(void *, const Any *, int32_t, Any *))dlsym(h, sym);
    if (!fn) { fprintf(stderr, "no %s\n", sym); return 2; }
    FILE *in = fopen(argv[3], "rb");
    int nt = argc - 5;
    DLTensor *t = calloc(nt, sizeof(DLTensor));
    Any *args = calloc(nt, sizeof(Any));
    for (int i = 0; i < nt; i++) {
        char *s = argv[5 + i];
        int code = atoi(strtok(s, ":")), bits = atoi(strtok(NULL, ":"));
        char *dims = strtok(NULL, ":");
        int64_t *shape = calloc(8, sizeof(int64_t));
        int nd = 0;
        size_t n = 1;
        for (char *d = strtok(dims, ","); d; d = strtok(NULL, ",")) { shape[nd] = atoll(d); n *= shape[nd++]; }
        size_t bytes = n * bits / 8;
        void *data = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (i < nt - 1 && fread(data, 1, bytes, in) != bytes) { fprintf(stderr, "short input\n"); return 2; }
        t[i].data = data; t[i].device.device_type = kDLCPU; t[i].ndim = nd;
        t[i].dtype.code = code; t[i].dtype.bits = bits; t[i].dtype.lanes = 1; t[i].shape = shape;
        args[i].type_index = 7; args[i].v_ptr = &t[i];
    }
    Any res; memset(&res, 0, sizeof res);
    int rc = fn(NULL, args, nt, &res);
    if (rc) { fprintf(stderr, "call failed %d\n", rc); return 3; }
    FILE *out = fopen(argv[4], "wb");
    size_t n = 1;
    for (int d = 0; d < t[nt - 1].ndim; d++) n *= t[nt - 1].shape[d];
    fwrite(t[nt - 1].data, 1, n * t[nt - 1].dtype.bits / 8, out);
    fclose(out);
    return 0;
}
"""


@pytest.mark.parametrize(
    "target,sysroot", [("rpi4-aarch64", "/usr/aarch64-linux-gnu"), ("rpi3-armv7", "/usr/arm-linux-gnueabihf")]
)
def test_arm_binary_linear_kernel_runs_exactly_under_qemu(tmp_path, target, sysroot):
    """The ARM popcount kernel, cross-built, run by a C harness under qemu user mode: exact accumulators."""
    from bvit_edge.runtime.kernels import binary_linear_kernel
    from bvit_edge.runtime.schedules import family_params, schedule_binary_linear

    spec = load_target(target)
    if not (
        shutil.which(spec.cross_compiler)
        and spec.emulated_by
        and shutil.which(spec.emulated_by)
        and Path(sysroot).is_dir()
    ):
        pytest.skip("cross compiler, qemu user mode or the target's sysroot is missing")
    fam = family_params(spec.family)
    m, k, n = 6, 100, 32
    func = schedule_binary_linear(binary_linear_kernel(m, k, n, "signed", fam.word_bits), fam)
    lib = tvm.tirx.build(tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")}), target=spec.tvm())
    so = tmp_path / "kernel.so"
    lib.export_library(str(so), cc=spec.cross_compiler)
    src = tmp_path / "harness.c"
    src.write_text(HARNESS_C)
    include = Path(__import__("tvm_ffi").__file__).parent / "include"
    exe = tmp_path / "harness"
    subprocess.run(
        [spec.cross_compiler, "-O1", f"-I{include}", "-o", str(exe), str(src), "-ldl", "-rdynamic"], check=True
    )
    rng = np.random.default_rng(7)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)) < 0
    kw = -(-k // fam.word_bits)
    words = np.ascontiguousarray(as_words(pack_bits(w), fam.word_bits)[:, :kw].T)
    ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)
    (tmp_path / "in.bin").write_bytes(
        b"".join(a.tobytes() for a in (x, np.zeros(k, np.float32), np.ones(1, np.float32), words, ones, zeros))
    )
    specs = [
        f"2:32:{m},{k}",
        f"2:32:{k}",
        "2:32:1",
        f"1:{fam.word_bits}:{kw},{n}",
        f"2:32:{n}",
        f"2:32:{n}",
        f"2:32:{m},{n}",
    ]
    r = subprocess.run(
        [
            spec.emulated_by,
            "-L",
            sysroot,
            str(exe),
            str(so),
            "kernel",
            str(tmp_path / "in.bin"),
            str(tmp_path / "out.bin"),
            *specs,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    y = np.fromfile(tmp_path / "out.bin", np.float32).reshape(m, n)
    ref = np.where(x < 0, -1, 1).astype(np.int64) @ np.where(w, -1, 1).T.astype(np.int64)
    np.testing.assert_array_equal(y.astype(np.int64), ref)


# ------------------------------------------------------------------------------------------- errors
def _no_leftovers(folder: Path) -> bool:
    return not any(p.name.startswith(".") and p.name.endswith(".tmp") for p in folder.iterdir())


def test_unknown_target_is_a_config_error(tmp_path):
    model, _ = tiny_classifier()
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ConfigError) as err:
        compile_model(tmp_path / "m.onnx", "no-such-board", tmp_path / "out")
    assert err.value.exit_code == 2
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


def test_missing_cross_compiler_is_a_toolchain_error_naming_the_package(tmp_path):
    model, _ = tiny_classifier()
    onnx.save(model, str(tmp_path / "m.onnx"))
    spec = load_target("rpi4-aarch64").to_dict()
    spec.update(name="fake-board", cross_compiler="aarch64-nowhere-gcc", apt_package="gcc-aarch64-nowhere")
    spec.pop("source", None)
    with pytest.raises(ToolchainError) as err:
        compile_model(tmp_path / "m.onnx", spec, tmp_path / "out")
    assert err.value.exit_code == 4
    assert "gcc-aarch64-nowhere" in str(err.value)
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


def test_unsupported_op_domain_version_is_refused(tmp_path):
    model, _ = tiny_classifier(domain_version=2)
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ConfigError) as err:
        compile_model(tmp_path / "m.onnx", "host", tmp_path / "out")
    assert err.value.exit_code == 2 and "version 2" in str(err.value)
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


def test_unknown_domain_and_unknown_bvit_op_are_refused(tmp_path):
    model, _ = tiny_classifier()
    model.graph.node[0].domain = "com.example"
    onnx.save(model, str(tmp_path / "a.onnx"))
    with pytest.raises(ConfigError, match=r"com\.example"):
        compile_model(tmp_path / "a.onnx", "host", tmp_path / "out")
    model, _ = tiny_classifier()
    model.graph.node[1].op_type = "BinaryConv"
    onnx.save(model, str(tmp_path / "b.onnx"))
    with pytest.raises(ConfigError, match="BinaryConv"):
        compile_model(tmp_path / "b.onnx", "host", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_compile_keeps_the_previous_artifact(tmp_path, host_artifact):
    art, _, _ = host_artifact
    out = tmp_path / "keep"
    shutil.copytree(art, out)
    before = (out / "manifest.json").read_text()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(UsageError):
        compile_model(bad, "host", out)
    assert (out / "manifest.json").read_text() == before and _no_leftovers(tmp_path)


def test_not_an_artifact_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        run_artifact(tmp_path, np.zeros((1, 3, 4, 4), np.float32))


def test_tuning_a_board_target_without_a_board_is_refused_clearly(tmp_path):
    model, _ = tiny_classifier()
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ConfigError, match="--rpc HOST:PORT"):
        compile_model(tmp_path / "m.onnx", "rpi4-aarch64", tmp_path / "out", tune=4)
    with pytest.raises(ConfigError, match="--tune -1"):
        compile_model(tmp_path / "m.onnx", "host", tmp_path / "out", tune=-1)
    assert not (tmp_path / "out").exists()
