"""Registered BiT / BinaryViT / ACD-BiT students: forward, backward, freeze() (frozen == eval outputs except
on exact zeros, which are counted), recording of intermediates, teacher initialisation, batch independence."""

from __future__ import annotations

import pytest
import torch

import bvit_edge.models.binaryvit as binaryvit_models
import bvit_edge.quant.binaryvit as binaryvit_quant
import bvit_edge.quant.bit as bit_quant
from bvit_edge.errors import ConfigError
from bvit_edge.models import create_model, list_models
from bvit_edge.models.hooks import RECORD_KEYS, record_intermediates

torch.set_num_threads(1)

VARIANTS = [
    ("bit_test_patch4_16", {}),
    ("acdbit_test_patch4_16", {}),
    ("binaryvit_test_patch4_16", {}),
    ("binaryvit_test_patch4_16", dict(global_pool=False, multi_pool=False, affine_residual=False)),
    ("binaryvit_test_patch4_16", dict(global_pool=True, multi_pool=False, affine_residual=False)),
    ("binaryvit_test_patch4_16", dict(global_pool=False, multi_pool=True, affine_residual=False)),
    ("binaryvit_test_patch4_16", dict(global_pool=False, multi_pool=False, affine_residual=True)),
    ("binaryvit_test_patch4_16", dict(pyramid=True)),
    ("binaryvit_pyramid_test_patch2_16", {}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in VARIANTS]


def _model(name: str, kw: dict, seed: int = 0, random_shifts: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = create_model(name, **kw)
    if random_shifts:  # non-zero biases and shifts: no binarizer input is exactly 0 (see the zero counting)
        with torch.no_grad():
            for n, p in m.named_parameters():
                leaf = n.rsplit(".", 1)[-1]
                if leaf in ("bias", "beta", "shift", "b") or leaf.endswith("_shift"):
                    p.normal_(0, 0.05)
    return m


def _image(m: torch.nn.Module, b: int = 3, seed: int = 1) -> torch.Tensor:
    c, h, w = m.default_cfg["input_size"]
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


class ZeroCounter:
    """Counts exact zeros reaching a training-mode sign (sgn(0) = 0 there, +1 when deployed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        orig_sign, orig_approx = bit_quant.sign_code, binaryvit_quant.approx_sign

        def sign_code(xs, alpha):
            self.count += int((xs == 0).sum())
            return orig_sign(xs, alpha)

        def approx_sign(x):
            self.count += int((x == 0).sum())
            return orig_approx(x)

        monkeypatch.setattr(bit_quant, "sign_code", sign_code)
        monkeypatch.setattr(binaryvit_quant, "approx_sign", approx_sign)
        monkeypatch.setattr(binaryvit_models, "approx_sign", approx_sign)

    @staticmethod
    def weight_zeros(model: torch.nn.Module) -> int:
        return sum(int((m.wq.centred(m.weight) == 0).sum()) for m in model.modules() if hasattr(m, "wq"))


def test_all_baseline_families_are_registered():
    names = set(list_models())
    for n in (
        "bit_deit_tiny_patch16_224",
        "bit_deit_small_patch16_224",
        "bit_demo_patch4_32",
        "bit_test_patch4_16",
        "binaryvit_deit_tiny_patch16_224",
        "binaryvit_deit_small_patch16_224",
        "binaryvit_demo_patch4_32",
        "binaryvit_test_patch4_16",
        "binaryvit_pyramid_patch4_224",
        "binaryvit_pyramid_demo_patch2_32",
        "binaryvit_pyramid_test_patch2_16",
        "acdbit_deit_tiny_patch16_224",
        "acdbit_deit_small_patch16_224",
        "acdbit_demo_patch4_32",
        "acdbit_test_patch4_16",
    ):
        assert n in names, n


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_forward_backward_every_parameter_gets_a_gradient(name: str, kw: dict):
    m = _model(name, kw)
    m.train()
    x = _image(m)
    y = m(x)
    assert y.shape == (3, 10)
    y.logsumexp(-1).sum().backward()
    missing = [
        n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing, missing


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_frozen_outputs_equal_eval_outputs_when_no_exact_zeros(name: str, kw: dict, monkeypatch: pytest.MonkeyPatch):
    m = _model(name, kw)
    x = _image(m)
    m.train()
    m(x)  # lazy initialisation of the scales
    m.eval()
    counter = ZeroCounter(monkeypatch)
    with torch.no_grad():
        y_eval = m(x)
    zeros = counter.count + ZeroCounter.weight_zeros(m)
    m.freeze()
    assert m.is_frozen
    with torch.no_grad():
        y_frozen = m(x)
    print(f"{name} {kw}: exact zeros at binarizer inputs = {zeros}, max |diff| = {(y_eval - y_frozen).abs().max():.3g}")
    assert zeros == 0
    assert torch.equal(y_eval, y_frozen)


def test_exact_zeros_are_the_only_source_of_difference(monkeypatch: pytest.MonkeyPatch):
    """With zero biases BiT's q = acc * s is exactly 0 whenever the integer dot is 0: sgn gives 0 in training
    and +1 deployed. The counter sees them; the outputs then differ (and only then)."""
    m = _model("bit_test_patch4_16", {}, random_shifts=False)
    x = _image(m)
    m.train()
    m(x)
    m.eval()
    counter = ZeroCounter(monkeypatch)
    with torch.no_grad():
        y_eval = m(x)
    m.freeze()
    with torch.no_grad():
        y_frozen = m(x)
    print(f"zero-bias BiT: {counter.count} exact zeros, max |diff| {(y_eval - y_frozen).abs().max():.3g}")
    assert counter.count > 0
    assert not torch.equal(y_eval, y_frozen)


def test_frozen_model_uses_the_deploy_ops_and_refuses_training():
    m = _model("bit_test_patch4_16", {})
    m(_image(m))
    m.freeze()
    kinds = {type(mod).__name__ for mod in m.modules()}
    assert "FrozenBinaryLinear" in kinds and "BiTLinear" not in kinds
    assert not any(p.requires_grad for p in m.parameters())
    with pytest.raises(ConfigError, match="frozen"):
        m.train()


@pytest.mark.parametrize(
    "name",
    ["bit_test_patch4_16", "acdbit_test_patch4_16", "binaryvit_test_patch4_16", "binaryvit_pyramid_test_patch2_16"],
)
def test_frozen_prediction_is_batch_independent(name: str):
    m = _model(name, {})
    x = _image(m, b=4)
    m(x)
    m.freeze()
    with torch.no_grad():
        full = m(x)
        alone = torch.cat([m(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kw", VARIANTS[:3] + VARIANTS[-1:], ids=IDS[:3] + IDS[-1:])
def test_record_gives_per_block_tensors(name: str, kw: dict):
    m = _model(name, kw)
    x = _image(m, b=2)
    m.record(True)
    m(x)
    rec = m.recorded
    assert set(rec) == set(RECORD_KEYS)
    n_blocks = len(m.record_blocks())
    for key in RECORD_KEYS:
        assert len(rec[key]) == n_blocks, key
    for i in range(n_blocks):
        b, n, d = rec["hidden"][i].shape
        bq, h, nq, dh = rec["q"][i].shape
        assert (b, bq, nq) == (2, 2, n) and h * dh == d
        assert rec["k"][i].shape == rec["q"][i].shape
        assert rec["attn_scores"][i].shape == (2, h, n, n)
    assert rec["hidden"][-1].requires_grad  # the losses backpropagate through them
    m.record(False)
    m(x)
    assert all(len(v) == 0 for v in m.recorded.values())


def test_record_intermediates_on_the_teacher_matches_a_manual_forward():
    torch.manual_seed(0)
    t = create_model("deit_test_patch4_16").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out, rec = record_intermediates(t, x)
        # manual forward, written out from the timm block equations
        h = t.embed(x)
        for i, blk in enumerate(t.blocks):
            a = blk.attn
            z = blk.norm1(h)
            qkv = torch.nn.functional.linear(z, a.qkv.weight, a.qkv.bias).reshape(
                2, h.shape[1], 3, a.num_heads, a.head_dim
            )
            q, k, _ = qkv.permute(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(-2, -1)) * a.head_dim**-0.5
            torch.testing.assert_close(rec["q"][i], q)
            torch.testing.assert_close(rec["k"][i], k)
            torch.testing.assert_close(rec["attn_scores"][i], scores)
            h = blk(h)
            torch.testing.assert_close(rec["hidden"][i], h)
    torch.testing.assert_close(out, t(x))
    assert all(len(rec[k]) == 2 for k in RECORD_KEYS)


def test_record_intermediates_on_a_student_uses_its_own_recording():
    m = _model("acdbit_test_patch4_16", {})
    _, rec = record_intermediates(m, _image(m, b=2))
    assert len(rec["q"]) == 2 and not m.recording


@pytest.mark.parametrize("name", ["bit_test_patch4_16", "acdbit_test_patch4_16", "binaryvit_test_patch4_16"])
def test_student_from_teacher_copies_the_timm_layout_weights(name: str):
    from bvit_edge.models.bit import student_from_teacher

    torch.manual_seed(0)
    teacher = create_model("deit_test_patch4_16")
    student = create_model(name)
    report = student_from_teacher(student, teacher)
    for key in (
        "blocks.0.attn.qkv.weight",
        "blocks.1.mlp.fc2.weight",
        "patch_embed.proj.weight",
        "pos_embed",
        "head.weight",
    ):
        assert key in report.loaded
        assert torch.equal(student.state_dict()[key], teacher.state_dict()[key])


def test_pyramid_geometry_of_the_published_model():
    m = create_model("binaryvit_pyramid_patch4_224", num_classes=10)
    dims = [stage[0].norm1.normalized_shape[0] for stage in m.stages]
    depths = [len(stage) for stage in m.stages]
    heads = [stage[0].attn.num_heads for stage in m.stages]
    assert (dims, depths, heads) == ([64, 128, 256, 512], [3, 4, 8, 4], [1, 2, 4, 8])
    assert m.grids == [(56, 56), (28, 28), (14, 14), (7, 7)]


def test_unknown_model_argument_is_a_clear_error():
    with pytest.raises(ConfigError):
        create_model("binaryvit_pyramid_test_patch2_16", global_pool=True)
