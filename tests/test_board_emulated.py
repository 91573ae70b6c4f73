"""End to end on the emulated aarch64 board: build it once into the cache (default
~/.cache/bvit-edge/board, reused across runs; $BVIT_EDGE_CACHE moves it), start the TVM RPC server
under qemu, run a tiny TVM function cross-compiled for rpi4-aarch64 over RPC, check the results equal
the host's bit for bit, stop the server. Emulated timings are printed, not judged."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from bvit_edge.targets import board, load_target, rpc
from bvit_edge.targets.toolchain import find_compiler

pytestmark = pytest.mark.slow


def _kernels():
    """An int32 popcount-style kernel and a float kernel (both as in the binary layers)."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def xor_popcount(a: T.handle, b: T.handle, c: T.handle):
        T.func_attr({"global_symbol": "xor_popcount", "tir.noalias": True})
        A = T.match_buffer(a, (8, 4), "uint64")
        B = T.match_buffer(b, (4,), "uint64")
        C = T.match_buffer(c, (8,), "int32")
        for i in range(8):
            C[i] = 0
            for k in range(4):
                C[i] = C[i] + T.Cast("int32", T.popcount(T.bitwise_xor(A[i, k], B[k])))

    @T.prim_func
    def affine(x: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "affine", "tir.noalias": True})
        X = T.match_buffer(x, (64,), "float32")
        Y = T.match_buffer(y, (64,), "float32")
        for i in range(64):
            Y[i] = X[i] * T.float32(0.3) + T.float32(-1.7)

    return tvm.IRModule({"xor_popcount": xor_popcount, "affine": affine})


def _run(mod, dev, a, b, x):
    import tvm

    def t(arr: np.ndarray):
        return tvm.runtime.tensor(arr, dev)

    c, y = t(np.zeros(8, np.int32)), t(np.zeros(64, np.float32))
    mod["xor_popcount"](t(a), t(b), c)
    mod["affine"](t(x), y)
    return c.numpy(), y.numpy()


def _require_board() -> None:
    """Skip unless the emulated board can run here: qemu, debootstrap and the cross compiler installed, and
    the board image built already or buildable (debootstrap needs root)."""
    import os

    for tool in ("qemu-aarch64", "debootstrap", "aarch64-linux-gnu-gcc"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make setup installs it)")
    if not board.status("aarch64").built and os.geteuid() != 0:
        pytest.skip("building the board image runs debootstrap, which needs root (run once as root)")


def test_emulated_board_runs_cross_compiled_code_like_the_host(tmp_path):
    tvm = pytest.importorskip("tvm")
    _require_board()
    spec = load_target("rpi4-aarch64")
    t0 = time.monotonic()
    was_running = board.status("aarch64").running
    board.build("aarch64", log=print)
    t_build = time.monotonic() - t0
    info = board.start("aarch64")
    t_start = time.monotonic() - t0 - t_build
    try:
        assert info.running and info.port
        lib = tmp_path / "kernels-aarch64.so"
        tvm.tirx.build(_kernels(), target=spec.tvm_target).export_library(str(lib), cc=find_compiler(spec))
        assert rpc.elf_arch(lib) == "aarch64"

        sess = rpc.connect("127.0.0.1", info.port, timeout_s=30)
        assert rpc.remote_arch(sess) == "aarch64"
        remote = rpc.upload_and_load(sess, lib)
        rng = np.random.default_rng(0)
        a = rng.integers(0, 2**63, (8, 4), dtype=np.uint64)
        b = rng.integers(0, 2**63, 4, dtype=np.uint64)
        x = rng.standard_normal(64).astype(np.float32)
        c_board, y_board = _run(remote, sess.cpu(), a, b, x)

        # Independent reference for the integer kernel: numpy's popcount of the XOR.
        np.testing.assert_array_equal(c_board, np.bitwise_count(a ^ b[None, :]).sum(1).astype(np.int32))
        # The host's build of the same module (host CPU has FMA like the A72): bit for bit equal.
        host_mod = tvm.tirx.build(_kernels(), target=load_target("host").tvm_target)
        c_host, y_host = _run(host_mod, tvm.cpu(), a, b, x)
        np.testing.assert_array_equal(c_board, c_host)
        np.testing.assert_array_equal(y_board.view(np.uint32), y_host.view(np.uint32))
        np.testing.assert_allclose(y_board, x * np.float32(0.3) - np.float32(1.7), rtol=1e-6, atol=1e-6)

        dev = sess.cpu()
        ev = remote.time_evaluator("affine", dev, number=20, repeat=3)(
            tvm.runtime.tensor(x, dev), tvm.runtime.tensor(np.zeros(64, np.float32), dev)
        )
        print(
            f"\nemulated board: build/check {t_build:.1f} s, server start {t_start:.1f} s, "
            f"remote affine(64) median {ev.median * 1e6:.1f} us (emulated, not a Pi timing)"
        )
        del remote, sess, dev
    finally:
        if not was_running:
            assert board.stop("aarch64") is True
            assert not board.status("aarch64").running


