"""GSB student models: every registered variant trains and freezes; predictions never depend on the batch;
freeze() reproduces the eval outputs (the only allowed differences come from exact zeros, counted here);
initialisation from a teacher and from stage 1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bvit_edge.errors import ConfigError
from bvit_edge.models import create_model, list_models
from bvit_edge.models.gsb import GSBLinear, load_from_stage1, student_from_teacher
from bvit_edge.models.vit import TEST_GEOMETRY, VisionTransformer, ViTConfig
from bvit_edge.quant.deploy import FrozenBinaryLinear
from bvit_edge.quant.gsb import AttentionGroupBinarizer, SignedBinarizer, UnsignedBinarizer, ValueGroupBinarizer

torch.set_num_threads(1)
TEST = "gsb_test_patch4_16"


def _randomize_offsets(model: torch.nn.Module, seed: int = 0) -> None:
    """Trained models have non-zero biases and shifts; at init they are all 0, which makes exact-zero
    integer dots (and so sgn(0) cases) common. Give them small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "norm" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _ready(stage: int, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = create_model(TEST, stage=stage, **kw)
    _randomize_offsets(m, seed)
    m.train()
    m(torch.randn(8, 3, 16, 16))  # lazy initialisation of every scale, in training mode
    return m.eval()


def test_all_gsb_variants_are_registered() -> None:
    assert set(list_models("gsb_*")) >= {
        "gsb_deit_tiny_patch16_224",
        "gsb_deit_small_patch16_224",
        "gsb_demo_patch4_32",
        "gsb_test_patch4_16",
    }


@pytest.mark.parametrize("stage", [1, 2])
def test_test_variant_runs_forward_backward_and_freeze(stage: int) -> None:
    torch.manual_seed(0)
    m = create_model(TEST, stage=stage)
    m.train()
    cls, dist = m(torch.randn(4, 3, 16, 16))
    assert cls.shape == dist.shape == (4, 10)
    (cls.logsumexp(1).sum() + dist.logsumexp(1).sum()).backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert grads["blocks.0.mlp.fc1.weight"] is not None and grads["blocks.0.mlp.fc1.weight"].abs().sum() > 0
    if stage == 2:
        assert grads["blocks.0.attn.quant_v.alpha1"] is not None
        assert grads["patch_embed.proj.alpha"] is not None
    m.freeze()
    assert m.is_frozen and not any(p.requires_grad for p in m.parameters())
    with torch.no_grad():
        out = m(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if stage == 2:
        assert isinstance(m.blocks[0].mlp.fc2, FrozenBinaryLinear) and m.blocks[0].mlp.fc2.mode == "unsigned"
    with pytest.raises(ConfigError, match="frozen"):
        m.train()


@pytest.mark.parametrize("name", ["gsb_demo_patch4_32"])
def test_demo_variant_runs_both_stages(name: str) -> None:
    for stage in (1, 2):
        m = create_model(name, stage=stage)
        m.train()
        out = m(torch.randn(2, 3, 32, 32))
        assert out[0].shape == (2, 10)
        assert m.default_cfg["family"] == "gsb"


def test_deit_geometries_build_with_their_token_count() -> None:
    m = create_model("gsb_deit_tiny_patch16_224", stage=2, num_classes=100)
    assert m.blocks[0].attn.move_att.bias.shape == (3, 198, 198)
    assert m.blocks[0].norm1.eps == 1e-12 and m.head_dist is not None


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("frozen", [False, True])
def test_prediction_is_the_same_alone_and_inside_any_batch(stage: int, frozen: bool) -> None:
    m = _ready(stage, seed=1)
    if frozen:
        m.freeze()
    torch.manual_seed(2)
    x = torch.randn(5, 3, 16, 16)
    x[3] *= 8  # an outlier image must not change the others' masks
    with torch.no_grad():
        batch = m(x)
        perm = torch.tensor([4, 2, 0, 3, 1])
        shuffled = m(x[perm])
        for i in range(5):
            alone = m(x[i : i + 1])[0]
            np.testing.assert_allclose(alone.numpy(), batch[i].numpy(), rtol=1e-5, atol=1e-6)
            assert alone.argmax() == batch[i].argmax()
        np.testing.assert_allclose(shuffled.numpy(), batch[perm].numpy(), rtol=1e-5, atol=1e-6)


def _count_ties(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Binarizer inputs where training and deployment may legitimately differ: x' == 0 exactly for the
    signed ones (sgn(0) = 0 vs +1), x' == alpha/2 exactly for the unsigned ones."""
    count = 0

    def pre(mod, args):
        nonlocal count
        t = args[0]
        if isinstance(mod, (SignedBinarizer, ValueGroupBinarizer)):
            count += int((t == 0).sum())
        elif isinstance(mod, UnsignedBinarizer):
            count += int((t == mod.alpha / 2).sum())
        elif isinstance(mod, AttentionGroupBinarizer):
            count += int((t == mod.alpha1 / 2).sum())

    hooks = [
        mod.register_forward_pre_hook(pre)
        for mod in model.modules()
        if isinstance(mod, (SignedBinarizer, UnsignedBinarizer, ValueGroupBinarizer, AttentionGroupBinarizer))
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return count


@pytest.mark.parametrize("stage", [1, 2])
def test_freeze_reproduces_eval_outputs_when_there_are_no_exact_zeros(stage: int) -> None:
    m = _ready(stage, seed=3)
    x = torch.randn(6, 3, 16, 16)
    ties = _count_ties(m, x)
    assert ties == 0, f"{ties} exact ties at binarizer inputs; this seed cannot compare eval and frozen"
    with torch.no_grad():
        ref = m(x)
        out = copy.deepcopy(m).freeze()(x)
    # the training model computes every binary product in the deployment ops' order: bit-identical
    np.testing.assert_array_equal(out.numpy(), ref.numpy())


def test_freeze_differs_only_by_sgn0_on_exact_zeros_in_a_binary_linear() -> None:
    torch.manual_seed(4)
    lin = GSBLinear(6, 3, input_mode="signed")
    x = torch.randn(4, 6)
    x[1, 2] = 0.0
    x[3, 0] = 0.0
    x[3, 5] = 0.0
    lin(x)  # init alpha
    with torch.no_grad():
        ref = lin(x)
        out = lin.frozen()(x)
    zero_rows = (x == 0).any(1)
    assert int((x == 0).sum()) == 3 and zero_rows.tolist() == [False, True, False, True]
    np.testing.assert_array_equal(out[~zero_rows].numpy(), ref[~zero_rows].numpy())
    # deployment reads each zero as +1: the difference is alpha * m * sum over zero positions of sgn(W_c)
    wc = (lin.weight - lin.weight.double().mean().float()).detach()
    ws = torch.where(wc < 0, -1.0, 1.0)
    m = lin.weight.detach().double().abs().mean().item()
    expected = lin.quant.alpha.item() * m * ((x == 0).float() @ ws.t())
    np.testing.assert_allclose((out - ref).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_student_from_teacher_copies_matching_weights_and_reports_the_rest() -> None:
    teacher = VisionTransformer(ViTConfig(**{**TEST_GEOMETRY, "distilled": True}))
    student = create_model(TEST, stage=1)
    rep = student_from_teacher(student, teacher)
    assert torch.equal(student.blocks[1].attn.qkv.weight, teacher.blocks[1].attn.qkv.weight)
    assert torch.equal(student.blocks[0].mlp.fc2.weight, teacher.blocks[0].mlp.fc2.weight)
    assert torch.equal(student.head_dist.weight, teacher.head_dist.weight)
    assert "patch_embed.norm.weight" in rep.missing and "blocks.0.attn.move_q.bias" in rep.missing
    assert not rep.unexpected and not rep.mismatched
    assert "loaded" in str(rep)


def test_stage2_loads_stage1_non_strictly_and_lists_unmatched_keys() -> None:
    s1 = _ready(1, seed=5)
    s2 = create_model(TEST, stage=2)
    rep = load_from_stage1(s2, s1.state_dict())
    assert torch.equal(s2.blocks[0].mlp.fc1.weight, s1.blocks[0].mlp.fc1.weight)
    assert torch.equal(s2.blocks[1].attn.move_v.bias, s1.blocks[1].attn.move_v.bias)
    assert torch.equal(s2.pos_embed, s1.pos_embed)
    assert "patch_embed.norm.running_mean" in rep.unexpected
    assert "blocks.0.attn.move_att.bias" in rep.missing and "blocks.0.attn.quant_q.alpha" in rep.missing
    assert s2.load_from_checkpoint_state(s1.state_dict()).loaded == rep.loaded  # the trainer's hook


def test_corrected_grads_flag_switches_the_alpha_gradient() -> None:
    grads = {}
    for corrected in (True, False):
        torch.manual_seed(6)
        m = create_model(TEST, stage=2, corrected_grads=corrected)
        assert m.blocks[0].attn.quant_q.corrected is corrected
        cls, dist = m(torch.randn(3, 3, 16, 16))
        (cls.sum() + dist.sum()).backward()
        grads[corrected] = m.blocks[0].mlp.fc1.quant.alpha.grad.clone()
    assert not torch.allclose(grads[True], grads[False])


def test_bad_stage_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="stage"):
        create_model(TEST, stage=3)


def test_binary_linear_gradients_follow_the_ste_formulas() -> None:
    """GSBLinear computes its value in the deployment order; its gradients must still be those of
    y = alpha sgn(x + move) @ (m sgn(W_c))^T + b with the signed STE and the identity BWN backward."""
    torch.manual_seed(7)
    lin = GSBLinear(10, 4, input_mode="signed")
    with torch.no_grad():
        lin.move.bias.normal_(0, 0.1)
        lin.bias.normal_()
    x = torch.randn(3, 5, 10, requires_grad=True)
    lin(x)  # init alpha
    lin.zero_grad()
    g = torch.randn(3, 5, 4)
    (lin(x) * g).sum().backward()

    alpha = lin.quant.alpha.item()
    xs = (x + lin.move.bias).detach().double().numpy()
    wn = lin.weight.detach().double().numpy()
    w_hat = np.abs(wn).mean() * np.sign(wn - wn.mean())
    x_hat = alpha * np.sign(xs)
    gn = g.double().numpy()
    d_xhat = gn @ w_hat
    inside = np.abs(xs) <= alpha
    np.testing.assert_allclose(x.grad.numpy(), d_xhat * inside, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lin.move.bias.grad.numpy(), (d_xhat * inside).sum((0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.weight.grad.numpy(), np.einsum("bnk,bno->ok", x_hat, gn), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.bias.grad.numpy(), gn.sum((0, 1)), rtol=1e-5)
    d_alpha = (d_xhat * (np.sign(xs) - xs / alpha * inside)).sum() / np.sqrt(xs.size)
    np.testing.assert_allclose(lin.quant.alpha.grad.item(), d_alpha, rtol=1e-4, atol=1e-6)


def test_attention_gradients_equal_those_of_plain_products() -> None:
    """The exact-order products (q_hat k_hat^T, and A_hat v_hat at eval) carry plain matmul gradients."""
    from bvit_edge.quant.gsb import product_with_value

    torch.manual_seed(8)
    a = torch.randn(2, 3, 4, 5, requires_grad=True)
    b = torch.randn(3, 5, 6, requires_grad=True)  # broadcast over the batch
    g = torch.randn(2, 3, 4, 6)
    (product_with_value(a, b, (a @ b).detach()) * g).sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    ((a @ b) * g).sum().backward()
    np.testing.assert_allclose(ga.numpy(), a.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(gb.numpy(), b.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_freeze_before_any_forward_is_refused_without_touching_the_model() -> None:
    m = create_model(TEST, stage=2)
    with pytest.raises(ConfigError, match="never initialised"):
        m.freeze()
    assert not m.is_frozen and isinstance(m.blocks[0].attn.qkv, GSBLinear)
