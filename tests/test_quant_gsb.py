"""GSB input binarizers: forward values and gradients against docs/methods.md "GSB", written out here in numpy.

Grouped as in larq: quantization (forward), gradients (backward, against the stated formulas, including the
1/sqrt(numel) alpha gradient scaling), initialisation / serialization (lazy init, stored flag, clamp).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bvit_edge.quant.gsb import (
    AttentionGroupBinarizer,
    SignedBinarizer,
    UnsignedBinarizer,
    ValueGroupBinarizer,
)

torch.set_num_threads(1)
RATIOS = (0.7, 0.9)


def _set_alphas(q: torch.nn.Module, *values: float) -> None:
    names = ["alpha"] if hasattr(q, "alpha") else ["alpha1", "alpha2", "alpha3"]
    with torch.no_grad():
        for n, v in zip(names, values, strict=True):
            getattr(q, n).fill_(v)
        q.initialized.fill_(True)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _signed_masks_np(v: np.ndarray, r: float) -> np.ndarray:
    axes = tuple(range(1, v.ndim))
    mx = v.max(axis=axes, keepdims=True)
    mn = v.min(axis=axes, keepdims=True)
    return (v > r * mx) | (v < r * mn)


def _unsigned_masks_np(a: np.ndarray, r: float) -> np.ndarray:
    mx = a.max(axis=tuple(range(1, a.ndim)), keepdims=True)
    return a > r * mx


# ---------------------------------------------------------------------------------------------------------
# signed
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("corrected", [True, False])
def test_signed_forward_and_gradients_follow_the_stated_formulas(corrected: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, requires_grad=True)
    g = torch.randn(3, 5, 7)
    q = SignedBinarizer(corrected=corrected)
    alpha = 0.8
    _set_alphas(q, alpha)
    y = q(x)
    (y * g).sum().backward()

    xn, gn = _np(x), _np(g)
    np.testing.assert_allclose(_np(y), alpha * np.sign(xn), rtol=1e-6)
    inside = np.abs(xn) <= alpha
    np.testing.assert_allclose(_np(x.grad), gn * inside, rtol=1e-6)
    d_alpha = np.sign(xn) - (xn / alpha) * inside if corrected else np.sign(xn)
    expected = (gn * d_alpha).sum() / math.sqrt(xn.size)
    assert q.alpha.grad is not None
    np.testing.assert_allclose(q.alpha.grad.item(), expected, rtol=1e-4, atol=1e-6)


def test_signed_sign_of_zero_is_zero_in_training() -> None:
    q = SignedBinarizer()
    _set_alphas(q, 0.5)
    y = q(torch.tensor([[-1.0, 0.0, 2.0]]))
    assert y.tolist() == [[-0.5, 0.0, 0.5]]


# ---------------------------------------------------------------------------------------------------------
# unsigned
# ---------------------------------------------------------------------------------------------------------


def test_unsigned_forward_and_gradients_follow_the_stated_formulas() -> None:
    torch.manual_seed(1)
    x = (torch.randn(4, 6, 9) * 0.8 + 0.3).requires_grad_(True)
    g = torch.randn(4, 6, 9)
    q = UnsignedBinarizer()
    alpha = 0.6
    _set_alphas(q, alpha)
    y = q(x)
    (y * g).sum().backward()

    xn, gn = _np(x), _np(g)
    np.testing.assert_allclose(_np(y), alpha * np.clip(np.round(xn / alpha), 0, 1), rtol=1e-6)
    np.testing.assert_array_equal(_np(y) > 0, xn > alpha / 2)
    inside = (xn >= 0) & (xn <= alpha)
    np.testing.assert_allclose(_np(x.grad), gn * inside, rtol=1e-6)
    d_alpha = (xn > alpha) + inside * (np.round(xn / alpha) - xn / alpha)
    expected = (gn * d_alpha).sum() / math.sqrt(xn.size)
    np.testing.assert_allclose(q.alpha.grad.item(), expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Value groups
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("corrected", [True, False])
def test_value_groups_forward_and_gradients_follow_the_stated_formulas(corrected: bool) -> None:
    torch.manual_seed(2)
    v = torch.randn(3, 2, 6, 8, requires_grad=True)
    g = torch.randn(3, 2, 6, 8)
    q = ValueGroupBinarizer(RATIOS, corrected=corrected)
    a = (0.4, 0.9, 1.3)
    _set_alphas(q, *a)
    y = q(v)
    (y * g).sum().backward()

    vn, gn = _np(v), _np(g)
    m1, m2 = _signed_masks_np(vn, 0.7), _signed_masks_np(vn, 0.9)
    assert m1.sum() > m2.sum() > 0
    us = (vn, vn * m1, vn * m2)
    np.testing.assert_allclose(_np(y), sum(ak * np.sign(u) for ak, u in zip(a, us, strict=True)), rtol=1e-6)
    grad_v = sum(gn * (np.abs(u) <= ak) for ak, u in zip(a, us, strict=True))
    np.testing.assert_allclose(_np(v.grad), grad_v, rtol=1e-6)
    scales = (1 / math.sqrt(vn.size), 1 / math.sqrt(m1.sum()), 1 / math.sqrt(m2.sum()))
    for name, ak, u, s in zip(("alpha1", "alpha2", "alpha3"), a, us, scales, strict=True):
        d = np.sign(u) - (u / ak) * (np.abs(u) <= ak) if corrected else np.sign(u)
        np.testing.assert_allclose(getattr(q, name).grad.item(), (gn * d).sum() * s, rtol=1e-4, atol=1e-6)


def test_value_masks_are_per_sample() -> None:
    torch.manual_seed(3)
    v = torch.randn(4, 2, 5, 8)
    v[2] *= 10  # one sample with a much larger range must not change the others' masks
    q = ValueGroupBinarizer(RATIOS)
    _set_alphas(q, 0.3, 0.5, 0.7)
    with torch.no_grad():
        full = q(v)
        for i in range(4):
            assert torch.equal(q(v[i : i + 1])[0], full[i])


# ---------------------------------------------------------------------------------------------------------
# attention groups
# ---------------------------------------------------------------------------------------------------------


def test_attention_groups_forward_and_gradients_follow_the_stated_formulas() -> None:
    torch.manual_seed(4)
    logits = torch.randn(3, 2, 7, 7) * 2
    bias = torch.randn(2, 7, 7) * 0.05  # the learnable B can push A below 0
    a_in = (logits.softmax(-1) + bias).requires_grad_(True)
    g = torch.randn(3, 2, 7, 7)
    q = AttentionGroupBinarizer(RATIOS)
    a = (0.3, 0.2, 0.15)
    _set_alphas(q, *a)
    y = q(a_in)
    (y * g).sum().backward()

    an, gn = _np(a_in), _np(g)
    m1, m2 = _unsigned_masks_np(an, 0.7), _unsigned_masks_np(an, 0.9)
    assert (an < 0).any() and m1.sum() > m2.sum() > 0
    expected_y = a[0] * np.clip(np.round(an / a[0]), 0, 1) + a[1] * m1 + a[2] * m2
    np.testing.assert_allclose(_np(y), expected_y, rtol=1e-6)
    inside = (an >= 0) & (an <= a[0])
    np.testing.assert_allclose(_np(a_in.grad), gn * (inside + a[1] * m1 + a[2] * m2), rtol=1e-5)
    d1 = (an > a[0]) + inside * (np.round(an / a[0]) - an / a[0])
    np.testing.assert_allclose(q.alpha1.grad.item(), (gn * d1).sum() / math.sqrt(an.size), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q.alpha2.grad.item(), (gn * m1).sum() / math.sqrt(m1.sum()), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q.alpha3.grad.item(), (gn * m2).sum() / math.sqrt(m2.sum()), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# initialisation, clamp, serialization
# ---------------------------------------------------------------------------------------------------------


def test_lazy_init_uses_first_batch_and_is_stored_in_the_state_dict() -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 10, 16)
    s, u = SignedBinarizer(), UnsignedBinarizer()
    assert "initialized" in s.state_dict() and not bool(s.initialized)
    s(x)
    u(x)
    np.testing.assert_allclose(s.alpha.item(), 2 * np.abs(_np(x)).mean(), rtol=1e-5)
    np.testing.assert_allclose(u.alpha.item(), 4 * np.abs(_np(x)).mean(), rtol=1e-5)
    first = s.alpha.item()
    s(x * 100)  # no re-initialisation
    assert s.alpha.item() == first
    fresh = SignedBinarizer()
    fresh.load_state_dict(s.state_dict())
    fresh(x * 100)
    assert fresh.alpha.item() == first and bool(fresh.initialized)


def test_value_and_attention_init_are_non_residual_group_means() -> None:
    torch.manual_seed(6)
    v = torch.randn(2, 2, 6, 8)
    q = ValueGroupBinarizer(RATIOS)
    q(v)
    av = np.abs(_np(v))
    m1, m2 = _signed_masks_np(_np(v), 0.7), _signed_masks_np(_np(v), 0.9)
    np.testing.assert_allclose(q.alpha1.item(), 2 * av[~m1].mean(), rtol=1e-5)
    np.testing.assert_allclose(q.alpha2.item(), 2 * av[m1 & ~m2].mean(), rtol=1e-5)
    np.testing.assert_allclose(q.alpha3.item(), 2 * av[m2].mean(), rtol=1e-5)

    a_in = (torch.randn(2, 2, 6, 6) * 3).softmax(-1)
    qa = AttentionGroupBinarizer(RATIOS)
    qa(a_in)
    an = _np(a_in)
    n1, n2 = _unsigned_masks_np(an, 0.7), _unsigned_masks_np(an, 0.9)
    np.testing.assert_allclose(qa.alpha1.item(), 4 * an.mean(), rtol=1e-5)
    np.testing.assert_allclose(qa.alpha2.item(), 4 * an[n1 & ~n2].mean(), rtol=1e-5)
    np.testing.assert_allclose(qa.alpha3.item(), 4 * an[n2].mean(), rtol=1e-5)


def test_alpha_is_clamped_to_1e_5_and_gets_no_gradient_below() -> None:
    q = SignedBinarizer()
    _set_alphas(q, -3.0)
    x = torch.tensor([[-2.0, 3.0]], requires_grad=True)
    y = q(x)
    np.testing.assert_allclose(y.detach().numpy(), [[-1e-5, 1e-5]], rtol=1e-6)
    y.sum().backward()
    assert q.alpha.grad.item() == 0.0


_DDP_WORKER = """
import json, os, sys
import torch
import torch.distributed as dist
from bvit_edge.quant.gsb import SignedBinarizer

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(100 + rank)  # each rank sees a different first batch
q = SignedBinarizer()
q.train()
q(torch.randn(4, 8) * (rank + 1))
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
    json.dump(q.alpha.item(), fh)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_lazy_init_is_averaged_over_ranks_so_ddp_replicas_agree(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert out[0] == out[1]
    torch.manual_seed(100)
    a0 = 2 * (torch.randn(4, 8)).abs().mean().item()
    torch.manual_seed(101)
    a1 = 2 * (torch.randn(4, 8) * 2).abs().mean().item()
    np.testing.assert_allclose(out[0], (a0 + a1) / 2, rtol=1e-5)
