"""BWN weight binarization and the 8-bit LSQ quantizers of GSB, against float64 / numpy references."""

from __future__ import annotations

import math

import numpy as np
import torch

from bvit_edge.quant.lsq import ElasticIntQuantizer, LSQConv2d, W8A8Linear
from bvit_edge.quant.weights import BWNQuantizer, bwn_quantize, bwn_quantize_rows, bwn_scale

torch.set_num_threads(1)


def test_bwn_scale_matches_a_float64_reference_better_than_fp32_norm() -> None:
    torch.manual_seed(0)
    w = torch.randn(1536, 384) * 0.02 + 0.003
    ref = np.abs(w.double().numpy()).mean()  # float64 reference
    m = bwn_scale(w).item()
    assert abs(m - ref) / ref <= 2**-24  # correctly rounded to float32
    assert bwn_scale(w).dtype == torch.float32 and bwn_scale(w).ndim == 0


def test_bwn_forward_is_scale_times_sign_of_centred_weight_and_backward_identity() -> None:
    torch.manual_seed(1)
    w = (torch.randn(8, 12) + 0.2).requires_grad_(True)
    wn = w.detach().double().numpy()
    y = bwn_quantize(w)
    expected = np.abs(wn).mean() * np.sign(wn - wn.mean())  # m from the UNcentred W
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-6)
    g = torch.randn(8, 12)
    (y * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_bwn_rows_use_one_detached_scale_per_output_row() -> None:
    torch.manual_seed(2)
    w = (torch.randn(5, 9) + torch.arange(5).unsqueeze(1)).requires_grad_(True)
    wn = w.detach().double().numpy()
    y = bwn_quantize_rows(w)
    expected = np.abs(wn).mean(1, keepdims=True) * np.sign(wn - wn.mean(1, keepdims=True))
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-6)
    g = torch.randn(5, 9)
    (y * g).sum().backward()
    assert torch.equal(w.grad, g)
    np.testing.assert_allclose(BWNQuantizer(per_row=True).scales(w).numpy(), np.abs(wn).mean(1), rtol=1e-6)


def test_lsq_conv_weights_are_8bit_per_channel_with_lsq_gradients() -> None:
    torch.manual_seed(3)
    conv = LSQConv2d(3, 4, kernel_size=2, stride=2)
    conv(torch.randn(1, 3, 4, 4))  # lazy init
    wn = conv.weight.detach().double().numpy()
    np.testing.assert_allclose(
        conv.alpha.detach().numpy(), np.full(4, 2 * np.abs(wn).mean() / math.sqrt(127)), rtol=1e-5
    )
    with torch.no_grad():
        conv.alpha.copy_(torch.tensor([0.002, 0.01, 0.05, 0.2]))
    wq = conv.quantized_weight()
    g = torch.randn_like(wq)
    (wq * g).sum().backward()
    s = conv.alpha.detach().double().numpy().reshape(-1, 1, 1, 1)
    q = wn / s
    codes = np.clip(np.round(q), -128, 127)
    np.testing.assert_allclose(wq.detach().numpy(), codes * s, rtol=1e-6)
    middle = (q >= -128) & (q <= 127)
    gn = g.double().numpy()
    np.testing.assert_allclose(conv.weight.grad.numpy(), gn * middle, rtol=1e-6)
    d_s = (q < -128) * -128 + (q > 127) * 127 + middle * (np.round(q) - q)
    expected = (gn * d_s).sum(axis=(1, 2, 3)) / math.sqrt(wn.size * 127)
    np.testing.assert_allclose(conv.alpha.grad.numpy(), expected, rtol=1e-4, atol=1e-7)
    codes_t, _ = conv.int8_codes_and_scale()
    assert codes_t.dtype == torch.int8
    np.testing.assert_array_equal(codes_t.numpy(), codes.astype(np.int8))


def test_w8a8_head_quantizes_weights_and_shifted_inputs_to_8_bits() -> None:
    torch.manual_seed(4)
    head = W8A8Linear(16, 5)
    with torch.no_grad():
        head.move.bias.normal_(0, 0.1)
        head.bias.normal_()
    x = torch.randn(3, 16)
    y = head(x)
    xs = (x + head.move.bias).detach().double().numpy()
    wn = head.weight.detach().double().numpy()
    aw, ai = head.weight_quant.alpha.item(), head.input_quant.alpha.item()
    np.testing.assert_allclose(aw, 2 * np.abs(wn).mean() / math.sqrt(127), rtol=1e-5)
    np.testing.assert_allclose(ai, 2 * np.abs(xs).mean() / math.sqrt(127), rtol=1e-5)
    xq = np.clip(np.round(xs / ai), -128, 127) * ai
    wq = np.clip(np.round(wn / aw), -128, 127) * aw
    np.testing.assert_allclose(y.detach().numpy(), xq @ wq.T + head.bias.detach().numpy(), rtol=1e-5, atol=1e-6)
    frozen = head.frozen()
    np.testing.assert_allclose(frozen(x).numpy(), y.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_elastic_int_quantizer_gradient_is_scaled_by_one_over_sqrt_numel_qp() -> None:
    q = ElasticIntQuantizer(8)
    with torch.no_grad():
        q.alpha.fill_(0.01)
        q.initialized.fill_(True)
    x = torch.tensor([0.004, 2.0, -3.0, 0.0151])
    q(x).sum().backward()
    qv = x.double().numpy() / 0.01
    d = np.where(qv > 127, 127, np.where(qv < -128, -128, np.round(qv) - qv))
    np.testing.assert_allclose(q.alpha.grad.item(), d.sum() / math.sqrt(4 * 127), rtol=1e-4)
