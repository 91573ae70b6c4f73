"""BiT students (Liu et al., NeurIPS 2022; docs/methods.md "BiT") on the DeiT backbone, timm state_dict layout.

What is binary: qkv, proj, fc1, fc2 (BWN weights, elastic input binarizers: signed for qkv/proj/fc1, unsigned
for the post-GELU fc2 input); Q, K, V after the projection (signed, beta [H, 1, d_h]); the attention
probabilities (unsigned, beta [H, 1, 1]). Full precision: patch embedding, tokens, position embedding,
LayerNorm, softmax, GELU, residual adds, the head(s) — BiT's choice for the first and last layers.

Attention: scores = (alpha_q alpha_k) (c_q c_k^T) / sqrt(d_h); A = softmax(scores); out = (alpha_A alpha_v)
(c_A c_v), then proj. After ``freeze()`` the two products are ``torch.ops.bvit.binary_matmul`` (signed x
signed with shifts -beta_q / -beta_k^T, then unsigned x signed with -beta_A / -beta_v) and the linears
``torch.ops.bvit.binary_linear`` with shift = -beta; the training model computes the same expressions in
the same order, so frozen and eval outputs agree except where a binarizer input is exactly 0 (sgn(0) = 0 in
training, +1 deployed).

``model.record(True)`` keeps per block "hidden", "attn_scores" (pre-softmax), "q", "k" (pre-binarization):
see :mod:`bvit_edge.models.hooks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from bvit_edge.models.gsb import student_from_teacher
from bvit_edge.models.hooks import StudentMixin
from bvit_edge.models.registry import register_model
from bvit_edge.models.vit import DEMO_GEOMETRY, TEST_GEOMETRY, Block, VisionTransformer, ViTConfig
from bvit_edge.quant.bit import BiTLinear, ElasticBinarizer, codes_matmul

_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_DEMO_CFG: dict[str, Any] = dict(input_size=(3, 32, 32), num_classes=10, crop_pct=1.0, interpolation="bilinear")
_TEST_CFG: dict[str, Any] = dict(input_size=(3, 16, 16), num_classes=10, crop_pct=1.0, interpolation="bilinear")


class BiTAttention(nn.Module):
    """Multi-head attention with BiT's binarized qkv/proj, Q/K/V and attention probabilities."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        act_bits: int = 1,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        h, dh, ab = num_heads, self.head_dim, act_bits
        self.qkv = BiTLinear(dim, dim * 3, bias=qkv_bias, mode="signed", act_bits=ab)
        self.q_bin = ElasticBinarizer("signed", (h, 1, dh), bits=ab)
        self.k_bin = ElasticBinarizer("signed", (h, 1, dh), bits=ab)
        self.v_bin = ElasticBinarizer("signed", (h, 1, dh), bits=ab)
        self.attn_bin = ElasticBinarizer("unsigned", (h, 1, 1), bits=ab)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = BiTLinear(dim, dim, mode="signed", act_bits=ab)
        self.proj_drop = nn.Dropout(proj_drop)
        self.deployed = False
        self.recording = False
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.deployed:
            scores = (
                torch.ops.bvit.binary_matmul(
                    q,
                    k.transpose(-2, -1),
                    self.d_q_shift,
                    self.d_q_alpha,
                    self.d_k_shift,
                    self.d_k_alpha,
                    "signed",
                    "signed",
                )
                * self.scale
            )
        else:
            cq, aq = self.q_bin.codes(q)
            ck, ak = self.k_bin.codes(k)
            scores = codes_matmul(cq, ck.transpose(-2, -1), aq, ak) * self.scale
        attn = self.attn_drop(scores.softmax(dim=-1))
        if self.deployed:
            out = torch.ops.bvit.binary_matmul(
                attn, v, self.d_a_shift, self.d_a_alpha, self.d_v_shift, self.d_v_alpha, "unsigned", "signed"
            )
        else:
            ca, aa = self.attn_bin.codes(attn)
            cv, av = self.v_bin.codes(v)
            out = codes_matmul(ca, cv, aa, av)
        if self.recording:
            self.last = {"q": q, "k": k, "attn_scores": scores}
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(out))

    @torch.no_grad()
    def freeze_(self) -> None:
        """Binarizer parameters -> the deploy ops' shift/alpha buffers; the binarizers are removed."""
        self.register_buffer("d_q_shift", self.q_bin.deploy_shift())
        self.register_buffer("d_q_alpha", self.q_bin.deploy_alpha().reshape(1))
        self.register_buffer("d_k_shift", self.k_bin.deploy_shift().transpose(-2, -1).contiguous())
        self.register_buffer("d_k_alpha", self.k_bin.deploy_alpha().reshape(1))
        self.register_buffer("d_a_shift", self.attn_bin.deploy_shift())
        self.register_buffer("d_a_alpha", self.attn_bin.deploy_alpha().reshape(1))
        self.register_buffer("d_v_shift", self.v_bin.deploy_shift())
        self.register_buffer("d_v_alpha", self.v_bin.deploy_alpha().reshape(1))
        del self.q_bin, self.k_bin, self.v_bin, self.attn_bin
        self.deployed = True

    def macs(self, n_tokens: int) -> dict[str, int]:
        """MACs of the two attention products for one image: binary (q k^T and A v)."""
        return {"binary": 2 * self.num_heads * n_tokens * n_tokens * self.head_dim}


