"""ACD-BiT students (Wang et al., Sensors 2024; docs/methods.md "ACD-BiT") on the DeiT backbone, timm layout.

Distribution-alignment binarization (:mod:`bvit_edge.quant.acdbit`: x_hat = alpha sgn+(x - med) + mu, per
sample) on the inputs of qkv, proj, fc1, fc2 (with layer-wise BWN weights) and on Q, K, V and the attention
probabilities. Full precision: patch embedding, tokens, position embedding, LayerNorm, softmax, GELU,
residual adds, heads. The distribution-correction part of the method is a loss (MSE of the student's Q, K
against the teacher's, plus CE on the teacher's labels, weights 0.9 / 0.1): the model records "q", "k"
(pre-binarization) with ``model.record(True)`` for it.

Products with mean restore, written out (c_a, c_b the +-1 codes)::

    (alpha_a c_a + mu_a)(alpha_b c_b + mu_b) = alpha_a alpha_b (c_a c_b) + alpha_a mu_b rowsum(c_a)
                                              + mu_a alpha_b colsum(c_b) + mu_a mu_b K

Frozen: c_a c_b is ``torch.ops.bvit.binary_matmul`` (signed x signed, shift 0, alphas 1) on the
median-shifted operands; the statistics, the code sums and the restore terms are float work beside the op
(the per-sample statistics cannot be constant op inputs). Linears: :class:`FrozenACDLinear`. The median is
computed through TopK (exportable to ONNX).

Numerical caveat (a property of the method): the median element of every binarized tensor, and every
element tied with it, sits exactly on the sign boundary. The frozen PyTorch model reproduces the training
model bit for bit (same float operations), but another runtime whose ReduceMean / Softmax differ by an ulp can
move a tied element to the other side: measured on acdbit_test_patch4_16 at random init, onnxruntime's logits
differed by up to 0.05 from PyTorch's (BiT / BinaryViT: 3e-8). Compare ACD-BiT exports by top-1 agreement
over a data set, not by a tight atol.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from bvit_edge.models.bit import RecordingBlock, student_from_teacher
from bvit_edge.models.hooks import StudentMixin
from bvit_edge.models.registry import register_model
from bvit_edge.models.vit import DEMO_GEOMETRY, TEST_GEOMETRY, VisionTransformer, ViTConfig
from bvit_edge.quant.acdbit import ACDLinear, acd_codes, acd_matmul_from_codes, sample_stats

_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_DEMO_CFG = dict(input_size=(3, 32, 32), num_classes=10, crop_pct=1.0, interpolation="bilinear")
_TEST_CFG = dict(input_size=(3, 16, 16), num_classes=10, crop_pct=1.0, interpolation="bilinear")


def _deploy_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x - med, c = sgn+(x - med), alpha, mu) for the frozen path (no autograd)."""
    med, mu, alpha = sample_stats(x)
    xs = x - med
    return xs, torch.where(xs < 0, -1.0, 1.0).to(x.dtype), alpha, mu


class ACDAttention(nn.Module):
    """Multi-head attention with ACD-BiT binarization of qkv/proj inputs, Q, K, V and the probabilities."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = ACDLinear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = ACDLinear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.deployed = False
        self.recording = False
        self.last: dict[str, torch.Tensor] = {}

    def _product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(ACD a) @ (ACD b) with the restore terms; b is [B, H, K, N]."""
        if self.deployed:
            xa, ca, aa, ma = _deploy_codes(a)
            xb, cb, ab, mb = _deploy_codes(b)
            zero, one = a.new_zeros(1, 1, 1), a.new_ones(1)
            dot = torch.ops.bvit.binary_matmul(xa, xb, zero, one, zero, one, "signed", "signed")
        else:
            ca, aa, ma = acd_codes(a)
            cb, ab, mb = acd_codes(b)
            dot = ca @ cb
        return acd_matmul_from_codes(dot, (ca, aa, ma), (cb, ab, mb))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = self._product(q, k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(scores.softmax(dim=-1))
        out = self._product(attn, v)
        if self.recording:
            self.last = {"q": q, "k": k, "attn_scores": scores}
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(out))

    def freeze_(self) -> None:
        """No parameters of its own: only switches the products to the deploy op."""
        self.deployed = True

    def macs(self, n_tokens: int) -> dict[str, int]:
        """The two attention products for one image are binary."""
        return {"binary": 2 * self.num_heads * n_tokens * n_tokens * self.head_dim}


class ACDMlp(nn.Module):
    """fc1 -> GELU -> fc2, both ACD-BiT binary linears."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = ACDLinear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = ACDLinear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ACDVisionTransformer(StudentMixin, VisionTransformer):
    """The ACD-BiT student (module docstring)."""

    def make_block(self, cfg: ViTConfig, drop_path_p: float, index: int) -> nn.Module:
        return RecordingBlock(
            cfg,
            drop_path_p,
            lambda c: ACDAttention(c.embed_dim, c.num_heads, c.qkv_bias, c.attn_drop_rate, c.drop_rate),
            lambda c: ACDMlp(c.embed_dim, int(c.embed_dim * c.mlp_ratio), c.drop_rate),
        )


def _acd(geometry: dict[str, Any], **kw: Any) -> ACDVisionTransformer:
    return ACDVisionTransformer(ViTConfig(**{**geometry, **kw}))


@register_model(family="acdbit", precision="w1a1")
def acdbit_deit_tiny_patch16_224(**kw: Any) -> ACDVisionTransformer:
    return _acd(_TINY, **kw)


@register_model(family="acdbit", precision="w1a1")
def acdbit_deit_small_patch16_224(**kw: Any) -> ACDVisionTransformer:
    return _acd(_SMALL, **kw)


@register_model(family="acdbit", precision="w1a1", **_DEMO_CFG)
def acdbit_demo_patch4_32(**kw: Any) -> ACDVisionTransformer:
    return _acd({**DEMO_GEOMETRY, "num_classes": 10}, **kw)


@register_model(family="acdbit", precision="w1a1", **_TEST_CFG)
def acdbit_test_patch4_16(**kw: Any) -> ACDVisionTransformer:
    return _acd(TEST_GEOMETRY, **kw)


__all__ = ["ACDAttention", "ACDMlp", "ACDVisionTransformer", "student_from_teacher"]
