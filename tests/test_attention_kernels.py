"""The row-wise A·V kernel (bvit_edge.runtime.kernels.binary_matmul_rows): exact integer accumulators, every
target family's configuration, ARM assembly, the emulated aarch64 board.

The kernel's integer dots are read out exactly: with b_alpha one-hot (b_alpha[j] = 1) and a_alpha =
(a1, 0, 0) the output is a1 * dot_0j (a1 = 2^-10, a power of two: exact); with a_alpha = (a1, 1, 0) it is
a1 * dot_0j + dot_1j, exact in float32 (|dot| <= K < 2^8, so 19 significant bits), and likewise for plane 3.
(a_alpha[0] also sets P1's threshold a1 / 2, so it stays a1 in every run; the other scales only weight.)
The reference is the contract's numpy reference, bvit_edge.export.ops.binary_matmul.binary_matmul_accumulators
(popcounts of packed uint64 words), on inputs that make the planes dense, sparse, all zero or all one, with
K odd, below, at and across word boundaries.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tvm = pytest.importorskip("tvm")

from bvit_edge.export.ops.binary_matmul import binary_matmul_accumulators
from bvit_edge.runtime.kernels.binary_matmul_rows import binary_matmul_rows_kernel
from bvit_edge.targets import load_target

A1 = np.float32(2.0**-10)
RATIOS = (0.7, 0.9)
#: (word bits, f32 lanes): x86-avx512 and x86-avx2 (32-bit words), aarch64-neon, armv7-neon, and 64-bit
#: words with 16 / 8 lanes
CONFIGS = [(32, 16), (32, 8), (64, 4), (32, 4), (64, 16), (64, 8)]
A_REGIMES = ("random", "dense", "sparse", "zeros", "ones", "negative")
V_REGIMES = ("random", "dense_masks", "zeros", "tiny")


@functools.cache
def _kernel(shape: tuple[int, ...], a_mode: str, b_mode: str, word_bits: int, lanes: int, target: str = "host"):
    func = binary_matmul_rows_kernel(*shape, a_mode, b_mode, RATIOS, word_bits, lanes)
    mod = tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")})
    return tvm.tirx.build(mod, target=load_target(target).tvm())


def _a_values(regime: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A' whose planes are: mixed (random), all one (dense, ones), rare (sparse), empty (zeros, negative)."""
    if regime == "random":
        return (np.abs(rng.standard_normal(shape)) * 2e-3).astype(np.float32)
    if regime == "dense":
        return rng.uniform(0.95, 1.0, shape).astype(np.float32)
    if regime == "sparse":
        a = np.zeros(shape, np.float32)
        hit = rng.random(shape) < 0.02
        a[hit] = rng.uniform(0.01, 1.0, int(hit.sum())).astype(np.float32)
        return a
    if regime == "ones":
        return np.ones(shape, np.float32)
    if regime == "negative":
        return -np.abs(rng.standard_normal(shape)).astype(np.float32)
    return np.zeros(shape, np.float32)


