"""The TIR popcount kernels: generated assembly per target family, exact integer accumulators.

Accumulators are read out exactly by running the kernels with alpha = w_scale = 1 and bias = 0 (and, for
the plane products, one-hot plane alphas), and compared with two independent references: popcounts of the
bvit_edge.packing words (np.bitwise_count) and a +-1 int64 matmul.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from bvit_edge.packing import as_words, pack_bits
from bvit_edge.runtime.kernels import binary_linear_kernel, binary_matmul_kernel
from bvit_edge.runtime.schedules import family_params, schedule_binary_linear, schedule_binary_matmul
from bvit_edge.targets import load_target


def _build(func, target_name):
    spec = load_target(target_name)
    mod = tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")})
    return tvm.tirx.build(mod, target=spec.tvm())


def _asm(lib):
    out = []
    for mod in [lib, *list(lib.imports)]:
        with contextlib.suppress(Exception):  # a module without LLVM assembly (e.g. the host wrapper)
            out.append(mod.inspect_source("asm"))
    return "\n".join(out)


def _linear(m, k, n, mode, target):
    spec = load_target(target)
    fam = family_params(spec.family)
    return schedule_binary_linear(binary_linear_kernel(m, k, n, mode, fam.word_bits), fam)


@pytest.mark.parametrize(
    "target,needle",
    [("x86-64-avx512", "vpopcntq"), ("x86-64-avx2", "vpshufb"), ("rpi4-aarch64", "cnt\tv"), ("rpi3-armv7", "vcnt.8")],
)
def test_binary_linear_assembly_uses_vector_popcount(target, needle):
    """AVX2 has no vector popcount: its family's vector form is LLVM's vpshufb nibble lookup."""
    asm = _asm(_build(_linear(8, 384, 64, "signed", target), target))
    assert needle in asm, f"{needle!r} missing from the {target} assembly"


@pytest.mark.parametrize(
    "target,needle",
    [("x86-64-avx512", "vpopcntq"), ("x86-64-avx2", "vpshufb"), ("rpi4-aarch64", "cnt\tv"), ("rpi3-armv7", "vcnt.8")],
)
def test_binary_matmul_assembly_uses_vector_popcount(target, needle):
    spec = load_target(target)
    fam = family_params(spec.family)
    func = schedule_binary_matmul(
        binary_matmul_kernel(1, 2, 8, 128, 64, "gsb_unsigned", "gsb_signed", word_bits=fam.word_bits), fam
    )
    assert needle in _asm(_build(func, target))


def _run(lib, *arrays):
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    lib["kernel"](*args)
    return args[-1].numpy()


def _host_has(flag: str) -> bool:
    try:
        return any(flag in line.split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except OSError:
        return False


@pytest.mark.parametrize("target", ["host", "x86-64-avx2"])
@pytest.mark.parametrize("word_bits", [64, 32])
@pytest.mark.parametrize("k", [64, 100, 200, 384])
@pytest.mark.parametrize("mode", ["signed", "unsigned"])
def test_binary_linear_integer_accumulators_exact(mode, k, word_bits, target):
    """Each family's schedule (the host's; AVX2's 8 float lanes, whose bit packing splits a 64-bit word into
    8 x 8) gives the exact +-1 / 0-1 integer dots."""
    if target != "host" and not _host_has("avx2"):
        pytest.skip("this CPU cannot run AVX2 code")
    rng = np.random.default_rng(k + word_bits)
    m, n = 6, 48
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, :5] = 0.0  # sgn(0) = +1 at deployment
    shift = (rng.standard_normal(k) * 0.3).astype(np.float32)
    alpha = np.float32(1.0)
    w = rng.standard_normal((n, k)) < 0  # bit 1 = -1
    packed = pack_bits(w)  # contract layout u8[N, Kp/8]
    kw = -(-k // word_bits)
    words = np.ascontiguousarray(as_words(packed, word_bits)[:, :kw].T)
    fam = family_params(load_target(target).family)
    fam = type(fam)(fam.family, word_bits, fam.n_tile, fam.float_lanes, fam.vector_popcount)
    func = schedule_binary_linear(binary_linear_kernel(m, k, n, mode, word_bits), fam)
    lib = _build(func, target)
    y = _run(
        lib,
        x,
        shift,
        np.array([alpha]),
        words,
        np.ones(n, np.float32),
        np.zeros(n, np.float32),
        np.zeros((m, n), np.float32),
    )
    xp = x + shift
    w_pm = np.where(w, -1, 1).astype(np.int64)
    if mode == "signed":
        a_bits = xp < 0
        ref_int = np.where(a_bits, -1, 1).astype(np.int64) @ w_pm.T
        aw = as_words(pack_bits(a_bits))
        pc = np.bitwise_count(aw[:, None, :] ^ as_words(packed)[None, :, :]).sum(-1).astype(np.int64)
        ref_pc = k - 2 * pc
    else:
        a_bits = xp > alpha / 2
        ref_int = a_bits.astype(np.int64) @ w_pm.T
        aw = as_words(pack_bits(a_bits))
        ref_pc = np.bitwise_count(aw).sum(-1)[:, None].astype(np.int64) - 2 * np.bitwise_count(
            aw[:, None, :] & as_words(packed)[None, :, :]
        ).sum(-1).astype(np.int64)
    np.testing.assert_array_equal(ref_pc, ref_int)  # the two references agree
    np.testing.assert_array_equal(y.astype(np.int64), ref_int)
    assert np.all(y == np.round(y))


@pytest.mark.parametrize(
    "a_mode,b_mode",
    [("signed", "signed"), ("unsigned", "signed"), ("gsb_unsigned", "gsb_signed"), ("signed", "gsb_signed")],
)
def test_binary_matmul_plane_dots_exact(a_mode, b_mode):
    """Each plane pair's integer dot, read out with one-hot alphas, equals the int64 plane matmul."""
    rng = np.random.default_rng(3)
    batch, heads, m, k, n = 2, 2, 5, 70, 16
    a = rng.standard_normal((batch, heads, m, k)).astype(np.float32)
    if a_mode != "signed":
        a = np.abs(a) * 0.1
    b = rng.standard_normal((batch, heads, k, n)).astype(np.float32)
    pa_n, pb_n = (3 if a_mode.startswith("gsb") else 1), (3 if b_mode.startswith("gsb") else 1)
    func = schedule_binary_matmul(
        binary_matmul_kernel(batch, heads, m, k, n, a_mode, b_mode), family_params("x86-avx512")
    )
    lib = _build(func, "host")
    a1 = np.float32(0.08)
    # independent planes, max/min per sample (axes 1..3)
    if a_mode == "signed":
        pa = [np.where(a < 0, -1, 1)]
    else:
        mx = a.max(axis=(1, 2, 3), keepdims=True)
        pa = [(a > a1 * np.float32(0.5)), (a > np.float32(0.7) * mx), (a > np.float32(0.9) * mx)][:pa_n]
    s = np.where(b < 0, -1, 1)
    bmx, bmn = b.max(axis=(1, 2, 3), keepdims=True), b.min(axis=(1, 2, 3), keepdims=True)
    pb = [s] + [s * ((b > np.float32(r) * bmx) | (b < np.float32(r) * bmn)) for r in (0.7, 0.9)]
    for i in range(pa_n):
        for j in range(pb_n):
            aal = np.zeros(pa_n, np.float32)
            bal = np.zeros(pb_n, np.float32)
            aal[i], bal[j] = 1.0, 1.0
            if a_mode != "signed" and i == 0:
                aal_run = aal.copy()
                aal_run[0] = a1  # the threshold a1/2 uses alpha 1; its product is scaled back below
                y = _run(lib, a, b, aal_run, bal, np.zeros((batch, heads, m, n), np.float32)) / a1
                y = np.round(y)
            else:
                y = _run(lib, a, b, aal, bal, np.zeros((batch, heads, m, n), np.float32))
            ref = np.matmul(pa[i].astype(np.int64), pb[j].astype(np.int64))
            np.testing.assert_array_equal(y.astype(np.int64), ref, err_msg=f"plane pair {i},{j}")
