"""The 8-bit layers as integer kernels (bvit_edge.runtime.kernels.int8_*): exact int32 accumulators against
numpy for every dot scheme this CPU runs (odd K, the extremes -128 / 127, round half to even), the W8A32
kernel against numpy in float64, the dot instruction chosen for each target found in its assembly, and
models whose Conv / Gemm / MatMul have 8-bit weights compiled and compared with onnxruntime, their
weights int8 in params.npz."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")

from bvit_edge.runtime.kernels.int8_dot import SCHEMES, dot_scheme_for, offset_correction, pack_weights
from bvit_edge.runtime.kernels.int8_linear import int8_linear_kernel
from bvit_edge.runtime.kernels.int8_weight_linear import (
    PatchGeometry,
    int8_weight_linear_kernel,
    pack_weight_panels,
    pad_vector,
)
from bvit_edge.runtime.schedules.int8 import (
    register_tile,
    schedule_int8_linear,
    schedule_int8_weight_linear,
)
from bvit_edge.targets import load_target

HOST = load_target("host")
HOST_LANES = 16 if HOST.family == "x86-avx512" else 8 if HOST.family == "x86-avx2" else 4


def _host_schemes() -> list[str]:
    """The schemes whose instructions this CPU executes (x86: VNNI variants only where it has them)."""
    from tvm.target import codegen

    target = HOST.tvm()
    if HOST.arch != "x86_64":
        return [dot_scheme_for(target).name, "generic"]
    with target:
        has = {f: codegen.llvm_cpu_has_features(f, target) for f in ("avx512vnni", "avxvnni", "avx2")}
    names = ["generic"]
    names += ["avx2_madd"] if has["avx2"] else []
    names += ["vnni256"] if has["avxvnni"] or has["avx512vnni"] else []
    names += ["vnni512"] if has["avx512vnni"] else []
    return names


_BUILT: dict = {}


def _int8_linear(m: int, k: int, n: int, scheme: str, target=None):
    key = ("lin", m, k, n, scheme, str(target))
    if key not in _BUILT:
        sch = SCHEMES[scheme]
        nb = 2 if n > 16 else 1
        func = schedule_int8_linear(int8_linear_kernel(m, k, n, sch, nb), sch, nb, 8)
        mod = tvm.IRModule({"k": func.with_attr("global_symbol", "k")})
        _BUILT[key] = (tvm.compile(mod, target=(target or HOST.tvm())), nb)
    return _BUILT[key]


def _run_int8_linear(x, a_scale, w, w_scale, bias, scheme):
    m, k = x.shape
    n = w.shape[0]
    ex, nb = _int8_linear(m, k, n, scheme)
    sch = SCHEMES[scheme]
    packed = pack_weights(w, sch, nb)
    corr = offset_correction(w, sch, packed.shape[0] * sch.lanes)
    args = [
        tvm.runtime.tensor(a)
        for a in (x, np.array([a_scale], np.float32), packed, w_scale, bias, corr, np.zeros((m, n), np.float32))
    ]
    ex.mod["k"](*args)
    return args[-1].numpy()


SHAPES = [(1, 1, 1), (1, 384, 1000), (3, 77, 50), (5, 3, 17), (2, 129, 33), (4, 64, 16)]
# integer values beyond the int8 range (saturate), halves (round to even), and the extremes themselves
VALUES = np.array(
    [
        -1e6,
        -300,
        -129,
        -128.5,
        -128,
        -127.5,
        -2.5,
        -1.5,
        -0.5,
        0,
        0.5,
        1.5,
        2.5,
        126.5,
        127,
        127.5,
        128,
        300,
        1e6,
        *range(-140, 141, 7),
    ],
    np.float32,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SHAPES),
    st.sampled_from(_host_schemes()),
    st.integers(0, 2**31),
    st.sampled_from(["random", "extremes", "zeros"]),
)
def test_int8_linear_accumulators_equal_numpy(shape, scheme, seed, kind):
    """With s_a = s_w = 1 and no bias, y is the int32 accumulator itself (exact in f32 below 2^24): it must
    equal numpy's sum of clamp(round_half_even(x)) * W over K, for every scheme the CPU runs."""
    m, k, n = shape
    rng = np.random.default_rng(seed)
    if kind == "extremes":  # the largest |products|: -128 * -128 and 127 * -128 everywhere
        x = rng.choice([-1e3, 1e3, 127.0, -128.0], size=(m, k)).astype(np.float32)
        w = rng.choice(np.array([-128, 127], np.int8), size=(n, k))
    elif kind == "zeros":
        x = np.zeros((m, k), np.float32)
        w = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
    else:
        x = rng.choice(VALUES, size=(m, k)).astype(np.float32)
        w = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
    y = _run_int8_linear(x, 1.0, w, np.ones(n, np.float32), np.zeros(n, np.float32), scheme)
    q = np.clip(np.rint(x.astype(np.float64)), -128, 127).astype(np.int64)
    acc = q @ w.astype(np.int64).T
    assert np.abs(acc).max(initial=0) < 2**24
    np.testing.assert_array_equal(y.astype(np.int64), acc)