def _v_values(regime: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if regime == "random":
        return rng.standard_normal(shape).astype(np.float32)
    if regime == "dense_masks":  # |V'| within 5 % of the max: both masks (nearly) full, signs mixed
        return (rng.choice([-1.0, 1.0], shape) * rng.uniform(0.95, 1.0, shape)).astype(np.float32)
    if regime == "tiny":
        return (rng.standard_normal(shape) * 1e-30).astype(np.float32)
    return np.zeros(shape, np.float32)


def _run(lib, a, v, a_alpha, b_alpha, out_shape) -> np.ndarray:
    args = [tvm.runtime.tensor(x) for x in (a, v, a_alpha, b_alpha, np.zeros(out_shape, np.float32))]
    lib["kernel"](*args)
    return args[-1].numpy()


def kernel_dots(run, pa: int, qb: int, out_shape) -> list[list[np.ndarray]]:
    """The kernel's integer dots [i][j] read out with the scales of the module docstring; ``run(alpha, beta)``
    calls the kernel."""
    dots: list[list[np.ndarray]] = [[None] * qb for _ in range(pa)]  # type: ignore[list-item]
    for j in range(qb):
        beta = np.zeros(qb, np.float32)
        beta[j] = 1.0
        alpha = np.zeros(pa, np.float32)
        alpha[0] = A1
        y0 = run(alpha, beta).astype(np.float64)
        dots[0][j] = np.round(y0 / float(A1)).astype(np.int64)
        assert np.array_equal(dots[0][j] * float(A1), y0), "plane-1 product is not an exact integer multiple"
        for i in range(1, pa):
            al = alpha.copy()
            al[i] = 1.0
            yi = run(al, beta).astype(np.float64)
            rest = yi - y0
            dots[i][j] = np.round(rest).astype(np.int64)
            assert np.array_equal(dots[i][j].astype(np.float64), rest), f"plane {i + 1} product not an integer"
    return dots


def _reference(a, v, pa: int, qb: int, a_mode: str, b_mode: str) -> list[list[np.ndarray]]:
    alpha = np.zeros(pa, np.float32)
    alpha[0] = A1
    return binary_matmul_accumulators(
        a,
        v,
        np.zeros(1, np.float32),
        alpha,
        np.zeros(1, np.float32),
        np.ones(qb, np.float32),
        a_mode=a_mode,
        b_mode=b_mode,
        gsb_ratios=RATIOS,
    )


def _check(lib, a, v, a_mode: str, b_mode: str) -> None:
    pa = 3 if a_mode == "gsb_unsigned" else 1
    qb = 3 if b_mode == "gsb_signed" else 1
    out_shape = (*a.shape[:-1], v.shape[-1])
    got = kernel_dots(lambda al, be: _run(lib, a, v, al, be, out_shape), pa, qb, out_shape)
    ref = _reference(a, v, pa, qb, a_mode, b_mode)
    for i in range(pa):
        for j in range(qb):
            np.testing.assert_array_equal(got[i][j], ref[i][j], err_msg=f"plane pair ({i + 1}, {j + 1})")


# K: odd, one bit, below / at / across word boundaries (32- and 64-bit words), DeiT's 198 tokens
SHAPES = [
    (2, 2, 3, 1, 5),
    (1, 1, 2, 33, 1),
    (1, 2, 4, 63, 16),
    (2, 1, 3, 65, 8),
    (1, 1, 5, 130, 64),
    (1, 2, 3, 198, 64),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"w{c[0]}_l{c[1]}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"k{s[3]}_n{s[4]}")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), a_regime=st.sampled_from(A_REGIMES), v_regime=st.sampled_from(V_REGIMES))
def test_rows_kernel_gsb_plane_dots_equal_numpy(config, shape, seed, a_regime, v_regime):
    """gsb_unsigned x gsb_signed (GSB's A·V): all 9 plane-pair dots equal the contract's numpy popcounts,
    with every target family's word size and vector width, for dense, sparse, all-zero and all-one planes."""
    rng = np.random.default_rng(seed)
    b, h, m, k, n = shape
    a = _a_values(a_regime, (b, h, m, k), rng)
    v = _v_values(v_regime, (b, h, k, n), rng)
    _check(_kernel(shape, "gsb_unsigned", "gsb_signed", *config), a, v, "gsb_unsigned", "gsb_signed")


@pytest.mark.parametrize(
    "a_mode,b_mode",
    [
        ("signed", "signed"),
        ("signed", "gsb_signed"),
        ("unsigned", "signed"),
        ("unsigned", "gsb_signed"),
        ("gsb_unsigned", "signed"),
    ],
)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), a_regime=st.sampled_from(A_REGIMES), v_regime=st.sampled_from(V_REGIMES))
def test_rows_kernel_other_modes_plane_dots_equal_numpy(a_mode, b_mode, seed, a_regime, v_regime):
    """Q·Kᵀ (signed x signed: K - 2 popcount(a XOR s), no word skipped) and the other mode pairs."""
    rng = np.random.default_rng(seed)
    shape = (2, 2, 3, 97, 24)
    b, h, m, k, n = shape
    a = _a_values(a_regime, (b, h, m, k), rng)
    v = _v_values(v_regime, (b, h, k, n), rng)
    _check(_kernel(shape, a_mode, b_mode, 64, 16), a, v, a_mode, b_mode)


@pytest.mark.parametrize("a_mode,b_mode", [("gsb_unsigned", "gsb_signed"), ("signed", "signed")])
def test_rows_kernel_wide_n_in_chunks(a_mode, b_mode):
    """N above one vector loop (N = 198 tokens: six chunks of 33 columns, as in Q·Kᵀ) gives the same dots."""
    rng = np.random.default_rng(5)
    shape = (1, 2, 4, 64, 198)
    a = _a_values("random", shape[:4], rng) - (np.float32(1e-3) if a_mode == "signed" else np.float32(0))
    v = _v_values("random", (1, 2, 64, 198), rng)
    _check(_kernel(shape, a_mode, b_mode, 64, 16), a, v, a_mode, b_mode)


def test_rows_kernel_refuses_unknown_modes():
    from bvit_edge.contract import ContractError

    with pytest.raises(ContractError, match="a_mode"):
        binary_matmul_rows_kernel(1, 1, 2, 8, 4, "ternary", "signed")


def _asm(lib) -> str:
    out = []
    for mod in [lib, *list(lib.imports)]:
        with contextlib.suppress(Exception):  # a module without LLVM assembly (e.g. the host wrapper)
            out.append(mod.inspect_source("asm"))
    return "\n".join(out)


