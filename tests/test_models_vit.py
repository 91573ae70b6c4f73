"""The full-precision teacher: timm state_dict layout and logits equal to an independent reference forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bvit_edge.errors import ConfigError
from bvit_edge.models import create_model, list_models, model_default_cfg


def _timm_state_dict(
    rng: np.random.Generator,
    dim: int,
    depth: int,
    heads: int,
    patch: int,
    img: int,
    classes: int,
    distilled: bool,
    mlp_ratio: float = 4.0,
) -> dict[str, np.ndarray]:
    """A random state_dict with exactly timm's vision_transformer / deit key names and shapes."""
    n = (img // patch) ** 2 + (2 if distilled else 1)
    hid = int(dim * mlp_ratio)

    def r(*s: int) -> np.ndarray:
        return (rng.standard_normal(s) * 0.1).astype(np.float32)

    sd = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, n, dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch),
        "patch_embed.proj.bias": r(dim),
    }
    if distilled:
        sd["dist_token"] = r(1, 1, dim)
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + r(dim),
                p + "norm1.bias": r(dim),
                p + "attn.qkv.weight": r(3 * dim, dim),
                p + "attn.qkv.bias": r(3 * dim),
                p + "attn.proj.weight": r(dim, dim),
                p + "attn.proj.bias": r(dim),
                p + "norm2.weight": 1 + r(dim),
                p + "norm2.bias": r(dim),
                p + "mlp.fc1.weight": r(hid, dim),
                p + "mlp.fc1.bias": r(hid),
                p + "mlp.fc2.weight": r(dim, hid),
                p + "mlp.fc2.bias": r(dim),
            }
        )
    sd.update({"norm.weight": 1 + r(dim), "norm.bias": r(dim), "head.weight": r(classes, dim), "head.bias": r(classes)})
    if distilled:
        sd.update({"head_dist.weight": r(classes, dim), "head_dist.bias": r(classes)})
    return sd


def _reference_forward(
    sd: dict[str, np.ndarray], x: np.ndarray, depth: int, heads: int, patch: int, distilled: bool, eps: float = 1e-6
) -> np.ndarray:
    """DeiT's forward written out in float64 numpy from the paper's equations (not from the code under test)."""
    from math import erf

    def ln(t, w, b):
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + eps) * w + b

    gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + erf(v / math.sqrt(2.0))))
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    patches = x.reshape(b, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * patch * patch)
    wpe = sd["patch_embed.proj.weight"].reshape(sd["patch_embed.proj.weight"].shape[0], -1)
    t = patches @ wpe.T + sd["patch_embed.proj.bias"]
    prefix = [np.repeat(sd["cls_token"], b, 0)]
    if distilled:
        prefix.append(np.repeat(sd["dist_token"], b, 0))
    t = np.concatenate([*prefix, t], 1) + sd["pos_embed"]
    dim = t.shape[-1]
    dh = dim // heads
    for i in range(depth):
        p = f"blocks.{i}."
        y = ln(t, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        qkv = y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        q, k, v = np.split(qkv, 3, axis=-1)

        def split(z: np.ndarray) -> np.ndarray:
            return z.reshape(b, -1, heads, dh).transpose(0, 2, 1, 3)

        q, k, v = split(q), split(k), split(v)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = s / s.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(b, -1, dim)
        t = t + o @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        y = ln(t, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        hdn = gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        t = t + hdn @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    t = ln(t, sd["norm.weight"], sd["norm.bias"])
    logits = t[:, 0] @ sd["head.weight"].T + sd["head.bias"]
    if distilled:
        logits = (logits + t[:, 1] @ sd["head_dist.weight"].T + sd["head_dist.bias"]) / 2
    return logits


@pytest.mark.parametrize("distilled", [False, True])
def test_timm_layout_state_dict_loads_and_logits_match_reference(distilled: bool) -> None:
    rng = np.random.default_rng(0)
    dim, depth, heads, patch, img, classes = 32, 2, 4, 4, 16, 7
    sd = _timm_state_dict(rng, dim, depth, heads, patch, img, classes, distilled)
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    model = create_model(
        name, img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, num_classes=classes
    )
    own = model.state_dict()
    assert set(own) == set(sd), "key set differs from timm's layout"
    for k, v in sd.items():
        assert tuple(own[k].shape) == v.shape, k
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    model.eval()
    x = rng.standard_normal((3, 3, img, img)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).double().numpy()
    want = _reference_forward(sd, x.astype(np.float64), depth, heads, patch, distilled)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_deit_small_distilled_has_timm_shapes() -> None:
    model = create_model("deit_small_distilled_patch16_224")
    sd = model.state_dict()
    assert sd["pos_embed"].shape == (1, 198, 384)
    assert sd["blocks.11.attn.qkv.weight"].shape == (1152, 384)
    assert sd["head_dist.weight"].shape == (1000, 384)
    assert len(sd) == 4 + 2 + 12 * 12 + 2 + 4 - 1  # tokens/pos/patch + blocks + norm + two heads
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.4e6, rel=0.01)


def test_distilled_model_returns_both_heads_in_training_and_their_mean_in_eval() -> None:
    torch.manual_seed(0)
    model = create_model("deit_test_patch4_16", distilled=True)
    x = torch.randn(2, 3, 16, 16)
    model.train()
    cls_logits, dist_logits = model(x)
    model.eval()
    with torch.no_grad():
        mean = model(x)
        feats = model.forward_features(x)
    torch.testing.assert_close(mean, (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2)
    assert cls_logits.shape == dist_logits.shape == (2, 10)


def test_registry_lists_variants_and_refuses_unknown_names() -> None:
    names = list_models("deit_*")
    for n in [
        "deit_tiny_patch16_224",
        "deit_small_patch16_224",
        "deit_base_patch16_224",
        "deit_small_distilled_patch16_224",
        "deit_demo_patch4_32",
    ]:
        assert n in names
    assert model_default_cfg("demo")["input_size"] == (3, 32, 32)
    with pytest.raises(ConfigError, match="Unknown model"):
        create_model("deit_huge_patch99")


def test_demo_model_runs_forward_backward() -> None:
    model = create_model("demo")
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10)
    assert model.patch_embed.proj.weight.grad is not None
