"""The torch.ops.bvit deployment ops against numpy references written from the op contract (docs/ops/):
integer accumulators exact (a ±1 int64 matmul), float outputs in the contract's order, fake shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bvit_edge import packing
from bvit_edge.quant import deploy
from bvit_edge.quant.deploy import binary_linear_accumulator, bwn_pack

torch.set_num_threads(1)
RNG = np.random.default_rng(0)


def _bits_to_pm1(w_bits: np.ndarray, k: int) -> np.ndarray:
    """Packed signed bits -> int64 ±1 matrix (bit 1 = -1), via the numpy packing module."""
    return 1 - 2 * packing.unpack_bits(w_bits, k).astype(np.int64)


@pytest.mark.parametrize("k", [5, 64, 70, 200])
@pytest.mark.parametrize("mode", ["signed", "unsigned"])
def test_binary_linear_accumulator_is_the_exact_integer_dot(k: int, mode: str) -> None:
    n = 7
    w = torch.from_numpy(RNG.standard_normal((n, k)).astype(np.float32))
    x = torch.from_numpy(RNG.standard_normal((2, 3, k)).astype(np.float32))
    shift = torch.from_numpy(RNG.standard_normal(k).astype(np.float32) * 0.1)
    alpha = torch.tensor(0.9)
    w_bits, w_scale = bwn_pack(w)
    assert w_bits.shape == (n, packing.padded_length(k) // 8) and w_bits.dtype == torch.uint8

    xs = (x + shift).numpy()
    a = np.where(xs < 0, -1, 1) if mode == "signed" else (xs > 0.45).astype(np.int64)
    wpm = np.where(w.numpy() - w.double().numpy().mean() < 0, -1, 1)  # sign bits of the centred weight
    np.testing.assert_array_equal(_bits_to_pm1(w_bits.numpy(), k), wpm)
    acc_ref = a.astype(np.int64) @ wpm.T
    acc = binary_linear_accumulator(x, shift, alpha, w_bits, mode, k)
    np.testing.assert_array_equal(acc.numpy().astype(np.int64), acc_ref)

    bias = torch.from_numpy(RNG.standard_normal(n).astype(np.float32))
    y = torch.ops.bvit.binary_linear(x, shift, alpha, w_bits, w_scale, bias, mode, k)
    s = (np.float32(0.9) * w_scale.numpy()).astype(np.float32)
    y_ref = (acc_ref.astype(np.float32) * s).astype(np.float32) + bias.numpy()
    np.testing.assert_array_equal(y.numpy(), y_ref)  # same order of f32 operations: bit-exact
    y0 = torch.ops.bvit.binary_linear(x, shift, alpha, w_bits, w_scale, None, mode, k)
    np.testing.assert_array_equal(y0.numpy(), (acc_ref.astype(np.float32) * s).astype(np.float32))


def test_binary_linear_sign_of_zero_is_plus_one_and_pads_are_ignored() -> None:
    w_bits = torch.from_numpy(packing.pack_bits(np.array([[False, True, False]])))  # +1, -1, +1
    x = torch.tensor([[0.0, 0.0, -1.0]])
    y = torch.ops.bvit.binary_linear(x, torch.zeros(3), torch.tensor(1.0), w_bits, torch.ones(1), None, "signed", 3)
    assert y.item() == 1 * 1 + 1 * -1 + -1 * 1  # sgn(0) = +1


def _planes_a(a: np.ndarray, alphas: np.ndarray, mode: str) -> list[tuple[float, np.ndarray]]:
    if mode == "signed":
        return [(alphas[0], np.where(a < 0, -1, 1))]
    if mode == "unsigned":
        return [(alphas[0], (a > alphas[0] / 2).astype(np.int64))]
    mx = a.max(axis=(1, 2, 3), keepdims=True).astype(np.float32)
    m1 = a > np.float32(0.7) * mx
    m2 = a > np.float32(0.9) * mx
    return [
        (alphas[0], (a > alphas[0] / 2).astype(np.int64)),
        (alphas[1], m1.astype(np.int64)),
        (alphas[2], m2.astype(np.int64)),
    ]


def _planes_b(b: np.ndarray, alphas: np.ndarray, mode: str) -> list[tuple[float, np.ndarray]]:
    s = np.where(b < 0, -1, 1)
    if mode == "signed":
        return [(alphas[0], s)]
    mx = b.max(axis=(1, 2, 3), keepdims=True).astype(np.float32)
    mn = b.min(axis=(1, 2, 3), keepdims=True).astype(np.float32)
    out = [(alphas[0], s)]
    for r in (np.float32(0.7), np.float32(0.9)):
        m = (b > r * mx) | (b < r * mn)
        out.append((alphas[len(out)], s * m))
    return out


@pytest.mark.parametrize(
    "a_mode,b_mode",
    [("signed", "signed"), ("unsigned", "signed"), ("gsb_unsigned", "gsb_signed"), ("signed", "gsb_signed")],
)
def test_binary_matmul_matches_plane_sums_of_integer_dots(a_mode: str, b_mode: str) -> None:
    bsz, h, m, k, n = 2, 3, 5, 70, 4
    if a_mode == "gsb_unsigned":
        a = torch.from_numpy(RNG.standard_normal((bsz, h, m, k)).astype(np.float32)).softmax(-1)
    else:
        a = torch.from_numpy(RNG.standard_normal((bsz, h, m, k)).astype(np.float32))
    b = torch.from_numpy(RNG.standard_normal((bsz, h, k, n)).astype(np.float32))
    a_shift = torch.from_numpy(RNG.standard_normal((h, m, k)).astype(np.float32) * 0.01)
    b_shift = torch.from_numpy(RNG.standard_normal((h, k, 1)).astype(np.float32) * 0.1)
    na, nb = (3 if a_mode.startswith("gsb") else 1), (3 if b_mode.startswith("gsb") else 1)
    a_alpha = torch.tensor([0.02, 0.03, 0.05][:na])
    b_alpha = torch.tensor([0.5, 0.7, 0.9][:nb])
    out = torch.ops.bvit.binary_matmul(a, b, a_shift, a_alpha, b_shift, b_alpha, a_mode, b_mode, [0.7, 0.9])
    assert out.shape == (bsz, h, m, n)

    pa = _planes_a((a + a_shift).numpy(), a_alpha.numpy(), a_mode)
    pb = _planes_b((b + b_shift).numpy(), b_alpha.numpy(), b_mode)
    ref = np.zeros((bsz, h, m, n), np.float32)
    for ai, p in pa:
        for bj, q in pb:
            intdot = p.astype(np.int64) @ q.astype(np.int64)  # exact integer dot per plane pair
            ref = ref + (np.float32(ai) * np.float32(bj)) * intdot.astype(np.float32)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-7)


def test_binary_matmul_gsb_masks_are_per_sample() -> None:
    a = torch.rand(3, 2, 4, 6)
    b = torch.randn(3, 2, 6, 5)
    b[1] *= 50
    args = (
        torch.zeros(2, 4, 6),
        torch.tensor([0.1, 0.2, 0.3]),
        torch.zeros(2, 1, 5),
        torch.tensor([0.4, 0.5, 0.6]),
        "gsb_unsigned",
        "gsb_signed",
    )
    full = torch.ops.bvit.binary_matmul(a, b, *args)
    for i in range(3):
        assert torch.equal(torch.ops.bvit.binary_matmul(a[i : i + 1], b[i : i + 1], *args)[0], full[i])


def test_int8_ops_round_half_to_even_clamp_and_scale_per_channel() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 300.0, -300.0])
    y = torch.ops.bvit.quantize_dequantize_int8(x, torch.tensor(1.0))
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, -128.0]
    w = torch.from_numpy(RNG.integers(-128, 128, (4, 3, 2, 2)).astype(np.int8))
    s = torch.tensor([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(
        torch.ops.bvit.dequantize_int8(w, s, 0).numpy(), w.numpy().astype(np.float32) * s.numpy().reshape(4, 1, 1, 1)
    )
    np.testing.assert_array_equal(
        torch.ops.bvit.dequantize_int8(w, torch.tensor(0.5), 0).numpy(), w.numpy().astype(np.float32) * 0.5
    )


def test_ops_have_fake_implementations_with_output_shapes() -> None:
    with FakeTensorMode():
        y = torch.ops.bvit.binary_linear(
            torch.empty(2, 9, 70),
            torch.empty(70),
            torch.empty(()),
            torch.empty(5, 16, dtype=torch.uint8),
            torch.empty(5),
            None,
            "signed",
            70,
        )
        z = torch.ops.bvit.binary_matmul(
            torch.empty(2, 3, 9, 9),
            torch.empty(2, 3, 9, 4),
            torch.empty(3, 9, 9),
            torch.empty(3),
            torch.empty(3, 1, 4),
            torch.empty(3),
            "gsb_unsigned",
            "gsb_signed",
        )
        d = torch.ops.bvit.dequantize_int8(torch.empty(4, 3, dtype=torch.int8), torch.empty(4), 0)
        q = torch.ops.bvit.quantize_dequantize_int8(torch.empty(2, 3), torch.empty(()))
    assert (y.shape, z.shape, d.shape, q.shape) == ((2, 9, 5), (2, 3, 9, 4), (4, 3), (2, 3))
    assert d.dtype == torch.float32


def test_bad_mode_is_refused_with_a_named_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        torch.ops.bvit.binary_linear(
            torch.zeros(1, 3),
            torch.zeros(3),
            torch.tensor(1.0),
            torch.zeros(1, 8, dtype=torch.uint8),
            torch.ones(1),
            None,
            "ternary",
            3,
        )
    assert deploy.DEFAULT_GSB_RATIOS == (0.7, 0.9)