@pytest.mark.parametrize(
    "target,needles",
    [
        ("rpi4-aarch64", ("cnt\tv",)),
        ("rpi5-aarch64", ("cnt\tv",)),
        ("rpi3-armv7", ("vcnt.8",)),
        ("x86-64-avx512", ("vpopcntd",)),
    ],
)
def test_rows_kernel_compiles_for_the_boards_with_vector_popcounts(target, needles):
    """The kernel as `compile` builds it for each board (its family's word size and vector width): the
    assembly holds the vector popcount (NEON cnt / vcnt, AVX-512 vpopcntd on 32-bit words)."""
    from bvit_edge.runtime.schedules import family_params

    fam = family_params(load_target(target).family)
    for shape, modes in (
        ((1, 6, 198, 198, 64), ("gsb_unsigned", "gsb_signed")),
        ((1, 6, 198, 64, 198), ("signed",) * 2),
    ):
        asm = _asm(_kernel(shape, *modes, fam.row_word_bits, fam.float_lanes, target))
        for needle in needles:
            assert needle in asm, f"{needle!r} missing from the {target} assembly of {modes}"


@pytest.mark.slow
def test_rows_kernel_plane_dots_on_the_emulated_aarch64_board(tmp_path):
    """Cross-compiled for rpi4-aarch64, run over RPC on the emulated board (qemu): the 9 plane-pair dots
    equal numpy's, for dense, sparse, all-zero and all-one planes and K = 198."""
    import shutil

    from bvit_edge.runtime.schedules import family_params
    from bvit_edge.targets import board, rpc
    from bvit_edge.targets.toolchain import find_compiler

    for tool in ("qemu-aarch64", "aarch64-linux-gnu-gcc"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make setup installs it)")
    if not board.status("aarch64").built:
        pytest.skip("the emulated aarch64 board is not built (tests/test_board_emulated.py builds it)")
    spec = load_target("rpi4-aarch64")
    fam = family_params(spec.family)
    shape = (1, 2, 4, 198, 64)
    lib = _kernel(shape, "gsb_unsigned", "gsb_signed", fam.row_word_bits, fam.float_lanes, "rpi4-aarch64")
    path = tmp_path / "rows-aarch64.so"
    lib.export_library(str(path), cc=find_compiler(spec))
    was_running = board.status("aarch64").running
    info = board.start("aarch64")
    try:
        sess = rpc.connect("127.0.0.1", info.port, timeout_s=30)
        remote = rpc.upload_and_load(sess, path)
        dev = sess.cpu()

        def run(a, v, al, be, remote=remote, dev=dev):
            args = [tvm.runtime.tensor(x, dev) for x in (a, v, al, be, np.zeros((*shape[:3], 64), np.float32))]
            remote["kernel"](*args)
            return args[-1].numpy()

        rng = np.random.default_rng(11)
        for a_regime, v_regime in (
            ("random", "random"),
            ("dense", "dense_masks"),
            ("sparse", "random"),
            ("zeros", "zeros"),
            ("ones", "dense_masks"),
        ):
            a = _a_values(a_regime, shape[:4], rng)
            v = _v_values(v_regime, (1, 2, 198, 64), rng)
            got = kernel_dots(lambda al, be, a=a, v=v: run(a, v, al, be), 3, 3, None)
            ref = _reference(a, v, 3, 3, "gsb_unsigned", "gsb_signed")
            for i in range(3):
                for j in range(3):
                    np.testing.assert_array_equal(got[i][j], ref[i][j], err_msg=f"{a_regime}/{v_regime} ({i}, {j})")
        del remote, sess, dev
    finally:
        if not was_running:
            board.stop("aarch64")


@pytest.mark.slow
def test_gsb_model_with_every_parameter_nonzero_compiled_matches_onnxruntime(tmp_path):
    """Whole model: a GSB student of the demo geometry with random non-zero frozen weights (so its attention
    bias B is not zero and A' = softmax + B reaches the row-wise kernel), exported with packed bvit_edge
    ops, run by onnxruntime (the custom-op reference) and compiled for the host, on 64 digits val images:
    logits within 1e-5 of the logit scale and the same top-1, except where upstream float rounding flips a
    binarized bit (at most 2 images, by at most 2 % of the scale)."""
    torch = pytest.importorskip("torch")
    from bvit_edge.bench_models import random_frozen_student
    from bvit_edge.export.onnx_export import export_onnx
    from bvit_edge.pipeline import val_inputs
    from bvit_edge.runtime.artifact import run_artifact
    from bvit_edge.runtime.compile import compile_model
    from bvit_edge.runtime.ort import ort_session, run_session

    torch.set_num_threads(1)
    model = random_frozen_student("gsb_demo_patch4_32", seed=3, num_classes=10).eval()
    x, _ = val_inputs(
        {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "data": {"name": "digits"}}, limit=64
    )
    path = tmp_path / "gsb_demo_nonzero.onnx"
    export_onnx(model, path, ops="packed", input_shape=(1, 3, 32, 32))
    ref = run_session(ort_session(path, threads=1), x)[0]
    y = run_artifact(compile_model(path, "host", tmp_path / "art"), x, normalize=False)
    assert y.shape == ref.shape == (64, 10)
    scale = np.abs(ref).max()
    per_image = np.abs(y - ref).max(1) / scale
    assert (per_image > 1e-5).sum() <= 2 and per_image.max() <= 2e-2, np.sort(per_image)[-5:]
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 62 / 64
