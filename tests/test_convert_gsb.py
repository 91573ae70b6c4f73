"""Converting checkpoints of the official GSB code: a state_dict built here with the official names and
shapes (the official layout, docs/methods.md) for stage 1 and stage 2, read from a .pth holding argparse.Namespace
under weights_only=True; unmatched keys are refused with their full list."""

from __future__ import annotations

import argparse

import pytest
import torch

from bvit_edge.errors import CheckpointError
from bvit_edge.models.convert_gsb import convert_gsb_official, convert_to_checkpoint

torch.set_num_threads(1)
D, H, DEPTH, P, IMG, C = 32, 2, 2, 4, 16, 10
T = (IMG // P) ** 2 + 2


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape) * 0.05


def official_stage2(
    depth: int = DEPTH, D: int = D, H: int = H, P: int = P, T: int = T, C: int = C
) -> dict[str, torch.Tensor]:
    s: dict[str, torch.Tensor] = {"cls_token": _r(1, 1, D), "dist_token": _r(1, 1, D), "pos_embed": _r(1, T, D)}
    s.update(
        {
            "patch_embed.proj.weight": _r(D, 3, P, P),
            "patch_embed.proj.bias": _r(D),
            "patch_embed.proj.alpha": torch.rand(D) * 0.01 + 0.001,
            "patch_embed.proj.init_state": torch.ones(1),
        }
    )
    for i in range(depth):
        b = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            s[b + n + ".weight"], s[b + n + ".bias"] = 1 + _r(D), _r(D)
        for n in ("query", "key", "value", "value2", "value3", "attn", "attn2", "attn3"):
            s[b + f"attn.clip_{n}"] = torch.rand(()) + 0.1
        for n, (o, k) in {
            "attn.qkv": (3 * D, D),
            "attn.proj": (D, D),
            "mlp.fc1": (4 * D, D),
            "mlp.fc2": (D, 4 * D),
        }.items():
            s[b + n + ".weight"], s[b + n + ".bias"] = _r(o, k), _r(o)
            s[b + n + ".input_clip_val"] = torch.rand(()) + 0.1
            s[b + n + ".move.bias"] = _r(k)
        for n in ("q", "k", "v"):
            s[b + f"attn.move_{n}.bias"] = _r(H, 1, D // H)
        s[b + "attn.move_att.bias"] = _r(H, T, T) * 0.01
    s["norm.weight"], s["norm.bias"] = 1 + _r(D), _r(D)
    for h in ("head", "head_dist"):
        s.update(
            {
                f"{h}.weight": _r(C, D),
                f"{h}.bias": _r(C),
                f"{h}.weight_clip_val": torch.tensor(0.003),
                f"{h}.input_clip_val": torch.tensor(0.05),
                f"{h}.move.bias": _r(D),
            }
        )
    return s


def official_stage1(depth: int = DEPTH) -> dict[str, torch.Tensor]:
    s: dict[str, torch.Tensor] = {"cls_token": _r(1, 1, D), "dist_token": _r(1, 1, D), "pos_embed": _r(1, T, D)}
    s.update({"patch_embed.proj.weight": _r(D, 3, P, P), "patch_embed.proj.bias": _r(D)})
    s.update(
        {
            "patch_embed.norm.weight": 1 + _r(D),
            "patch_embed.norm.bias": _r(D),
            "patch_embed.norm.running_mean": _r(D),
            "patch_embed.norm.running_var": 1 + torch.rand(D),
            "patch_embed.norm.num_batches_tracked": torch.tensor(100),
        }
    )
    for i in range(depth):
        b = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            s[b + n + ".weight"], s[b + n + ".bias"] = 1 + _r(D), _r(D)
        for n, (o, k) in {"attn.qkv": (3 * D, D), "attn.proj": (D, D)}.items():
            s[b + n + ".weight"], s[b + n + ".bias"] = _r(o, k), _r(o)
        for n in ("q", "k", "v"):
            s[b + f"attn.move_{n}.bias"] = _r(H, 1, D // H)
        for n, (o, k) in {"mlp.fc1": (4 * D, D), "mlp.fc2": (D, 4 * D)}.items():
            s[b + n + ".weight"], s[b + n + ".bias"] = _r(o, k), _r(o)
            s[b + n + ".weight_clip_val"] = torch.tensor([-2.5, 2.5])
            s[b + n + ".move.bias"] = _r(k)
    s["norm.weight"], s["norm.bias"] = 1 + _r(D), _r(D)
    for h in ("head", "head_dist"):
        s[f"{h}.weight"], s[f"{h}.bias"] = _r(C, D), _r(C)
    return s


def test_official_key_counts_match_the_published_deit_s_checkpoints() -> None:
    # 403 and 244 keys for depth 12 (docs/methods.md, "GSB"): our fixtures follow the same layout
    assert len(official_stage2(12)) == 403
    assert len(official_stage1(12)) == 244


def test_stage2_checkpoint_converts_every_key(tmp_path) -> None:
    torch.manual_seed(0)
    state = official_stage2()
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "model": state,
            "optimizer": {},
            "lr_scheduler": {},
            "epoch": 299,
            "scaler": {},
            "args": argparse.Namespace(lr=1e-3, model="gsb"),
        },
        path,
    )
    model, rep = convert_gsb_official(path)
    assert (
        rep.stage == 2
        and rep.geometry["embed_dim"] == D
        and rep.geometry["depth"] == DEPTH
        and rep.geometry["img_size"] == IMG
    )
    a = model.blocks[1].attn
    assert a.quant_q.alpha.item() == state["blocks.1.attn.clip_query"].item()
    assert a.quant_v.alpha3.item() == state["blocks.1.attn.clip_value3"].item()
    assert a.quant_attn.alpha2.item() == state["blocks.1.attn.clip_attn2"].item()
    assert torch.equal(a.move_att.bias, state["blocks.1.attn.move_att.bias"])
    assert model.blocks[0].mlp.fc2.quant.alpha.item() == state["blocks.0.mlp.fc2.input_clip_val"].item()
    assert torch.equal(model.blocks[0].mlp.fc2.move.bias, state["blocks.0.mlp.fc2.move.bias"])
    assert model.head_dist.weight_quant.alpha.item() == pytest.approx(0.003)
    assert torch.equal(model.patch_embed.proj.alpha, state["patch_embed.proj.alpha"])
    assert all(bool(v) for k, v in model.state_dict().items() if k.endswith("initialized"))
    assert len(rep.renamed) == DEPTH * 12 + 4
    alpha_before = a.quant_q.alpha.item()
    with torch.no_grad():
        out = model(torch.randn(2, 3, IMG, IMG))
    assert out.shape == (2, C) and a.quant_q.alpha.item() == alpha_before  # no lazy re-initialisation
    frozen = model.freeze()
    with torch.no_grad():
        assert frozen(torch.randn(1, 3, IMG, IMG)).shape == (1, C)


