"""Distillation methods: each trains from a teacher; bad combinations stop early with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bvit_edge.errors import CheckpointError, ConfigError
from bvit_edge.training import train
from bvit_edge.training.methods import get_method

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMON = dict(data="digits", per_class=6, epochs=1, batch_size=20, threads=1, image_size=16)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t"
    train(method="fp", model="deit_test_patch4_16", out=str(out), **COMMON)
    return out


@pytest.mark.parametrize(
    "method,model",
    [
        ("gsb", "gsb_test_patch4_16"),
        ("bit", "bit_test_patch4_16"),
        ("binaryvit", "binaryvit_test_patch4_16"),
        ("acdbit", "acdbit_test_patch4_16"),
    ],
)
def test_each_method_trains_from_the_teacher_and_checkpoints(
    method: str, model: str, teacher: Path, tmp_path: Path
) -> None:
    res = train(
        method=method, model=model, teacher=str(teacher / "best"), out=str(tmp_path / method), stage="all", **COMMON
    )
    assert res.steps == 3 and res.epochs_done == 1
    best = tmp_path / method / ("stage2" if method == "gsb" else "") / "best" / "config.json"
    cfg = json.loads(best.read_text())
    assert cfg["method"] == method and cfg["train_config"]["teacher"] == str(teacher / "best")
    if method == "gsb":
        s1 = json.loads((tmp_path / "gsb" / "stage1" / "best" / "config.json").read_text())
        assert s1["model_kwargs"]["stage"] == 1 and cfg["model_kwargs"]["stage"] == 2
        assert cfg["train_config"]["init"].endswith("stage1/best")


def test_gsb_loss_is_half_label_ce_plus_half_teacher_argmax_ce(teacher: Path) -> None:
    from bvit_edge.models import create_model
    from bvit_edge.training.checkpoint import load_model
    from bvit_edge.training.config import resolve_config

    torch.manual_seed(0)
    t, _ = load_model(teacher / "best")
    student = create_model("gsb_test_patch4_16", stage=2)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    cfg = resolve_config({"method": "gsb"})
    loss, _ = get_method("gsb").loss(student, x, y, t, cfg)
    cls, dist = student(x)
    with torch.no_grad():
        t_lab = t(x).argmax(1)
    want = 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(dist, t_lab)
    torch.testing.assert_close(loss, want)


def test_binaryvit_loss_is_soft_cross_entropy_to_the_teacher(teacher: Path) -> None:
    from bvit_edge.models import create_model
    from bvit_edge.training.checkpoint import load_model
    from bvit_edge.training.config import resolve_config

    torch.manual_seed(0)
    t, _ = load_model(teacher / "best")
    student = create_model("binaryvit_test_patch4_16")
    x = torch.randn(3, 3, 16, 16)
    loss, logits = get_method("binaryvit").loss(
        student, x, torch.zeros(3, dtype=torch.long), t, resolve_config({"method": "binaryvit"})
    )
    with torch.no_grad():
        p = F.softmax(t(x), -1)
    want = -(p * F.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-6)


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bvit_edge", "train", *args],
        env=ENV,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )


def test_distillation_without_teacher_is_a_clear_usage_error(tmp_path: Path) -> None:
    r = _cli(tmp_path, "--method", "gsb", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--teacher" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_teacher_with_other_classes_or_input_size_is_refused(teacher: Path, tmp_path: Path) -> None:
    r = _cli(
        tmp_path,
        "--method",
        "bit",
        "--model",
        "bit_test_patch4_16",
        "--teacher",
        str(teacher),
        "--image-size",
        "32",
        "--out",
        str(tmp_path / "x"),
    )
    assert r.returncode == 2 and "16x16" in r.stderr and not (tmp_path / "x").exists()
    # A teacher trained for another number of classes: fake one by editing a copy's config.
    import shutil

    other = tmp_path / "other"
    shutil.copytree(teacher / "best", other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["num_classes"] = 7
    (other / "config.json").write_text(json.dumps(cfg))
    # refused when the checkpoint is loaded (its config does not fit its own weights) or by the class check
    with pytest.raises((ConfigError, CheckpointError), match=r"\b7\b"):
        train(method="bit", model="bit_test_patch4_16", teacher=str(other), out=str(tmp_path / "y"), **COMMON)
    assert not (tmp_path / "y").exists()


def test_gsb_stage_two_without_stage_one_checkpoint_is_refused(teacher: Path, tmp_path: Path) -> None:
    r = _cli(
        tmp_path,
        "--method",
        "gsb",
        "--stage",
        "2",
        "--model",
        "gsb_test_patch4_16",
        "--teacher",
        str(teacher),
        "--image-size",
        "16",
        "--out",
        str(tmp_path / "x"),
    )
    assert r.returncode == 2 and "stage-1 checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_bit_distillation_chain_fp_then_w1a2_then_w1a1(teacher: Path, tmp_path: Path) -> None:
    """BiT's multi-distillation chain: a W1A2 student (act_bits=2) from the FP teacher, then the W1A1 student
    from the W1A2 run: it loads as a teacher (its checkpoint records act_bits) and the W1A1 student starts from
    all its parameters (weights, binarizer scales and shifts), with 1-bit binarizers."""
    from bvit_edge.quant.bit import ElasticBinarizer
    from bvit_edge.training.checkpoint import load_model

    w1a2 = tmp_path / "w1a2"
    train(
        method="bit",
        model="bit_test_patch4_16",
        teacher=str(teacher / "best"),
        out=str(w1a2),
        method_options={"act_bits": 2},
        **COMMON,
    )
    cfg = json.loads((w1a2 / "best" / "config.json").read_text())
    assert cfg["model_kwargs"]["act_bits"] == 2
    mid, _ = load_model(w1a2 / "best")
    assert {m.bits for m in mid.modules() if isinstance(m, ElasticBinarizer)} == {2}
    method = get_method("bit")
    student = method.build(
        type("C", (), {"model": "bit_test_patch4_16", "drop_path": 0.0, "method_options": {}})(), 10, 16, mid
    )
    assert torch.equal(student.blocks[0].attn.qkv.weight, mid.blocks[0].attn.qkv.weight)
    bins = [m for m in student.modules() if isinstance(m, ElasticBinarizer)]
    assert bins and all(m.bits == 1 and bool(m.initialized) for m in bins)
    assert torch.equal(student.blocks[0].attn.q_bin.alpha, mid.blocks[0].attn.q_bin.alpha)
    res = train(
        method="bit", model="bit_test_patch4_16", teacher=str(w1a2 / "best"), out=str(tmp_path / "w1a1"), **COMMON
    )
    assert res.steps == 3
    assert json.loads((tmp_path / "w1a1" / "best" / "config.json").read_text())["model_kwargs"].get("act_bits", 1) == 1


def test_act_bits_for_another_method_is_refused(tmp_path: Path) -> None:
    r = _cli(tmp_path, "--method", "gsb", "--act-bits", "2", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "act_bits applies to --method bit" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
