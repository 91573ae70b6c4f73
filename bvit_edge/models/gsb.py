"""GSB students (Group Superposition Binarization, Gao et al., Neural Networks 2024; docs/methods.md "GSB").

A DeiT (cls + distillation token, two heads, mean of both at eval) built on
:class:`bvit_edge.models.vit.VisionTransformer` through its ``make_*`` hooks, so the state_dict layout stays
timm's (a teacher's weights load by name). LayerNorm eps 1e-12.

Stage 1 (``stage=1``): only fc1/fc2 weights are binary (BWN), their inputs float plus a learnable shift;
qkv/proj plain Linear with shifts ``move_{q,k,v}`` on q, k, v; float attention; float patch embedding conv
followed by BatchNorm2d (``patch_embed.norm``); float heads; GELU not clipped (as the official stage-1 code).

Stage 2 (``stage=2``), the full GSB model:
    patch embedding  8-bit LSQ conv weights (per output channel), float image
    qkv, proj, fc1   BWN weights, input x + move, signed binarizer alpha sgn(.)
    q, k             q + move_q ([H, 1, d_h]), signed binarizers
    v                v + move_v, Value group superposition (3 groups)
    attention        A = softmax(q_hat k_hat^T / sqrt(d_h)) + B (move_att, [H, N, N]), dropout, attention
                     group superposition (3 groups); out = A_hat v_hat
    fc2              input GELU(.) clipped to [-10, 10], + move, unsigned binarizer
    heads            W8A8 (8-bit per-tensor weights and inputs, input shift)
``corrected_grads=False`` trains the ablation "GSB without corrected gradients" (BiT's first-term alpha
gradient). Masks use per-sample max/min (a deliberate departure, see :mod:`bvit_edge.quant.gsb`).

``model.freeze()`` switches to deployment: ``torch.ops.bvit`` ops over packed bits (see
:mod:`bvit_edge.quant.deploy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bvit_edge.errors import CheckpointError, ConfigError
from bvit_edge.models.registry import register_model
from bvit_edge.models.vit import DEMO_GEOMETRY, TEST_GEOMETRY, DropPath, VisionTransformer, ViTConfig
from bvit_edge.quant.deploy import (
    DEFAULT_GSB_RATIOS,
    FrozenBinaryLinear,
    FrozenInt8Conv2d,
    FrozenInt8Linear,
    bwn_pack,
)
from bvit_edge.quant.freeze import ensure_trainable, freeze
from bvit_edge.quant.gsb import (
    AttentionGroupBinarizer,
    LearnableShift,
    SignedBinarizer,
    UnsignedBinarizer,
    ValueGroupBinarizer,
    plane_product,
    product_with_value,
)
from bvit_edge.quant.lsq import LSQConv2d, W8A8Linear
from bvit_edge.quant.weights import bwn_center, bwn_quantize, bwn_scale

GELU_CLIP = 10.0
LN_EPS = 1e-12

# ---------------------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------------------


class GSBLinear(nn.Linear):
    """BWN linear with an input shift: y = Q_in(x + move) @ W_hat^T + b, W_hat = mean|W| sgn(W - mean W).

    ``input_mode``: "signed" (alpha sgn), "unsigned" (alpha [x' > alpha/2]) or None (float input, stage 1).
    State: ``weight``, ``bias``, ``move.bias`` [in], ``quant.{alpha, initialized}`` (binary inputs only).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        input_mode: str | None = "signed",
        corrected: bool = True,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if input_mode not in ("signed", "unsigned", None):
            raise ConfigError(f"GSBLinear input_mode must be 'signed', 'unsigned' or None (got {input_mode!r}).")
        self.input_mode = input_mode
        self.move = LearnableShift(in_features)
        if input_mode == "signed":
            self.quant: SignedBinarizer | UnsignedBinarizer | None = SignedBinarizer(corrected)
        elif input_mode == "unsigned":
            self.quant = UnsignedBinarizer()
        else:
            self.quant = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.move(x)
        w_hat = bwn_quantize(self.weight)
        if self.quant is None:
            return F.linear(x, w_hat, self.bias)
        x_hat = self.quant(x)
        # Value computed as the deployment op does: acc = codes(x) . sgn(W_c) exactly, then
        # acc * (alpha * m) + bias; gradients are those of x_hat @ w_hat^T + bias.
        with torch.no_grad():
            acc = torch.matmul(self.quant.codes(x_hat), torch.sign(bwn_center(self.weight)).t())
            value = acc * (self.quant.deploy_alphas()[0] * bwn_scale(self.weight))
        y = product_with_value(x_hat, w_hat.t(), value)
        return y if self.bias is None else y + self.bias

    def frozen(self) -> nn.Module:
        """Deployment module: bvit::binary_linear over packed sign bits (binary input), or, for a float input
        (stage 1), the ±1 weight as int8 codes with the BWN scale."""
        if self.quant is None:
            codes = torch.where(bwn_center(self.weight) < 0, -1, 1).to(torch.int8)
            return FrozenInt8Linear(codes, bwn_scale(self.weight).float(), self.bias, shift=self.move.bias)
        if not self.quant.is_initialized:
            raise ConfigError("GSBLinear.frozen(): the input scale was never initialised; run a forward pass first.")
        w_bits, w_scale = bwn_pack(self.weight)
        alpha = self.quant.deploy_alphas()[0]
        assert self.input_mode is not None  # set whenever quant is (__init__)
        return FrozenBinaryLinear(w_bits, w_scale, self.move.bias, alpha, self.bias, self.input_mode, self.in_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, input={self.input_mode or 'float'}"


class GSBAttention(nn.Module):
    """Self-attention of a GSB block (stage 1: float with q/k/v shifts; stage 2: fully binary)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_tokens: int,
        stage: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        corrected: bool = True,
        ratios: Sequence[float] = DEFAULT_GSB_RATIOS,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads, self.head_dim, self.num_tokens = num_heads, dim // num_heads, num_tokens
        self.scale = self.head_dim**-0.5
        self.stage = stage
        self.ratios = tuple(float(r) for r in ratios)
        self.deployed = False
        if stage == 1:
            self.qkv: nn.Module = nn.Linear(dim, 3 * dim, bias=qkv_bias)
            self.proj: nn.Module = nn.Linear(dim, dim)
        else:
            self.qkv = GSBLinear(dim, 3 * dim, bias=qkv_bias, input_mode="signed", corrected=corrected)
            self.proj = GSBLinear(dim, dim, input_mode="signed", corrected=corrected)
        self.move_q = LearnableShift(num_heads, 1, self.head_dim)
        self.move_k = LearnableShift(num_heads, 1, self.head_dim)
        self.move_v = LearnableShift(num_heads, 1, self.head_dim)
        if stage == 2:
            self.move_att = LearnableShift(num_heads, num_tokens, num_tokens)
            self.quant_q = SignedBinarizer(corrected)
            self.quant_k = SignedBinarizer(corrected)
            self.quant_v = ValueGroupBinarizer(self.ratios, corrected)
            self.quant_attn = AttentionGroupBinarizer(self.ratios)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        if self.stage == 2 and n != self.num_tokens:
            raise ConfigError(
                f"GSB attention was built for {self.num_tokens} tokens (its bias B is [H, N, N]); got {n}. "
                "Use the image size the model was built with."
            )
        q, k, v = self._split(x)
        if self.deployed:
            return self._forward_deployed(q, k, v, b, n, d)
        q, k, v = self.move_q(q), self.move_k(k), self.move_v(v)
        if self.stage == 1:
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            attn = self.attn_drop(attn)
        else:
            v_in = v
            q, k, v = self.quant_q(q), self.quant_k(k), self.quant_v(v)
            with torch.no_grad():  # q_hat k_hat^T in the deployment op's order: (a_q a_k) * intdot
                qk = (self.quant_q.deploy_alphas()[0] * self.quant_k.deploy_alphas()[0]) * torch.matmul(
                    self.quant_q.codes(q), self.quant_k.codes(k).transpose(-2, -1)
                )
            attn = product_with_value(q, k.transpose(-2, -1), qk)
            attn = (attn * self.scale).softmax(dim=-1)
            attn = self.attn_drop(self.move_att(attn))
            a_in = attn
            attn = self.quant_attn(attn)
            if self.training:
                out = attn @ v
            else:  # eval: A_hat v_hat as the sum of plane products, exactly as the frozen model
                pa, aa = self.quant_attn.planes(a_in)
                pv, va = self.quant_v.planes(v_in)  # v_in is already shifted
                out = product_with_value(attn, v, plane_product(pa, aa, pv, va))
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(out))

    def _forward_deployed(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: int, n: int, d: int
    ) -> torch.Tensor:
        ops = torch.ops.bvit
        scores = ops.binary_matmul(
            q,
            k.transpose(-2, -1),
            self.q_shift,
            self.q_alpha,
            self.k_shift_t,
            self.k_alpha,
            "signed",
            "signed",
            list(self.ratios),
        )
        attn = (scores * self.scale).softmax(dim=-1)
        out = ops.binary_matmul(
            attn,
            v,
            self.att_bias,
            self.attn_alphas,
            self.v_shift,
            self.v_alphas,
            "gsb_unsigned",
            "gsb_signed",
            list(self.ratios),
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def freeze_(self) -> None:
        """Stage 2: store shifts and clamped alphas as buffers, drop the quantizer modules, freeze qkv/proj."""
        if self.stage == 1 or self.deployed:
            return
        for qz in (self.quant_q, self.quant_k, self.quant_v, self.quant_attn):
            if not qz.is_initialized:
                raise ConfigError(
                    "GSBAttention.freeze_(): the activation scales were never initialised; run a forward pass first."
                )
        with torch.no_grad():
            self.register_buffer("q_shift", self.move_q.bias.detach().clone())
            self.register_buffer("k_shift_t", self.move_k.bias.detach().transpose(-2, -1).clone())
            self.register_buffer("v_shift", self.move_v.bias.detach().clone())
            self.register_buffer("att_bias", self.move_att.bias.detach().clone())
            self.register_buffer("q_alpha", self.quant_q.deploy_alphas())
            self.register_buffer("k_alpha", self.quant_k.deploy_alphas())
            self.register_buffer("v_alphas", self.quant_v.deploy_alphas())
            self.register_buffer("attn_alphas", self.quant_attn.deploy_alphas())
        for name in ("move_q", "move_k", "move_v", "move_att", "quant_q", "quant_k", "quant_v", "quant_attn"):
            delattr(self, name)
        self.qkv = self.qkv.frozen()  # type: ignore[operator]  # stage 2: a GSBLinear, typed as its stage-1 nn.Module
        self.proj = self.proj.frozen()  # type: ignore[operator]  # stage 2: a GSBLinear (as qkv)
        self.deployed = True


class GSBMlp(nn.Module):
    """fc1 (signed binary input) -> erf-GELU (clipped to [-10, 10] in stage 2) -> fc2 (unsigned binary input)."""

    def __init__(self, dim: int, hidden: int, stage: int, drop: float = 0.0, corrected: bool = True) -> None:
        super().__init__()
        self.stage = stage
        self.fc1 = GSBLinear(dim, hidden, input_mode="signed" if stage == 2 else None, corrected=corrected)
        self.act = nn.GELU()
        self.fc2 = GSBLinear(hidden, dim, input_mode="unsigned" if stage == 2 else None, corrected=corrected)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        if self.stage == 2:
            x = torch.clamp(x, -GELU_CLIP, GELU_CLIP)
        return self.drop(self.fc2(self.drop(x)))


class GSBBlock(nn.Module):
    """Pre-norm block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))); LayerNorm eps 1e-12."""

    def __init__(
        self, cfg: ViTConfig, drop_path_p: float, stage: int, corrected: bool, ratios: Sequence[float]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = GSBAttention(
            cfg.embed_dim,
            cfg.num_heads,
            cfg.num_tokens,
            stage,
            cfg.qkv_bias,
            cfg.attn_drop_rate,
            cfg.drop_rate,
            corrected,
            ratios,
        )
        self.drop_path = DropPath(drop_path_p)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = GSBMlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), stage, cfg.drop_rate, corrected)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GSBPatchEmbed(nn.Module):
    """Patchify conv: stage 1 float conv + BatchNorm2d (``norm``); stage 2 8-bit LSQ conv, no norm."""

    def __init__(self, cfg: ViTConfig, stage: int) -> None:
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ConfigError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}.")
        self.img_size, self.patch_size = cfg.img_size, cfg.patch_size
        self.num_patches = cfg.num_patches
        p = cfg.patch_size
        if stage == 1:
            self.proj: nn.Module = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)
            self.norm: nn.Module = nn.BatchNorm2d(cfg.embed_dim)
        else:
            self.proj = LSQConv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ConfigError(
                f"Input image is {tuple(x.shape[-2:])}, the model expects {self.img_size}x{self.img_size}."
            )
        return self.norm(self.proj(x)).flatten(2).transpose(1, 2)

    def freeze_(self) -> None:
        if isinstance(self.proj, LSQConv2d):
            codes, scale = self.proj.int8_codes_and_scale()
            self.proj = FrozenInt8Conv2d(codes, scale, self.proj.bias, self.proj.stride, self.proj.padding)


# ---------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------


class GSBVisionTransformer(VisionTransformer):
    """GSB student (see the module docstring). ``cfg.extra`` holds ``stage``, ``corrected_grads``, ``gsb_ratios``."""

    def __init__(self, cfg: ViTConfig) -> None:
        stage = int(cfg.extra.get("stage", 2))
        if stage not in (1, 2):
            raise ConfigError(f"GSB stage must be 1 or 2 (got {cfg.extra.get('stage')!r}).")
        self.stage = stage
        self.corrected_grads = bool(cfg.extra.get("corrected_grads", True))
        self.gsb_ratios = tuple(float(r) for r in cfg.extra.get("gsb_ratios", DEFAULT_GSB_RATIOS))
        super().__init__(cfg)
        self.is_frozen = False

    def make_patch_embed(self, cfg: ViTConfig) -> nn.Module:
        return GSBPatchEmbed(cfg, self.stage)

    def make_block(self, cfg: ViTConfig, drop_path_p: float, index: int) -> nn.Module:
        return GSBBlock(cfg, drop_path_p, self.stage, self.corrected_grads, self.gsb_ratios)

    def make_head(self, cfg: ViTConfig) -> nn.Module:
        if cfg.num_classes <= 0:
            return nn.Identity()
        if self.stage == 1:
            return nn.Linear(cfg.embed_dim, cfg.num_classes)
        return W8A8Linear(cfg.embed_dim, cfg.num_classes)

    def freeze(self) -> GSBVisionTransformer:
        """Deployment mode in place (see :func:`bvit_edge.quant.freeze.freeze`)."""
        return freeze(self)

    def train(self, mode: bool = True) -> GSBVisionTransformer:
        if mode:
            ensure_trainable(self)
        return super().train(mode)

    def load_from_checkpoint_state(self, state: Mapping[str, torch.Tensor]) -> LoadReport:
        """Non-strict initialisation from another checkpoint (a teacher, or stage 1 for stage 2)."""
        return load_matching(self, state)


# ---------------------------------------------------------------------------------------------------------
# initialisation from a teacher / stage 1
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a non-strict load copied and what it could not match."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the source
    unexpected: list[str] = field(default_factory=list)  # in the source, not in the model
    mismatched: list[str] = field(default_factory=list)  # same name, different shape

    def __str__(self) -> str:
        def few(xs: list[str]) -> str:
            return ", ".join(xs[:12]) + (f" ... (+{len(xs) - 12})" if len(xs) > 12 else "")

        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"{len(self.missing)} model keys not in the source (kept as initialised): {few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} source keys unused: {few(self.unexpected)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatches skipped: {few(self.mismatched)}")
        return "; ".join(parts)


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor]) -> LoadReport:
    """Copy every tensor of ``state`` whose name and shape match ``model``'s state_dict; report the rest."""
    if getattr(model, "is_frozen", False):
        raise CheckpointError("Cannot load weights into a frozen model; load before freeze().")
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # a training checkpoint dict
    own = model.state_dict()
    rep = LoadReport()
    usable: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        if k not in own:
            rep.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            rep.mismatched.append(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}")
        else:
            usable[k] = v
    rep.loaded = sorted(usable)
    rep.missing = sorted(k for k in own if k not in usable and not any(m.startswith(k + " ") for m in rep.mismatched))
    model.load_state_dict(usable, strict=False)
    return rep