@pytest.mark.parametrize("scheme", _host_schemes())
def test_int8_linear_scales_and_bias_match_the_float_reference(scheme):
    """y = (s_a s_w[n]) acc + b, within f32 rounding of sum_k (q_k s_a)(W s_w[n]) + b in float64."""
    rng = np.random.default_rng(3)
    m, k, n = 3, 77, 50
    x = rng.standard_normal((m, k)).astype(np.float32) * 4
    a_scale = np.float32(0.03)
    w = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
    w_scale = (rng.random(n) * 0.02 + 0.001).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = _run_int8_linear(x, a_scale, w, w_scale, bias, scheme)
    q = np.clip(np.rint(x / a_scale), -128, 127)  # the division in f32, as QuantizeLinear
    ref = (q.astype(np.float64) * float(a_scale)) @ (w.astype(np.float64) * w_scale[:, None].astype(np.float64)).T
    np.testing.assert_allclose(y, ref + bias, rtol=1e-5, atol=1e-5)


def _weight_linear(m, k, n, patch=None, registers=32, lanes=16):
    rows, vectors = register_tile(patch.width // patch.patch if patch else m, -(-n // lanes) * lanes, lanes, registers)
    panel = vectors * lanes
    func = schedule_int8_weight_linear(int8_weight_linear_kernel(m, k, n, panel, patch), rows, vectors, lanes)
    ex = tvm.compile(tvm.IRModule({"k": func.with_attr("global_symbol", "k")}), target=HOST.tvm())
    return ex, panel


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 20), (196, 48, 40), (10, 5, 64)])
def test_int8_weight_linear_matches_numpy(m, k, n):
    rng = np.random.default_rng(m * 1000 + k)
    ex, panel = _weight_linear(m, k, n, lanes=HOST_LANES)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
    s = (rng.random(n) * 0.01 + 1e-3).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    pn = -(-n // panel) * panel
    args = [
        tvm.runtime.tensor(a)
        for a in (x, pack_weight_panels(w, panel), pad_vector(s, pn), pad_vector(b, pn), np.zeros((m, n), np.float32))
    ]
    ex.mod["k"](*args)
    wf = (w.astype(np.float32) * s[:, None]).astype(np.float64)  # the same f32 products as DequantizeLinear
    np.testing.assert_allclose(args[-1].numpy(), x.astype(np.float64) @ wf.T + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geo,o", [(PatchGeometry(3, 32, 32, 4), 40), (PatchGeometry(2, 28, 14, 7), 16)])
def test_int8_patch_embedding_reads_the_image_like_a_conv(geo, o):
    rng = np.random.default_rng(0)
    ex, panel = _weight_linear(geo.tokens, geo.k, o, patch=geo, lanes=HOST_LANES)
    img = rng.standard_normal((1, geo.channels, geo.height, geo.width)).astype(np.float32)
    w = rng.integers(-128, 128, size=(o, geo.channels, geo.patch, geo.patch), dtype=np.int8)
    s = (rng.random(o) * 0.01 + 1e-3).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    pn = -(-o // panel) * panel
    hp, wp = geo.height // geo.patch, geo.width // geo.patch
    args = [
        tvm.runtime.tensor(a)
        for a in (
            img,
            pack_weight_panels(w.reshape(o, -1), panel),
            pad_vector(s, pn),
            pad_vector(b, pn),
            np.zeros((hp, wp, o), np.float32),
        )
    ]
    ex.mod["k"](*args)
    p = geo.patch
    patches = img[0].reshape(geo.channels, hp, p, wp, p).transpose(1, 3, 0, 2, 4).reshape(hp, wp, -1)
    wf = (w.astype(np.float32) * s[:, None, None, None]).reshape(o, -1).astype(np.float64)
    np.testing.assert_allclose(args[-1].numpy(), patches.astype(np.float64) @ wf.T + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "rows,cols,lanes,regs,want",
    [
        (196, 384, 16, 32, (7, 3)),
        (198, 1152, 16, 32, (6, 4)),
        (14, 192, 16, 32, (7, 3)),
        (1, 1008, 16, 32, (1, 3)),
        (196, 384, 8, 16, (4, 3)),
    ],
)
def test_register_tile_fits_the_register_file(rows, cols, lanes, regs, want):
    rt, vt = register_tile(rows, cols, lanes, regs)
    assert rows % rt == 0 and cols % (vt * lanes) == 0 and rt * vt <= regs * 3 // 4
    assert (rt, vt) == want


PRESET_SCHEMES = {
    "x86-64-avx512": "vnni512",
    "x86-64-avx2": "avx2_madd",
    "rpi3-armv7": "vmull",
    "rpi4-aarch64": "smull",
    "rpi5-aarch64": "sdot",
}


@pytest.mark.parametrize("preset,scheme", sorted(PRESET_SCHEMES.items()))
def test_each_target_gets_its_dot_instruction_in_the_assembly(preset, scheme):
    """The scheme picked from the preset's CPU (x86: VNNI on Ice Lake, vpmaddwd on Haswell; ARM: sdot on the
    Cortex-A76, smull + sadalp on the A72, vmull.s8 + vpadal.s16 on the 32-bit A53), and its instructions in
    the code LLVM emits for the kernel."""
    from bvit_edge.runtime.schedules import family_params

    spec = load_target(preset)
    fam = family_params(spec.family, spec.tvm())
    assert fam.int8_dot == scheme
    sch = SCHEMES[scheme]
    func = schedule_int8_linear(int8_linear_kernel(1, 96, 64, sch, 2), sch, 2, fam.float_lanes)
    asm = tvm.compile(tvm.IRModule({"k": func.with_attr("global_symbol", "k")}), target=spec.tvm()).mod.inspect_source(
        "asm"
    )
    for mnemonic in sch.instructions:
        assert mnemonic in asm, f"{mnemonic} missing from the {preset} assembly"
    assert "vpmaddubsw" not in asm  # saturating: never used


# ---------------------------------------------------------------------------------------------------------
# whole graphs: ONNX Conv / Gemm / MatMul with 8-bit weights, compiled for the host, against onnxruntime
# ---------------------------------------------------------------------------------------------------------


def _int8_graph_model(path, rng):
    """x[1, 3, 16, 16] -> patch conv (int8 W per channel) -> flatten -> W8A8 Gemm (transB) ->
    W8A32 MatMul (per-tensor scale) -> W8A8 Gemm (transB = 0)."""

    def i8(*s: int) -> np.ndarray:
        return rng.integers(-128, 128, size=s, dtype=np.int8)

    def f32(*s: int) -> np.ndarray:
        return rng.standard_normal(s).astype(np.float32)

    inits = [
        numpy_helper.from_array(i8(8, 3, 4, 4), "wc"),
        numpy_helper.from_array((rng.random(8) * 0.01 + 1e-3).astype(np.float32), "sc"),
        numpy_helper.from_array(f32(8), "bc"),
        numpy_helper.from_array(np.array([16, 8], np.int64), "shape2"),
        numpy_helper.from_array(np.float32(0.05), "sa1"),
        numpy_helper.from_array(np.int8(0), "z8"),
        numpy_helper.from_array(i8(24, 8), "w1"),
        numpy_helper.from_array(np.float32(0.02), "s1"),
        numpy_helper.from_array(f32(24), "b1"),
        numpy_helper.from_array(i8(24, 20), "w2"),
        numpy_helper.from_array(np.float32(0.01), "s2"),
        numpy_helper.from_array(np.float32(0.04), "sa3"),
        numpy_helper.from_array(i8(20, 5), "w3"),
        numpy_helper.from_array((rng.random(5) * 0.02 + 1e-3).astype(np.float32), "s3"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wc", "sc"], ["wcf"], axis=0),
        helper.make_node("Conv", ["x", "wcf", "bc"], ["c"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Reshape", ["c", "shape2"], ["c2"]),  # [1, 8, 4, 4] -> [16, 8] (a plain reshape)
        helper.make_node("QuantizeLinear", ["c2", "sa1", "z8"], ["q1"]),
        helper.make_node("DequantizeLinear", ["q1", "sa1", "z8"], ["d1"]),
        helper.make_node("DequantizeLinear", ["w1", "s1"], ["w1f"], axis=0),
        helper.make_node("Gemm", ["d1", "w1f", "b1"], ["g1"], transB=1),
        helper.make_node("DequantizeLinear", ["w2", "s2"], ["w2f"], axis=1),
        helper.make_node("MatMul", ["g1", "w2f"], ["m2"]),
        helper.make_node("QuantizeLinear", ["m2", "sa3", "z8"], ["q3"]),
        helper.make_node("DequantizeLinear", ["q3", "sa3", "z8"], ["d3"]),
        helper.make_node("DequantizeLinear", ["w3", "s3"], ["w3f"], axis=1),
        helper.make_node("Gemm", ["d3", "w3f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "int8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_int8_graph_compiles_to_the_integer_kernels_and_matches_onnxruntime(tmp_path):
    from bvit_edge.runtime.artifact import run_artifact
    from bvit_edge.runtime.compile import compile_model
    from bvit_edge.runtime.ort import ort_run

    rng = np.random.default_rng(0)
    path = _int8_graph_model(tmp_path / "int8.onnx", rng)
    art = compile_model(path, "host", tmp_path / "art", fast_math=False)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = ort_run(path, x, threads=1)[0]
    got = run_artifact(art, x, normalize=False)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)
    manifest = json.loads((art / "manifest.json").read_text())
    params = np.load(art / "params.npz")
    arrays = [params[n] for n in manifest["params"]["names"]]
    assert [a["dtype"] for a in manifest["params"]["arrays"]] == [str(a.dtype) for a in arrays]
    int8 = sorted(a.size for a in arrays if a.dtype == np.int8)
    # every weight int8 (padded to the kernels' tiles), no float copy of any of them
    assert len(int8) == 4 and int8[0] >= 20 * 5 and sum(int8) < 4 * (8 * 48 + 24 * 8 + 24 * 20 + 20 * 5)
    assert not any(a.dtype == np.float32 and a.size in (8 * 48, 24 * 8, 24 * 20, 20 * 5) for a in arrays)


@pytest.mark.slow
def test_a_gsb_model_keeps_its_8bit_weights_int8_and_matches_onnxruntime(tmp_path):
    """The GSB patch embedding (8-bit weights, float image) and both heads (8-bit weights and activations)
    become the integer kernels; the logits match onnxruntime's."""
    import torch

    from bvit_edge.export import export_onnx
    from bvit_edge.models import create_model
    from bvit_edge.runtime.artifact import run_artifact
    from bvit_edge.runtime.compile import compile_model
    from bvit_edge.runtime.ort import ort_run

    torch.manual_seed(0)
    model = create_model("gsb_test_patch4_16", stage=2).eval()
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16))
    model.freeze()
    path = tmp_path / "gsb.onnx"
    export_onnx(model, path, ops="packed", input_shape=(1, 3, 16, 16))
    art = compile_model(path, "host", tmp_path / "art")
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = run_artifact(art, x, normalize=False)
    want = np.concatenate([ort_run(path, x[i : i + 1], threads=1)[0] for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    lib = (art / "lib.so").read_bytes()
    assert b"bvit_int8_patch_embed" in lib and b"bvit_int8_linear" in lib
    manifest = json.loads((art / "manifest.json").read_text())
    assert "int8" in [a["dtype"] for a in manifest["params"]["arrays"]]
    proto = onnx.load(path)
    int8_inits = sum(int(np.prod(i.dims)) for i in proto.graph.initializer if i.data_type == TensorProto.INT8)
    params = np.load(art / "params.npz")
    int8_params = sum(params[n].size for n in params.files if params[n].dtype == np.int8)
    assert int8_inits <= int8_params < 2 * int8_inits  # the same codes, padded to the kernels' tiles


# ---------------------------------------------------------------------------------------------------------
# the emulated aarch64 board (qemu user mode, TVM RPC): the ARM schemes run and give numpy's integers
# ---------------------------------------------------------------------------------------------------------


def _require_board() -> None:
    import os
    import shutil

    from bvit_edge.targets import board

    for tool in ("qemu-aarch64", "debootstrap", "aarch64-linux-gnu-gcc"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make setup installs it)")
    if not board.status("aarch64").built and os.geteuid() != 0:
        pytest.skip("building the board image runs debootstrap, which needs root (run once as root)")


@pytest.fixture(scope="module")
def board_session():
    from bvit_edge.targets import board, rpc

    _require_board()
    was_running = board.status("aarch64").running
    board.build("aarch64", log=print)
    info = board.start("aarch64")
    try:
        yield rpc.connect("127.0.0.1", info.port, timeout_s=30)
    finally:
        if not was_running:
            board.stop("aarch64")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["rpi4-aarch64", "rpi5-aarch64"])
def test_int8_kernels_on_the_emulated_board_equal_numpy(tmp_path, board_session, preset):
    """smull + sadalp (Pi 4) and sdot (Pi 5) on the board: the int32 accumulators equal numpy's, extremes
    included; the W8A32 patch kernel matches the host's build."""
    from bvit_edge.runtime.schedules import family_params
    from bvit_edge.targets import rpc
    from bvit_edge.targets.toolchain import find_compiler

    spec = load_target(preset)
    fam = family_params(spec.family, spec.tvm())
    sch = SCHEMES[fam.int8_dot]
    m, k, n = 3, 77, 50
    lin = schedule_int8_linear(int8_linear_kernel(m, k, n, sch, 2), sch, 2, fam.float_lanes)
    geo = PatchGeometry(3, 32, 32, 4)
    rows, vectors = register_tile(geo.width // geo.patch, 48, fam.float_lanes, fam.float_registers)
    panel = vectors * fam.float_lanes
    patch = schedule_int8_weight_linear(
        int8_weight_linear_kernel(geo.tokens, geo.k, 48, panel, geo), rows, vectors, fam.float_lanes
    )
    mod = tvm.IRModule(
        {"lin": lin.with_attr("global_symbol", "lin"), "patch": patch.with_attr("global_symbol", "patch")}
    )
    lib = tmp_path / f"int8-{preset}.so"
    tvm.compile(mod, target=spec.tvm()).export_library(str(lib), cc=find_compiler(spec))
    remote = rpc.upload_and_load(board_session, lib)
    dev = board_session.cpu()
    rng = np.random.default_rng(5)
    x = rng.choice(VALUES, size=(m, k)).astype(np.float32)
    x[0] = 1e3  # a row of saturated +127 against extreme weights
    w = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
    w[:3] = -128
    packed = pack_weights(w, sch, 2)
    corr = offset_correction(w, sch, packed.shape[0] * sch.lanes)

    def t(a: np.ndarray):
        return tvm.runtime.tensor(a, dev)

    args = [
        t(a)
        for a in (
            x,
            np.ones(1, np.float32),
            packed,
            np.ones(n, np.float32),
            np.zeros(n, np.float32),
            corr,
            np.zeros((m, n), np.float32),
        )
    ]
    remote["lin"](*args)
    acc = np.clip(np.rint(x.astype(np.float64)), -128, 127).astype(np.int64) @ w.astype(np.int64).T
    np.testing.assert_array_equal(args[-1].numpy().astype(np.int64), acc)

    img = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    wc = rng.integers(-128, 128, size=(48, geo.k), dtype=np.int8)
    s = (rng.random(48) * 0.01 + 1e-3).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    pargs = [
        t(a)
        for a in (
            img,
            pack_weight_panels(wc, panel),
            pad_vector(s, 48),
            pad_vector(b, 48),
            np.zeros((8, 8, 48), np.float32),
        )
    ]
    remote["patch"](*pargs)
    patches = img[0].reshape(3, 8, 4, 8, 4).transpose(1, 3, 0, 2, 4).reshape(8, 8, -1).astype(np.float64)
    want = patches @ (wc.astype(np.float32) * s[:, None]).astype(np.float64).T + b
    np.testing.assert_allclose(pargs[-1].numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_gsb_model_compiled_for_the_pi5_runs_on_the_emulated_board_like_the_host(tmp_path, board_session):
    """The GSB test model compiled for rpi5-aarch64 (sdot heads, NEON patch embedding) over RPC on the
    emulated board: logits equal the host artifact's."""
    import torch

    from bvit_edge.export import export_onnx
    from bvit_edge.models import create_model
    from bvit_edge.runtime.artifact import run_artifact
    from bvit_edge.runtime.compile import compile_model

    torch.manual_seed(1)
    model = create_model("gsb_test_patch4_16", stage=2).eval()
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16))
    model.freeze()
    path = tmp_path / "gsb.onnx"
    export_onnx(model, path, ops="packed", input_shape=(1, 3, 16, 16))
    host = compile_model(path, "host", tmp_path / "host")
    pi5 = compile_model(path, "rpi5-aarch64", tmp_path / "pi5")
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    on_board = run_artifact(pi5, x, session=board_session, normalize=False)
    on_host = run_artifact(host, x, normalize=False)
    np.testing.assert_allclose(on_board, on_host, rtol=1e-5, atol=1e-6)
    assert (on_board.argmax(1) == on_host.argmax(1)).all()
