"""BiT elastic binarizers (docs/methods.md "BiT") and the BiT binary linear layer.

Forward values and autograd gradients are compared with the formulas written out here in numpy, never with
the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bvit_edge.errors import ConfigError
from bvit_edge.quant.bit import BiTLinear, ElasticBinarizer, elastic_binarize

torch.set_num_threads(1)


def _np_round_half_even(x: np.ndarray) -> np.ndarray:
    return np.round(x)  # numpy rounds half to even


def _inputs(seed: int = 0, n: int = 400) -> tuple[torch.Tensor, float, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 1.5
    return x, 0.8, 0.3  # x, alpha, beta


# ---------------------------------------------------------------------------------------------- forward
def test_signed_forward_is_alpha_sign_of_shifted_input():
    x, a, b = _inputs()
    y = elastic_binarize(x, torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), "signed")
    ref = a * np.sign(x.numpy() - b)
    np.testing.assert_array_equal(y.numpy(), ref)


def test_unsigned_forward_is_alpha_round_clip():
    x, a, b = _inputs(1)
    y = elastic_binarize(x, torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), "unsigned")
    ref = a * _np_round_half_even(np.clip((x.numpy() - b) / a, 0, 1))
    np.testing.assert_array_equal(y.numpy(), ref)


def test_unsigned_forward_half_rounds_to_zero():
    a = torch.tensor(0.5, dtype=torch.float64)
    x = torch.tensor([0.25, 0.2500001, 0.1], dtype=torch.float64)  # x/alpha = 0.5 exactly -> r(0.5) = 0
    y = elastic_binarize(x, a, 0.0, "unsigned")
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.5, 0.0])


# ---------------------------------------------------------------------------------------------- gradients
def _grads(mode: str, seed: int):
    x, a, b = _inputs(seed)
    x = x.clone().requires_grad_(True)
    alpha = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    (elastic_binarize(x, alpha, beta, mode) * g).sum().backward()
    return x.detach().numpy(), a, b, g.numpy(), x.grad.numpy(), float(alpha.grad), float(beta.grad)


def test_signed_gradients_match_bit_formulas():
    x, a, b, g, gx, ga, gb = _grads("signed", 2)
    xs = x - b
    inside = (np.abs(xs) <= a).astype(float)
    np.testing.assert_allclose(gx, g * inside, rtol=0, atol=1e-12)  # d/dx = 1[|x-b| <= a]
    np.testing.assert_allclose(gb, -(g * inside).sum(), rtol=1e-12)  # d/dbeta = -1[|x-b| <= a]
    np.testing.assert_allclose(ga, (g * np.sign(xs)).sum(), rtol=1e-12)  # d/dalpha = sgn(x-b) only


def test_unsigned_gradients_match_bit_formulas():
    x, a, b, g, gx, ga, gb = _grads("unsigned", 3)
    xs = x - b
    d_alpha = np.where(xs < 0, 0.0, np.where(xs < a, np.round(xs / a) - xs / a, 1.0))
    d_x = ((xs >= 0) & (xs < a)).astype(float)
    np.testing.assert_allclose(gx, g * d_x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gb, -(g * d_x).sum(), rtol=1e-12)
    np.testing.assert_allclose(ga, (g * d_alpha).sum(), rtol=1e-10)


def test_per_channel_beta_gradient_is_summed_per_channel():
    q = ElasticBinarizer("signed", beta_shape=(4,))
    x = torch.randn(3, 5, 4, dtype=torch.float32)
    y = q(x)  # lazily initialises alpha
    alpha = float(q.alpha.detach())
    q.zero_grad()
    g = torch.randn_like(y)
    (q(x) * g).sum().backward()
    inside = (np.abs(x.numpy()) <= alpha).astype(np.float32)
    np.testing.assert_allclose(q.beta.grad.numpy(), -(g.numpy() * inside).sum(axis=(0, 1)), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- init / state
@pytest.mark.parametrize("mode,factor", [("signed", 2.0), ("unsigned", 4.0)])
def test_lazy_init_from_first_batch_and_flag_saved(mode: str, factor: float):
    q = ElasticBinarizer(mode, beta_shape=(6,))
    assert not bool(q.initialized)
    x = torch.rand(8, 6) * 3 - 1
    q(x)
    assert bool(q.initialized)
    np.testing.assert_allclose(float(q.alpha.detach()), factor * np.abs(x.numpy()).mean(), rtol=1e-6)
    sd = q.state_dict()
    assert "initialized" in sd and bool(sd["initialized"])
    q2 = ElasticBinarizer(mode, beta_shape=(6,))
    q2.load_state_dict(sd)
    q2(torch.rand(8, 6) * 100)  # a second batch must not re-initialise
    assert float(q2.alpha.detach()) == float(q.alpha.detach())


def test_alpha_is_clamped_to_a_minimum():
    q = ElasticBinarizer("signed")
    q(torch.zeros(4, 3))
    assert float(q.codes(torch.zeros(2))[1].detach()) == pytest.approx(1e-5)


def test_unknown_mode_is_a_clear_error():
    from bvit_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="signed"):
        ElasticBinarizer("ternary")


# ---------------------------------------------------------------------------------------------- the layer
def _bwn_ref(w: np.ndarray) -> np.ndarray:
    w64 = w.astype(np.float64)
    m = np.abs(w64).mean()
    return (np.sign(w64 - w64.mean()) * m).astype(np.float32)


def test_bit_linear_equals_float_reference():
    torch.manual_seed(0)
    lin = BiTLinear(16, 8, mode="signed")
    with torch.no_grad():
        lin.act.beta.normal_(0, 0.1)
        lin.bias.normal_(0, 0.1)
    x = torch.randn(2, 5, 16)
    lin(x)  # init alpha
    y = lin(x).detach().numpy()
    a = float(lin.act.alpha.detach())
    xh = a * np.sign(x.numpy() - lin.act.beta.detach().numpy())
    ref = xh @ _bwn_ref(lin.weight.detach().numpy()).T + lin.bias.detach().numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_bit_linear_weight_gradient_is_identity_ste():
    torch.manual_seed(1)
    lin = BiTLinear(8, 4, mode="unsigned")
    x = torch.rand(3, 8) * 2
    lin(x)
    lin.zero_grad()
    g = torch.randn(3, 4)
    (lin(x) * g).sum().backward()
    c, alpha = lin.act.codes(x)
    xh = (alpha * c).detach().numpy()
    np.testing.assert_allclose(lin.weight.grad.numpy(), g.numpy().T @ xh, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["signed", "unsigned"])
def test_frozen_bit_linear_matches_training_forward(mode: str):
    torch.manual_seed(2)
    lin = BiTLinear(70, 9, mode=mode)  # K = 70: one padded word
    with torch.no_grad():
        lin.act.beta.normal_(0, 0.05)
        lin.bias.normal_(0, 0.05)
    x = torch.randn(4, 70)
    lin(x)
    with torch.no_grad():
        y = lin(x)
        zeros = int(((x - lin.act.beta) == 0).sum())
        yf = lin.frozen()(x)
    assert zeros == 0
    assert torch.equal(y, yf)


def test_module_scales_alpha_gradient_by_inverse_sqrt_numel():
    x = torch.randn(4, 10, dtype=torch.float64)
    g = torch.randn(4, 10, dtype=torch.float64)
    grads = {}
    for scaled in (False, True):
        q = ElasticBinarizer("signed", beta_shape=(10,), init_value=0.7, alpha_grad_scale=scaled).double()
        (q(x) * g).sum().backward()
        grads[scaled] = float(q.alpha.grad)
    ref = float((g * torch.sign(x)).sum())  # d/dalpha = sgn(x - beta), beta = 0
    assert grads[False] == pytest.approx(ref, rel=1e-12)
    assert grads[True] == pytest.approx(ref / np.sqrt(40), rel=1e-12)


def test_gradient_scale_leaves_the_forward_unchanged():
    x = torch.randn(3, 7)
    a = ElasticBinarizer("unsigned", init_value=0.9, alpha_grad_scale=True)
    b = ElasticBinarizer("unsigned", init_value=0.9, alpha_grad_scale=False)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("mode,qn,qp", [("signed", -2, 1), ("unsigned", 0, 3)])
def test_two_bit_codes_and_gradients_follow_the_lsq_equations(mode: str, qn: int, qp: int):
    """bits=2 (the W1A2 step): x_hat = alpha * clamp(round(x'/alpha), Qn, Qp); d/dx = 1[Qn <= x'/alpha <= Qp],
    d/dalpha = c - x'/alpha inside and Qn or Qp outside (summed), computed here in numpy."""
    rng = np.random.default_rng(7)
    x_np = rng.uniform(-3, 4, size=(5, 8)).astype(np.float64)
    b = ElasticBinarizer(mode, beta_shape=None, init_value=0.7, alpha_grad_scale=False, bits=2).double()
    x = torch.tensor(x_np, requires_grad=True)
    y = b(x)
    g = rng.standard_normal(x_np.shape)
    y.backward(torch.tensor(g))
    a = b.alpha.item()  # 0.7 as stored (float32, then widened)
    q = x_np / a
    c = np.clip(np.round(q), qn, qp)
    np.testing.assert_allclose(y.detach().numpy(), a * c)
    assert set(np.unique(c)) <= set(range(qn, qp + 1))
    inside = (q >= qn) & (q <= qp)
    np.testing.assert_allclose(x.grad.numpy(), g * inside)
    d_alpha = np.where(inside, c - q, np.where(q < qn, qn, qp))
    np.testing.assert_allclose(b.alpha.grad.item(), (g * d_alpha).sum(), rtol=1e-10)


def test_two_bit_lazy_init_is_lsq_and_other_widths_are_refused():
    b = ElasticBinarizer("unsigned", bits=2)
    x = torch.rand(4, 10)
    b(x)
    assert b.alpha.item() == pytest.approx(2 * x.abs().mean().item() / np.sqrt(3), rel=1e-5)
    with pytest.raises(ConfigError, match="1 or 2 bits"):
        ElasticBinarizer("signed", bits=3)


def test_a_two_bit_bit_model_is_not_frozen_and_says_what_to_deploy():
    from bvit_edge.models import create_model

    model = create_model("bit_test_patch4_16", act_bits=2)
    model(torch.randn(2, 3, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="W1A1 student"):
        model.freeze()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