def student_from_teacher(student: nn.Module, teacher: nn.Module | Mapping[str, torch.Tensor]) -> LoadReport:
    """Initialise a GSB student from a full-precision DeiT teacher (same names: tokens, position embedding,
    patch conv, LayerNorms, qkv/proj/fc weights and biases, heads), non-strict; returns the report."""
    state = teacher.state_dict() if isinstance(teacher, nn.Module) else teacher
    return load_matching(student, state)


def load_from_stage1(student2: nn.Module, stage1_state: Mapping[str, torch.Tensor] | nn.Module) -> LoadReport:
    """Initialise a stage-2 GSB model from a stage-1 model or state_dict (non-strict, as the official
    recipe): BatchNorm of the stage-1 patch embedding is dropped, new quantizer scales are initialised lazily
    from the first batch. Returns the report (unmatched keys listed)."""
    state = stage1_state.state_dict() if isinstance(stage1_state, nn.Module) else stage1_state
    return load_matching(student2, state)


# ---------------------------------------------------------------------------------------------------------
# registered variants
# ---------------------------------------------------------------------------------------------------------

_GSB_CFG = dict(family="gsb", precision="w1a1")
_DEMO_CFG: dict[str, Any] = dict(
    input_size=(3, 32, 32), num_classes=10, crop_pct=1.0, interpolation="bilinear", **_GSB_CFG
)