def test_stage1_checkpoint_converts_and_drops_the_unused_weight_clip_buffers() -> None:
    state = official_stage1()
    model, rep = convert_gsb_official({"model": state})
    assert rep.stage == 1
    assert sorted(rep.dropped) == sorted(k for k in state if k.endswith("weight_clip_val"))
    assert torch.equal(model.patch_embed.norm.running_var, state["patch_embed.norm.running_var"])
    assert torch.equal(model.blocks[1].mlp.fc1.weight, state["blocks.1.mlp.fc1.weight"])


def test_unmatched_keys_are_refused_with_their_full_list() -> None:
    state = official_stage2()
    state["blocks.0.attn.clip_extra"] = torch.tensor(1.0)
    state["blocks.1.mlp.fc3.weight"] = torch.zeros(3)
    del state["blocks.1.attn.clip_value2"]
    with pytest.raises(CheckpointError) as err:
        convert_gsb_official(state)
    msg = str(err.value)
    assert "blocks.0.attn.clip_extra" in msg and "blocks.1.mlp.fc3.weight" in msg
    assert "blocks.1.attn.quant_v.alpha2" in msg


def test_a_non_gsb_file_is_a_clear_checkpoint_error(tmp_path) -> None:
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only"):
        convert_gsb_official(bad)
    with pytest.raises(CheckpointError, match="not a GSB checkpoint"):
        convert_gsb_official({"model": {"pos_embed": torch.zeros(1, 18, 32)}})


def test_converted_checkpoint_folder_reloads_with_the_same_outputs(tmp_path) -> None:
    from bvit_edge.training.checkpoint import load_model

    torch.manual_seed(1)
    src = tmp_path / "gsb.pth"
    torch.save({"model": official_stage2(), "args": argparse.Namespace(epochs=300)}, src)
    convert_to_checkpoint(src, tmp_path / "ckpt")
    model, _ = convert_gsb_official(src)
    again, cfg = load_model(tmp_path / "ckpt")
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert cfg["source"]["from"] == "gsb-official"
    assert cfg["image_size"] == IMG and cfg["classes"] == [str(i) for i in range(C)] and len(cfg["mean"]) == 3


def test_a_deit_s_stage2_checkpoint_maps_all_403_keys_onto_gsb_deit_small() -> None:
    torch.manual_seed(2)
    state = official_stage2(depth=12, D=384, H=6, P=16, T=198, C=100)
    assert len(state) == 403
    model, rep = convert_gsb_official({"model": state})
    g = rep.geometry
    assert (g["img_size"], g["patch_size"], g["embed_dim"], g["depth"], g["num_heads"], g["mlp_ratio"]) == (
        224,
        16,
        384,
        12,
        6,
        4.0,
    )
    assert model.blocks[11].attn.move_att.bias.shape == (6, 198, 198) and model.head.out_features == 100
    assert len(rep.renamed) == 12 * 12 + 4 and not rep.dropped