class BiTMlp(nn.Module):
    """fc1 (signed input) -> GELU -> fc2 (unsigned input), both BiT binary linears."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, act_bits: int = 1) -> None:
        super().__init__()
        self.fc1 = BiTLinear(dim, hidden, mode="signed", act_bits=act_bits)
        self.act = nn.GELU()
        self.fc2 = BiTLinear(hidden, dim, mode="unsigned", act_bits=act_bits)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class RecordingBlock(Block):
    """vit.Block with its attention and MLP replaced by ``make_attn(cfg)`` / ``make_mlp(cfg)``; records
    its output as "hidden" and its attention's q, k, scores when ``recording``."""

    def __init__(
        self,
        cfg: ViTConfig,
        drop_path_p: float,
        make_attn: Callable[[ViTConfig], nn.Module],
        make_mlp: Callable[[ViTConfig], nn.Module],
    ) -> None:
        super().__init__(cfg, drop_path_p)
        self.attn = make_attn(cfg)
        self.mlp = make_mlp(cfg)
        self.recording = False
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.recording:
            self.last = {"hidden": x, **getattr(self.attn, "last", {})}
        return x


class BiTVisionTransformer(StudentMixin, VisionTransformer):
    """The BiT student: the DeiT backbone with BiT blocks (module docstring). ``act_bits`` = 2 builds the
    W1A2 intermediate of BiT's distillation chain (FP -> W1A2 -> W1A1): it trains and teaches, and is not
    deployable (its freeze is refused)."""

    def __init__(self, cfg: ViTConfig, act_bits: int = 1) -> None:
        self.act_bits = int(act_bits)
        super().__init__(cfg)

    def freeze(self) -> BiTVisionTransformer:
        """Deployment mode (StudentMixin.freeze); refused, before anything changes, for a W1A2 model."""
        if self.act_bits != 1:
            from bvit_edge.quant.bit import ElasticBinarizer

            ElasticBinarizer(bits=self.act_bits)._check_deployable()
        return super().freeze()

    def make_block(self, cfg: ViTConfig, drop_path_p: float, index: int) -> nn.Module:
        ab = self.act_bits
        return RecordingBlock(
            cfg,
            drop_path_p,
            lambda c: BiTAttention(c.embed_dim, c.num_heads, c.qkv_bias, c.attn_drop_rate, c.drop_rate, act_bits=ab),
            lambda c: BiTMlp(c.embed_dim, int(c.embed_dim * c.mlp_ratio), c.drop_rate, act_bits=ab),
        )


def _bit(geometry: dict[str, Any], act_bits: int = 1, **kw: Any) -> BiTVisionTransformer:
    return BiTVisionTransformer(ViTConfig(**{**geometry, **kw}), act_bits=act_bits)


@register_model(family="bit", precision="w1a1")
def bit_deit_tiny_patch16_224(**kw: Any) -> BiTVisionTransformer:
    return _bit(_TINY, **kw)


@register_model(family="bit", precision="w1a1")
def bit_deit_small_patch16_224(**kw: Any) -> BiTVisionTransformer:
    return _bit(_SMALL, **kw)


@register_model(family="bit", precision="w1a1", **_DEMO_CFG)
def bit_demo_patch4_32(**kw: Any) -> BiTVisionTransformer:
    return _bit({**DEMO_GEOMETRY, "num_classes": 10}, **kw)


@register_model(family="bit", precision="w1a1", **_TEST_CFG)
def bit_test_patch4_16(**kw: Any) -> BiTVisionTransformer:
    return _bit(TEST_GEOMETRY, **kw)


__all__ = ["BiTAttention", "BiTMlp", "BiTVisionTransformer", "RecordingBlock", "student_from_teacher"]
