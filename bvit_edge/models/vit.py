"""Full-precision DeiT-style Vision Transformer (the teacher), in timm's state_dict layout.

Keys and shapes match timm's ``vision_transformer`` / ``deit`` models (``cls_token``, ``dist_token``,
``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``, ``head``, ``head_dist``), so a timm DeiT checkpoint saved to a local file loads with
``load_state_dict`` and gives the same logits.

Forward: tokens = [cls, (dist), patches] + pos_embed -> depth x Block -> LayerNorm.
Block: x = x + DropPath(Attn(LN(x))); x = x + DropPath(MLP(LN(x))),
Attn = proj(softmax(q k^T / sqrt(d_h)) v), MLP = fc2(GELU(fc1(x))).
Heads: non-distilled -> head(x_cls). Distilled -> (head(x_cls), head_dist(x_dist)) in training and their
mean at eval, as DeiT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bvit_edge.models.registry import register_alias, register_model


@dataclass
class ViTConfig:
    """Geometry of a ViT; the same dataclass describes teachers and binary students."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    distilled: bool = False
    norm_eps: float = 1e-6
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        return 2 if self.distilled else 1

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples' residual branches with probability ``p``, rescale by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchEmbed(nn.Module):
    """Conv patchify: [B, C, H, W] -> [B, (H/P)(W/P), D]."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, N, D] -> q, k, v each [B, H, N, d_h]."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.split_qkv(x)
        # softmax(q k^T * scale) v, fused (as timm's fused_attn): same result, several times faster on CPU.
        p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> fc2 (timm layout)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ViTConfig, drop_path_p: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn: nn.Module = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.drop_path = DropPath(drop_path_p)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp: nn.Module = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DeiT-style ViT: cls token, optional distillation token, one or two heads.

    Subclasses (the binary students) replace ``make_patch_embed``, ``make_block`` or ``make_head`` and keep
    the token / head logic and the state_dict layout.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.distilled = cfg.distilled
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.patch_embed = self.make_patch_embed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.Sequential(*[self.make_block(cfg, dpr[i], i) for i in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = self.make_head(cfg)
        self.head_dist = self.make_head(cfg) if cfg.distilled else None
        self.init_weights()

    # -- construction hooks -------------------------------------------------------------------------
    def make_patch_embed(self, cfg: ViTConfig) -> nn.Module:
        return PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)

    def make_block(self, cfg: ViTConfig, drop_path_p: float, index: int) -> nn.Module:
        return Block(cfg, drop_path_p)

    def make_head(self, cfg: ViTConfig) -> nn.Module:
        return nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

    def init_weights(self) -> None:
        """timm's init: truncated normal (std 0.02) for tokens, position embedding and Linear weights."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- forward ------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image [B, C, H, W] -> tokens [B, N, D] with prefix tokens and position embedding added."""
        x = self.patch_embed(x)
        b = x.shape[0]
        prefix = [self.cls_token.expand(b, -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(b, -1, -1))
        x = torch.cat([*prefix, x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.embed(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        cls_logits = self.head(x[:, 0])
        if self.head_dist is None:
            return cls_logits
        dist_logits = self.head_dist(x[:, 1])
        if self.training:
            return cls_logits, dist_logits
        return (cls_logits + dist_logits) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


def _vit(cfg_overrides: dict[str, Any], **kwargs: Any) -> VisionTransformer:
    cfg = ViTConfig(**{**cfg_overrides, **kwargs})
    return VisionTransformer(cfg)


_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)
#: The demo geometry for the digits default: 32x32 input, patch 4, dim 96, depth 4, 3 heads.
DEMO_GEOMETRY = dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3)
#: A very small geometry for unit tests (every family registers a ``*_test`` variant of it).
TEST_GEOMETRY = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10)

_DEMO_CFG: dict[str, Any] = dict(input_size=(3, 32, 32), num_classes=10, crop_pct=1.0, interpolation="bilinear")


@register_model()
def deit_tiny_patch16_224(**kw: Any) -> VisionTransformer:
    return _vit(_TINY, **kw)


@register_model()
def deit_small_patch16_224(**kw: Any) -> VisionTransformer:
    return _vit(_SMALL, **kw)


@register_model()
def deit_base_patch16_224(**kw: Any) -> VisionTransformer:
    return _vit(_BASE, **kw)


@register_model()
def deit_tiny_distilled_patch16_224(**kw: Any) -> VisionTransformer:
    return _vit({**_TINY, "distilled": True}, **kw)


@register_model()
def deit_small_distilled_patch16_224(**kw: Any) -> VisionTransformer:
    return _vit({**_SMALL, "distilled": True}, **kw)


@register_model()
def deit_base_distilled_patch16_224(**kw: Any) -> VisionTransformer:
    return _vit({**_BASE, "distilled": True}, **kw)


@register_model(**_DEMO_CFG)
def deit_demo_patch4_32(**kw: Any) -> VisionTransformer:
    """The demo teacher for the digits default (trains in minutes on 2 cores)."""
    return _vit({**DEMO_GEOMETRY, "num_classes": 10}, **kw)


@register_model(**_DEMO_CFG)
def deit_demo_distilled_patch4_32(**kw: Any) -> VisionTransformer:
    return _vit({**DEMO_GEOMETRY, "num_classes": 10, "distilled": True}, **kw)


@register_model(input_size=(3, 16, 16), num_classes=10, crop_pct=1.0, interpolation="bilinear")
def deit_test_patch4_16(**kw: Any) -> VisionTransformer:
    """Tiny variant for unit tests."""
    return _vit(TEST_GEOMETRY, **kw)


register_alias("demo", "deit_demo_patch4_32")


def forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits whatever the head layout: the mean of both heads for distilled models."""
    out = model(x)
    if isinstance(out, tuple):
        return (out[0] + out[1]) / 2
    return out


__all__ = [
    "DEMO_GEOMETRY",
    "TEST_GEOMETRY",
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "ViTConfig",
    "VisionTransformer",
    "forward_logits",
]
