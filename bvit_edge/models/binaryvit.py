"""BinaryViT students (Le & Li, CVPR 2023 workshops; docs/methods.md "BinaryViT"): flat DeiT variants whose four
architectural changes can each be switched on (for the ablation), and the 4-stage pyramid.

Binary unit (every binary linear)::

    y = RPReLU( Norm( BinLinear(x + shift) ) + shortcut(x) )

BinLinear has per-row BWN weights and ApproxSign inputs (:class:`bvit_edge.quant.binaryvit.BinaryViTLinear`).
Norm is a LayerNorm over each group of ``in`` output channels when ``out = G * in`` (so the fused qkv
normalises q, k and v separately, as three separate q/k/v layers would), else over all outputs. shortcut:
identity when out = in, the input repeated G times when out = G * in (qkv, fc1), the mean of each group of
G adjacent channels when in = G * out (fc2). Decision: the MLP has no GELU — RPReLU after each unit is the
non-linearity, as in the ReActNet-style blocks BinaryViT builds on.

Attention: c_q = ApproxSign(q + s_q), c_k = ApproxSign(k + s_k) (shifts [H, 1, d_h], alpha 1);
scores = (c_q c_k^T) / sqrt(d_h); A = softmax(scores); A_hat = alpha * 1[A > alpha/2] (alpha init 0.005);
c_v = ApproxSign(v + s_v); out = alpha * (c_A c_v), then the proj unit.

Architecture flags (the published gains, in order): ``global_pool`` (head on the mean of the patch tokens
instead of the cls token), ``multi_pool`` (average-pooling branches 1x3, 3x1, 1x5, 5x1, stride 1, on the
patch-token grid, each behind a LayerScale init 0, added to the attention branch), ``affine_residual``
(an affine LayerScale a x + b, a init 0.1, b 0, before each residual add), ``pyramid`` (4 stages; the
patch embedding stays float and stage transitions are float 2x2 stride-2 convolutions + LayerNorm —
BinaryViT's 70.6% setting uses a full-precision patch embedding; our merges are float too).

Frozen: the linears become ``FrozenBinaryLinear`` (alpha 1, w_scale = m_n, shift = s); the products call
``torch.ops.bvit.binary_matmul`` (signed x signed with shifts s_q / s_k^T and alphas 1; unsigned x signed with
a_alpha = alpha, b_alpha = 1, shift s_v). Norms, RPReLU, shortcuts, pooling stay float beside the ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bvit_edge.models.bit import student_from_teacher
from bvit_edge.models.hooks import StudentMixin
from bvit_edge.models.registry import register_model
from bvit_edge.models.vit import DEMO_GEOMETRY, TEST_GEOMETRY, DropPath, PatchEmbed, VisionTransformer, ViTConfig
from bvit_edge.quant.binaryvit import AttnBinarizer, BinaryViTLinear, LayerScale, RPReLU, approx_sign
from bvit_edge.quant.bit import codes_matmul

POOL_KERNELS: tuple[tuple[int, int], ...] = ((1, 3), (3, 1), (1, 5), (5, 1))
_DEMO_CFG = dict(input_size=(3, 32, 32), num_classes=10, crop_pct=1.0, interpolation="bilinear")
_TEST_CFG = dict(input_size=(3, 16, 16), num_classes=10, crop_pct=1.0, interpolation="bilinear")


class UnitPost(nn.Module):
    """The float part of a binary unit: y -> RPReLU(GroupNorm_LN(y) + shortcut(x)) (module docstring)."""

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.groups = out_features // in_features if out_features % in_features == 0 else 1
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.act = RPReLU(out_features)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        i, o = self.in_features, self.out_features
        if o == i:
            return x
        if o % i == 0:
            return x.repeat(*([1] * (x.ndim - 1)), o // i)
        if i % o == 0:
            return x.reshape(*x.shape[:-1], o, i // o).mean(dim=-1)
        return torch.zeros(*x.shape[:-1], o, dtype=x.dtype, device=x.device)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        c = self.out_features // g
        yn = F.layer_norm(y.reshape(*y.shape[:-1], g, c), (c,), eps=self.eps).reshape(y.shape)
        return self.act(yn * self.weight + self.bias + self.shortcut(x))


class BinaryViTAttention(nn.Module):
    """BinaryViT attention (module docstring); qkv/proj keep the timm names, their float tails are *_post."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        h, dh = num_heads, self.head_dim
        self.qkv = BinaryViTLinear(dim, 3 * dim, bias=qkv_bias)
        self.qkv_post = UnitPost(dim, 3 * dim)
        self.q_shift = nn.Parameter(torch.zeros(h, 1, dh))
        self.k_shift = nn.Parameter(torch.zeros(h, 1, dh))
        self.v_shift = nn.Parameter(torch.zeros(h, 1, dh))
        self.attn_bin = AttnBinarizer(0.005)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = BinaryViTLinear(dim, dim)
        self.proj_post = UnitPost(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.deployed = False
        self.recording = False
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv_post(self.qkv(x), x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.deployed:
            one = self.d_one
            scores = (
                torch.ops.bvit.binary_matmul(
                    q, k.transpose(-2, -1), self.d_q_shift, one, self.d_k_shift, one, "signed", "signed"
                )
                * self.scale
            )
        else:
            one = torch.ones((), dtype=q.dtype)
            cq, ck = approx_sign(q + self.q_shift), approx_sign(k + self.k_shift)
            scores = codes_matmul(cq, ck.transpose(-2, -1), one, one) * self.scale
        attn = self.attn_drop(scores.softmax(dim=-1))
        if self.deployed:
            out = torch.ops.bvit.binary_matmul(
                attn, v, self.d_zero, self.d_a_alpha, self.d_v_shift, self.d_one, "unsigned", "signed"
            )
        else:
            ca, aa = self.attn_bin.codes(attn)
            out = codes_matmul(ca, approx_sign(v + self.v_shift), aa, one)
        if self.recording:
            self.last = {"q": q, "k": k, "attn_scores": scores}
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj_post(self.proj(out), out))

    @torch.no_grad()
    def freeze_(self) -> None:
        """Shifts and alpha -> deploy buffers (the matmul shifts/alphas of the module docstring)."""
        self.register_buffer("d_q_shift", self.q_shift.detach().clone())
        self.register_buffer("d_k_shift", self.k_shift.detach().transpose(-2, -1).contiguous())
        self.register_buffer("d_v_shift", self.v_shift.detach().clone())
        self.register_buffer("d_a_alpha", self.attn_bin.deploy_alpha())
        self.register_buffer("d_one", torch.ones(1))
        self.register_buffer("d_zero", torch.zeros(1, 1, 1))
        del self.q_shift, self.k_shift, self.v_shift, self.attn_bin
        self.deployed = True

    def macs(self, n_tokens: int) -> dict[str, int]:
        """The two attention products for one image are binary."""
        return {"binary": 2 * self.num_heads * n_tokens * n_tokens * self.head_dim}


class BinaryViTMlp(nn.Module):
    """fc1 unit (D -> hidden) then fc2 unit (hidden -> D); RPReLU is the non-linearity."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = BinaryViTLinear(dim, hidden)
        self.fc1_post = UnitPost(dim, hidden)
        self.fc2 = BinaryViTLinear(hidden, dim)
        self.fc2_post = UnitPost(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.fc1_post(self.fc1(x), x))
        return self.drop(self.fc2_post(self.fc2(h), h))


class MultiPool(nn.Module):
    """Sum of average-pooling branches (1x3, 3x1, 1x5, 5x1; stride 1, 'same' size, padding excluded from the
    mean) over the patch-token grid, each times a LayerScale (init 0). Prefix tokens get 0."""

    def __init__(self, dim: int, grid: tuple[int, int], n_prefix: int) -> None:
        super().__init__()
        self.grid, self.n_prefix = grid, n_prefix
        self.scales = nn.ModuleList([LayerScale(dim, 0.0) for _ in POOL_KERNELS])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h, w = self.grid
        patches = x[:, self.n_prefix :].transpose(1, 2).reshape(b, d, h, w)
        total = torch.zeros_like(x[:, self.n_prefix :])
        for (kh, kw), ls in zip(POOL_KERNELS, self.scales):
            pooled = F.avg_pool2d(patches, (kh, kw), stride=1, padding=(kh // 2, kw // 2), count_include_pad=False)
            total = total + ls(pooled.reshape(b, d, h * w).transpose(1, 2))
        return torch.cat([torch.zeros_like(x[:, : self.n_prefix]), total], dim=1)


class BinaryViTBlock(nn.Module):
    """x = x + DP(LS(attn(LN x) + pools(LN x))); x = x + DP(LS(mlp(LN x))) (LS and pools as flagged)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        grid: tuple[int, int],
        n_prefix: int,
        drop_path_p: float = 0.0,
        multi_pool: bool = False,
        affine_residual: bool = False,
        qkv_bias: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = BinaryViTAttention(dim, num_heads, qkv_bias)
        self.pools = MultiPool(dim, grid, n_prefix) if multi_pool else None
        self.ls1 = LayerScale(dim, 0.1, affine=True) if affine_residual else None
        self.drop_path = DropPath(drop_path_p)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = BinaryViTMlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, 0.1, affine=True) if affine_residual else None
        self.recording = False
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        branch = self.attn(h)
        if self.pools is not None:
            branch = branch + self.pools(h)
        if self.ls1 is not None:
            branch = self.ls1(branch)
        x = x + self.drop_path(branch)
        branch = self.mlp(self.norm2(x))
        if self.ls2 is not None:
            branch = self.ls2(branch)
        x = x + self.drop_path(branch)
        if self.recording:
            self.last = {"hidden": x, **self.attn.last}
        return x


