"""BinaryViT quantizers and layers (docs/methods.md "BinaryViT"): ApproxSign, RPReLU, LayerScale, the attention
binarizer and the per-row binary linear — forward values and gradients against formulas written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bvit_edge.quant.binaryvit import AttnBinarizer, BinaryViTLinear, LayerScale, RPReLU, approx_sign

torch.set_num_threads(1)


def _rand(shape, seed, scale=1.0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def test_approx_sign_forward_is_sign():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 4.0])
    np.testing.assert_array_equal(approx_sign(x).numpy(), [-1, -1, 0, 1, 1])


def test_approx_sign_gradient_is_bireal_piecewise_linear():
    x = _rand(500, 0, 0.9).requires_grad_(True)
    g = _rand(500, 1)
    (approx_sign(x) * g).sum().backward()
    xn = x.detach().numpy()
    d = np.where((xn >= -1) & (xn <= 0), 2 + 2 * xn, np.where((xn > 0) & (xn <= 1), 2 - 2 * xn, 0.0))
    np.testing.assert_allclose(x.grad.numpy(), g.numpy() * d, rtol=0, atol=1e-12)


def test_approx_sign_gradient_at_the_edges():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    approx_sign(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 2.0, 0.0, 0.0])


def test_rprelu_forward_and_gradients():
    torch.manual_seed(0)
    m = RPReLU(5).double()
    with torch.no_grad():
        m.gamma.normal_(0, 0.3)
        m.zeta.normal_(0, 0.3)
        m.slope.uniform_(0.05, 0.5)
    x = _rand((7, 5), 2).requires_grad_(True)
    g = _rand((7, 5), 3)
    y = m(x)
    (y * g).sum().backward()
    xn, gn = x.detach().numpy(), g.numpy()
    gam, zet, a = (p.detach().numpy() for p in (m.gamma, m.zeta, m.slope))
    s = xn - gam
    pos = s > 0
    np.testing.assert_allclose(y.detach().numpy(), np.where(pos, s, a * s) + zet, rtol=1e-12)
    dydx = np.where(pos, 1.0, a)
    np.testing.assert_allclose(x.grad.numpy(), gn * dydx, rtol=1e-12)
    np.testing.assert_allclose(m.gamma.grad.numpy(), -(gn * dydx).sum(0), rtol=1e-10)
    np.testing.assert_allclose(m.zeta.grad.numpy(), gn.sum(0), rtol=1e-10)
    np.testing.assert_allclose(m.slope.grad.numpy(), (gn * np.where(pos, 0.0, s)).sum(0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("affine", [False, True])
def test_layerscale(affine: bool):
    m = LayerScale(4, init=0.1, affine=affine).double()
    x = _rand((3, 4), 4).requires_grad_(True)
    g = _rand((3, 4), 5)
    (m(x) * g).sum().backward()
    a = m.a.detach().numpy()
    np.testing.assert_allclose(a, 0.1, rtol=1e-7)
    np.testing.assert_allclose(m(x).detach().numpy(), a * x.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(m.a.grad.numpy(), (g * x.detach()).sum(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), a * g.numpy(), rtol=1e-12)
    if affine:
        np.testing.assert_allclose(m.b.grad.numpy(), g.sum(0).numpy(), rtol=1e-12)


def test_attention_binarizer_init_and_forward():
    m = AttnBinarizer()
    assert float(m.alpha.detach()) == pytest.approx(0.005)
    a = torch.softmax(_rand((2, 3, 6, 6), 6, 3.0, torch.float32), dim=-1)
    alpha = 0.005
    ref = alpha * np.clip(np.round(a.numpy() / np.float32(alpha)), 0, 1)
    np.testing.assert_allclose(m(a).detach().numpy(), ref, rtol=0, atol=1e-9)


def test_attention_binarizer_gradients():
    m = AttnBinarizer(0.2).double()
    a = torch.rand(400, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 0.5
    a.requires_grad_(True)
    g = _rand(400, 8)
    (m(a) * g).sum().backward()
    an, gn, al = a.detach().numpy(), g.numpy(), float(m.alpha.detach())
    inside = (an >= 0) & (an < al)
    np.testing.assert_allclose(a.grad.numpy(), gn * inside, rtol=0, atol=1e-12)
    d_alpha = np.where(an >= al, 1.0, np.where(inside, np.round(an / al) - an / al, 0.0))
    np.testing.assert_allclose(float(m.alpha.grad), (gn * d_alpha).sum(), rtol=1e-10)


def test_binaryvit_linear_uses_per_row_scales():
    torch.manual_seed(1)
    lin = BinaryViTLinear(12, 5)
    with torch.no_grad():
        lin.act.shift.normal_(0, 0.1)
        lin.bias.normal_(0, 0.1)
    x = torch.randn(2, 3, 12)
    w = lin.weight.detach().numpy().astype(np.float64)
    w_hat = np.abs(w).mean(1, keepdims=True) * np.sign(w - w.mean(1, keepdims=True))
    ref = np.sign(x.numpy() + lin.act.shift.detach().numpy()) @ w_hat.T + lin.bias.detach().numpy()
    np.testing.assert_allclose(lin(x).detach().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_binaryvit_linear_gradients():
    torch.manual_seed(2)
    lin = BinaryViTLinear(6, 3).double()
    x = (torch.rand(4, 6, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    g = torch.randn(4, 3, dtype=torch.float64)
    (lin(x) * g).sum().backward()
    w = lin.weight.detach().numpy()
    w_hat = np.abs(w).mean(1, keepdims=True) * np.sign(w - w.mean(1, keepdims=True))
    xs = x.detach().numpy() + lin.act.shift.detach().numpy()
    d = np.where((xs >= -1) & (xs <= 0), 2 + 2 * xs, np.where((xs > 0) & (xs <= 1), 2 - 2 * xs, 0.0))
    np.testing.assert_allclose(x.grad.numpy(), (g.numpy() @ w_hat) * d, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(lin.weight.grad.numpy(), g.numpy().T @ np.sign(xs), rtol=1e-9, atol=1e-12)


def test_frozen_binaryvit_linear_matches_training_forward():
    torch.manual_seed(3)
    lin = BinaryViTLinear(100, 7)
    with torch.no_grad():
        lin.act.shift.normal_(0, 0.1)
        lin.bias.normal_(0, 0.1)
    x = torch.randn(3, 4, 100)
    with torch.no_grad():
        assert int(((x + lin.act.shift) == 0).sum()) == 0
        assert torch.equal(lin(x), lin.frozen()(x))