def test_compiled_gsb_model_runs_over_rpc_on_the_emulated_board_like_the_host(tmp_path):
    """The whole pipeline's ARM leg: the frozen GSB demo model exported to ONNX (packed bvit_edge ops), compiled for
    rpi4-aarch64 and for the host, run on the emulated board over RPC: logits equal the host artifact's."""
    pytest.importorskip("tvm")
    import torch

    _require_board()
    from bvit_edge.export import export_onnx
    from bvit_edge.models import create_model
    from bvit_edge.runtime.artifact import run_artifact
    from bvit_edge.runtime.compile import compile_model

    t0 = time.monotonic()
    torch.manual_seed(0)
    model = create_model("gsb_demo_patch4_32", stage=2)  # the demo's model geometry
    x = torch.randn(6, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        model(x)  # lazy initialisation of the binarizer scales
    model.freeze()
    onnx_path = tmp_path / "gsb.onnx"
    export_onnx(model, onnx_path, ops="packed", input_shape=(1, 3, 32, 32))
    host_art = compile_model(onnx_path, "host", tmp_path / "host")
    arm_art = compile_model(onnx_path, "rpi4-aarch64", tmp_path / "arm")
    t_compile = time.monotonic() - t0
    was_running = board.status("aarch64").running
    board.build("aarch64", log=print)
    info = board.start("aarch64")
    try:
        sess = rpc.connect("127.0.0.1", info.port, timeout_s=30)
        xs = x.numpy()
        t1 = time.monotonic()
        on_board = run_artifact(arm_art, xs, session=sess, normalize=False)
        t_board = time.monotonic() - t1
        on_host = run_artifact(host_art, xs, normalize=False)
        with torch.no_grad():
            reference = model(x).numpy()
        np.testing.assert_allclose(on_board, on_host, rtol=1e-5, atol=1e-6)
        assert (on_board.argmax(1) == on_host.argmax(1)).all()
        np.testing.assert_allclose(on_host, reference, rtol=1e-4, atol=1e-5)
        print(
            f"\ncompiled GSB model over RPC: export+compile {t_compile:.1f} s, 6 images on the emulated board "
            f"{t_board:.1f} s (emulated, not a Pi timing)"
        )
        del sess
    finally:
        if not was_running:
            board.stop("aarch64")


def test_tuning_over_rpc_measures_candidates_on_the_emulated_board(tmp_path):
    """`compile --tune N --rpc` for a board: each candidate cross-compiled, uploaded, run and timed on the
    (emulated) aarch64 board; the outputs of all candidates agree (checked inside tune_kernels) and the
    record holds a candidate's knobs. Emulated timings are only checked to be positive."""
    pytest.importorskip("tvm")
    _require_board()
    from bvit_edge.runtime import tuning
    from bvit_edge.runtime.schedules import family_params

    spec = load_target("rpi4-aarch64")
    fam = family_params(spec.family)
    kernels = [
        tuning.KernelSpec("binary_linear", (6, 96, 32), ("signed",), fam.word_bits),
        tuning.KernelSpec(
            "binary_matmul", (1, 1, 5, 70, 16), ("gsb_unsigned", "gsb_signed"), fam.word_bits, (0.7, 0.9)
        ),
    ]
    was_running = board.status("aarch64").running
    board.build("aarch64", log=print)
    info = board.start("aarch64")
    try:
        sess = rpc.connect("127.0.0.1", info.port, timeout_s=30)
        db = tuning.tune_kernels(
            kernels, spec, fam, trials=2, session=sess, compiler=find_compiler(spec), number=2, repeat=2, log=print
        )
        del sess
    finally:
        if not was_running:
            board.stop("aarch64")
    assert set(db.records) == {k.key for k in kernels}
    for k in kernels:
        rec = db.records[k.key]
        assert len(rec["tried"]) == 2 and all(v > 0 for v in rec["tried"].values())
        assert k.n % rec["n_tile"] == 0 and rec["us"] == min(rec["tried"].values())
    path = tmp_path / "pi.json"
    db.save(path)
    assert tuning.TuningDatabase.load(path, spec.family).records == db.records