class BinaryViTFlat(StudentMixin, VisionTransformer):
    """Flat BinaryViT on the DeiT backbone; flags in ``cfg.extra`` (global_pool, multi_pool, affine_residual)."""

    def make_block(self, cfg: ViTConfig, drop_path_p: float, index: int) -> nn.Module:
        g = cfg.img_size // cfg.patch_size
        return BinaryViTBlock(
            cfg.embed_dim,
            cfg.num_heads,
            cfg.mlp_ratio,
            (g, g),
            cfg.num_prefix_tokens,
            drop_path_p,
            multi_pool=bool(cfg.extra.get("multi_pool", False)),
            affine_residual=bool(cfg.extra.get("affine_residual", False)),
            qkv_bias=cfg.qkv_bias,
            eps=cfg.norm_eps,
        )

    def forward_head(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg.extra.get("global_pool", False):
            return super().forward_head(x)
        pooled = x[:, self.num_prefix_tokens :].mean(dim=1)
        cls_logits = self.head(pooled)
        if self.head_dist is None:
            return cls_logits
        dist_logits = self.head_dist(x[:, 1])
        return (cls_logits, dist_logits) if self.training else (cls_logits + dist_logits) / 2


class PatchMerge(nn.Module):
    """Stage transition (float): tokens [B, h*w, C] -> 2x2 stride-2 conv -> [B, h*w/4, C'] -> LayerNorm."""

    def __init__(self, dim_in: int, dim_out: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim_out, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(dim_out, eps=eps)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        y = self.proj(x.transpose(1, 2).reshape(b, c, *grid))
        return self.norm(y.flatten(2).transpose(1, 2))


class BinaryViTPyramid(StudentMixin, nn.Module):
    """The 4-stage BinaryViT: float patch embedding + position embedding, stages of BinaryViT blocks (with
    multi-pool and affine residual as flagged) separated by float patch merges, LayerNorm, global average
    pool, head. Composes :class:`bvit_edge.models.vit.PatchEmbed` and the blocks above."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 8, 4),
        heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        multi_pool: bool = True,
        affine_residual: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not len(dims) == len(depths) == len(heads):
            raise ValueError("dims, depths and heads need one entry per stage")
        g = img_size // patch_size
        if g % (2 ** (len(dims) - 1)):
            raise ValueError(f"a {g}x{g} token grid cannot be halved {len(dims) - 1} times")
        self.config = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            dims=tuple(dims),
            depths=tuple(depths),
            heads=tuple(heads),
            mlp_ratio=mlp_ratio,
        )
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dims[0])
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g, dims[0]))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.merges = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.grids: list[tuple[int, int]] = []
        i = 0
        for s, (d, depth, h) in enumerate(zip(dims, depths, heads)):
            if s > 0:
                self.merges.append(PatchMerge(dims[s - 1], d, norm_eps))
                g //= 2
            self.grids.append((g, g))
            self.stages.append(
                nn.Sequential(
                    *[
                        BinaryViTBlock(
                            d, h, mlp_ratio, (g, g), 0, dpr[i + j], multi_pool, affine_residual, eps=norm_eps
                        )
                        for j in range(depth)
                    ]
                )
            )
            i += depth
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    def record_blocks(self) -> list[nn.Module]:
        return [blk for stage in self.stages for blk in stage]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for s, stage in enumerate(self.stages):
            if s > 0:
                x = self.merges[s - 1](x, self.grids[s - 1])
            x = stage(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=1))


_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
PYRAMID_GEOMETRY = dict(img_size=224, patch_size=4, dims=(64, 128, 256, 512), depths=(3, 4, 8, 4), heads=(1, 2, 4, 8))
#: Scaled-down pyramids: 32x32 (demo; patch-2 stem -> 16x16 -> 8 -> 4 -> 2 tokens) and 16x16 (unit tests).
PYRAMID_DEMO_GEOMETRY = dict(
    img_size=32, patch_size=2, dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), heads=(1, 2, 2, 4), num_classes=10
)
PYRAMID_TEST_GEOMETRY = dict(
    img_size=16, patch_size=2, dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), heads=(1, 1, 2, 2), num_classes=10
)
_FLAGS = ("global_pool", "multi_pool", "affine_residual")


def _flat(
    geometry: dict[str, Any],
    pyramid_geometry: dict[str, Any],
    global_pool: bool = True,
    multi_pool: bool = True,
    affine_residual: bool = True,
    pyramid: bool = False,
    **kw: Any,
) -> nn.Module:
    """A flat BinaryViT with the flags, or (pyramid=True) the pyramid of the matching size (which always
    pools globally; multi_pool / affine_residual pass through)."""
    if pyramid:
        pkw = {
            k: v for k, v in kw.items() if k in ("img_size", "in_chans", "num_classes", "drop_path_rate", "mlp_ratio")
        }
        unknown = set(kw) - set(pkw)
        if unknown:
            raise TypeError(f"the pyramid variant does not take {sorted(unknown)}")
        return BinaryViTPyramid(**{**pyramid_geometry, **pkw}, multi_pool=multi_pool, affine_residual=affine_residual)
    extra = dict(kw.pop("extra", {}))
    extra.update(global_pool=global_pool, multi_pool=multi_pool, affine_residual=affine_residual)
    return BinaryViTFlat(ViTConfig(**{**geometry, **kw}, extra=extra))


@register_model(family="binaryvit", precision="w1a1")
def binaryvit_deit_tiny_patch16_224(**kw: Any) -> nn.Module:
    """Flat BinaryViT, DeiT-Tiny geometry. Flags: global_pool, multi_pool, affine_residual, pyramid."""
    return _flat(_TINY, PYRAMID_GEOMETRY, **kw)


@register_model(family="binaryvit", precision="w1a1")
def binaryvit_deit_small_patch16_224(**kw: Any) -> nn.Module:
    """Flat BinaryViT, DeiT-Small geometry. Flags: global_pool, multi_pool, affine_residual, pyramid."""
    return _flat(_SMALL, PYRAMID_GEOMETRY, **kw)


@register_model(family="binaryvit", precision="w1a1", **_DEMO_CFG)
def binaryvit_demo_patch4_32(**kw: Any) -> nn.Module:
    return _flat({**DEMO_GEOMETRY, "num_classes": 10}, PYRAMID_DEMO_GEOMETRY, **kw)


@register_model(family="binaryvit", precision="w1a1", **_TEST_CFG)
def binaryvit_test_patch4_16(**kw: Any) -> nn.Module:
    return _flat(TEST_GEOMETRY, PYRAMID_TEST_GEOMETRY, **kw)


@register_model(family="binaryvit", precision="w1a1")
def binaryvit_pyramid_patch4_224(**kw: Any) -> BinaryViTPyramid:
    """The published pyramid: dims 64/128/256/512, depths 3/4/8/4, heads 1/2/4/8, patch-4 stem at 224."""
    return BinaryViTPyramid(**{**PYRAMID_GEOMETRY, **kw})


@register_model(family="binaryvit", precision="w1a1", **_DEMO_CFG)
def binaryvit_pyramid_demo_patch2_32(**kw: Any) -> BinaryViTPyramid:
    return BinaryViTPyramid(**{**PYRAMID_DEMO_GEOMETRY, **kw})


@register_model(family="binaryvit", precision="w1a1", **_TEST_CFG)
def binaryvit_pyramid_test_patch2_16(**kw: Any) -> BinaryViTPyramid:
    return BinaryViTPyramid(**{**PYRAMID_TEST_GEOMETRY, **kw})


__all__ = [
    "BinaryViTAttention",
    "BinaryViTBlock",
    "BinaryViTFlat",
    "BinaryViTMlp",
    "BinaryViTPyramid",
    "MultiPool",
    "PatchMerge",
    "UnitPost",
    "student_from_teacher",
]