def _gsb(
    geometry: dict[str, Any],
    stage: int = 2,
    corrected_grads: bool = True,
    gsb_ratios: Sequence[float] = DEFAULT_GSB_RATIOS,
    **kw: Any,
) -> GSBVisionTransformer:
    extra = {
        **kw.pop("extra", {}),
        "stage": int(stage),
        "corrected_grads": bool(corrected_grads),
        "gsb_ratios": [float(r) for r in gsb_ratios],
    }
    base = {"distilled": True, "norm_eps": LN_EPS, **geometry}
    return GSBVisionTransformer(ViTConfig(**{**base, **kw, "extra": extra}))


@register_model(**_GSB_CFG)
def gsb_deit_tiny_patch16_224(stage: int = 2, corrected_grads: bool = True, **kw: Any) -> GSBVisionTransformer:
    """GSB on DeiT-Tiny (dim 192, 3 heads, depth 12), drop-path 0.1."""
    return _gsb(dict(embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1), stage, corrected_grads, **kw)


@register_model(**_GSB_CFG)
def gsb_deit_small_patch16_224(stage: int = 2, corrected_grads: bool = True, **kw: Any) -> GSBVisionTransformer:
    """GSB on DeiT-Small (dim 384, 6 heads, depth 12), the paper's backbone, drop-path 0.1."""
    return _gsb(dict(embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1), stage, corrected_grads, **kw)


@register_model(**_DEMO_CFG)
def gsb_demo_patch4_32(stage: int = 2, corrected_grads: bool = True, **kw: Any) -> GSBVisionTransformer:
    """GSB on the demo geometry (32x32, patch 4, dim 96, depth 4, 3 heads), distilled, 10 classes."""
    return _gsb({**DEMO_GEOMETRY, "num_classes": 10}, stage, corrected_grads, **kw)


@register_model(input_size=(3, 16, 16), num_classes=10, crop_pct=1.0, interpolation="bilinear", **_GSB_CFG)
def gsb_test_patch4_16(stage: int = 2, corrected_grads: bool = True, **kw: Any) -> GSBVisionTransformer:
    """Tiny GSB for unit tests (16x16, patch 4, dim 32, depth 2, 2 heads, 10 classes)."""
    return _gsb(dict(TEST_GEOMETRY), stage, corrected_grads, **kw)


__all__ = [
    "GSBAttention",
    "GSBBlock",
    "GSBLinear",
    "GSBMlp",
    "GSBPatchEmbed",
    "GSBVisionTransformer",
    "LoadReport",
    "load_from_stage1",
    "load_matching",
    "student_from_teacher",
]
