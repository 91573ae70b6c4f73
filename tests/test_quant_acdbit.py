"""ACD-BiT distribution-alignment binarizer (docs/methods.md "ACD-BiT"): per-sample median shift / mean restore,
clipped-STE gradients, batch independence, and the linear layer against a numpy reference."""

from __future__ import annotations

import numpy as np
import torch

from bvit_edge.quant.acdbit import ACDLinear, acd_binarize

torch.set_num_threads(1)


def _np_acd(x: np.ndarray) -> np.ndarray:
    """x_hat per sample: alpha * sgn+(x - med) + mean, med = lower median, alpha = mean|x - med|."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        flat = np.sort(x[b].ravel())
        med = flat[(flat.size - 1) // 2]  # lower median
        alpha = np.abs(x[b] - med).mean()
        out[b] = alpha * np.where(x[b] - med < 0, -1.0, 1.0) + x[b].mean()
    return out


def test_forward_matches_per_sample_formula():
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(acd_binarize(x).numpy(), _np_acd(x.numpy()), rtol=1e-12, atol=1e-12)


def test_codes_are_balanced_around_the_median():
    x = torch.randn(2, 101, dtype=torch.float64)  # odd count: the median element maps to +1 (sgn+(0) = +1)
    y = acd_binarize(x)
    mu = x.mean(dim=1, keepdim=True)
    pos = (y > mu).sum(dim=1)
    assert pos.tolist() == [51, 51]


def test_batch_independence():
    x = torch.randn(4, 6, 7, dtype=torch.float64)
    alone = torch.cat([acd_binarize(x[i : i + 1]) for i in range(4)])
    assert torch.equal(acd_binarize(x), alone)


def test_gradient_is_clipped_ste_plus_mean_term():
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    g = torch.randn(3, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (acd_binarize(x) * g).sum().backward()
    xn, gn = x.detach().numpy(), g.numpy()
    ref = np.empty_like(xn)
    for b in range(3):
        flat = np.sort(xn[b])
        med = flat[(flat.size - 1) // 2]
        alpha = np.abs(xn[b] - med).mean()
        ref[b] = gn[b] * (np.abs(xn[b] - med) <= alpha) + gn[b].sum() / xn[b].size
    np.testing.assert_allclose(x.grad.numpy(), ref, rtol=1e-12, atol=1e-12)


def _bwn_ref(w: np.ndarray) -> np.ndarray:
    w = w.astype(np.float64)
    return np.abs(w).mean() * np.sign(w - w.mean())


def test_acd_linear_equals_float_reference():
    torch.manual_seed(0)
    lin = ACDLinear(24, 6)
    with torch.no_grad():
        lin.bias.normal_(0, 0.1)
    x = torch.randn(2, 5, 24)
    ref = _np_acd(x.numpy().astype(np.float64)) @ _bwn_ref(lin.weight.detach().numpy()).T + lin.bias.detach().numpy()
    np.testing.assert_allclose(lin(x).detach().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_acd_linear_frozen_matches_training_forward_exactly():
    torch.manual_seed(1)
    lin = ACDLinear(130, 10)
    with torch.no_grad():
        lin.bias.normal_(0, 0.1)
    x = torch.randn(3, 7, 130)
    with torch.no_grad():
        assert torch.equal(lin(x), lin.frozen()(x))


def test_acd_linear_gradient_reaches_input_and_weight():
    torch.manual_seed(2)
    lin = ACDLinear(16, 4).double()
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, dtype=torch.float64)
    (lin(x) * g).sum().backward()
    # reference: dL/dx_hat = g @ W_hat, then the ACD backward; dL/dW = g^T x_hat (BWN identity STE)
    w_hat = _bwn_ref(lin.weight.detach().numpy())
    gx_hat = g.numpy() @ w_hat
    xn = x.detach().numpy()
    ref = np.empty_like(xn)
    for b in range(2):
        flat = np.sort(xn[b].ravel())
        med = flat[(flat.size - 1) // 2]
        alpha = np.abs(xn[b] - med).mean()
        ref[b] = gx_hat[b] * (np.abs(xn[b] - med) <= alpha) + gx_hat[b].sum() / xn[b].size
    np.testing.assert_allclose(x.grad.numpy(), ref, rtol=1e-9, atol=1e-12)
    xh = _np_acd(xn).reshape(-1, 16)
    np.testing.assert_allclose(lin.weight.grad.numpy(), g.numpy().reshape(-1, 4).T @ xh, rtol=1e-9, atol=1e-12)
