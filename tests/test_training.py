"""Training the teacher: checkpoints, resume after a kill, schedule, CLI errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bvit_edge.training import resolve_config, train
from bvit_edge.training.checkpoint import load_trainer_state
from bvit_edge.training.schedule import lr_at

CLI = [sys.executable, "-m", "bvit_edge"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _files_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".old-" in p.name)


def test_short_fp_run_writes_self_describing_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = train(
        method="fp",
        model="deit_test_patch4_16",
        data="digits",
        per_class=8,
        epochs=2,
        batch_size=16,
        out=str(out),
        threads=1,
        image_size=16,
    )
    assert res.epochs_done == 2 and res.steps == 2 * math.ceil(80 / 16)
    for sub in ("last", "best"):
        cfg = json.loads((out / sub / "config.json").read_text())
        assert cfg["model"] == "deit_test_patch4_16" and cfg["method"] == "fp"
        assert cfg["classes"] == [str(i) for i in range(10)] and cfg["image_size"] == 16
        assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
        assert "val_top1" in cfg["metrics"]
        with safe_open(str(out / sub / "model.safetensors"), framework="pt") as fh:
            assert json.loads(fh.metadata()["bvit_edge.config"])["model"] == "deit_test_patch4_16"
    assert (out / "last" / "trainer_state.safetensors").is_file()
    assert not (out / "best" / "trainer_state.safetensors").exists()
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert _files_left(out) == []


def test_lr_schedule_is_cosine_to_min_then_cooldown() -> None:
    lr, mn, spe, ep = 1e-3, 1e-6, 10, 5
    assert lr_at(0, spe, lr, mn, ep) == pytest.approx(lr)
    mid = lr_at(25, spe, lr, mn, ep)
    assert mid == pytest.approx(mn + (lr - mn) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(50, spe, lr, mn, ep) == mn and lr_at(70, spe, lr, mn, ep) == mn
    assert lr_at(4, spe, lr, mn, ep, warmup_epochs=1) == pytest.approx(lr * 5 / 10)


def test_config_resolution_recipe_then_toml_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        'method = "gsb"\nepochs = 7\nbatch_size = 32\nlr_base = 2e-3\n[method_options]\nstage1_epochs = 5\n'
    )
    cfg = resolve_config({"data": "cifar100", "batch_size": 128}, toml)
    assert cfg.recipe == "gsb" and cfg.weight_decay == 0.05 and cfg.cooldown_epochs == 10
    assert cfg.epochs == 7 and cfg.batch_size == 128
    assert cfg.effective_lr(world_size=2) == pytest.approx(2e-3 * 128 * 2 / 512)
    assert cfg.method_options == {"stage1_epochs": 5}
    assert resolve_config({}).recipe == "digits"


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [
        *CLI,
        "train",
        "--model",
        "deit_test_patch4_16",
        "--image-size",
        "16",
        "--per-class",
        "20",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_steps_and_weights(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref), check=True, env=ENV, capture_output=True, timeout=600, cwd=tmp_path)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(killed, "--save-every-steps", "3"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    deadline = time.time() + 300
    state = killed / "last" / "trainer_state.safetensors"
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    # Kill it without warning right after its first mid-epoch checkpoint (step 3 of 13 in epoch 1): waiting
    # longer let a fast machine finish all 39 steps first, leaving nothing to resume.
    time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert state.exists(), "no checkpoint was written before the kill"
    before = load_trainer_state(killed / "last")
    assert before["step"] < 3 * 13
    out = subprocess.run(
        _train_cmd(killed, "--resume", "--json"),
        check=True,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    result = json.loads(out.stdout)
    assert result["steps"] == 3 * math.ceil(200 / 16)
    a, b = load_file(str(ref / "last" / "model.safetensors")), load_file(str(killed / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert _files_left(killed) == []


def test_cli_unknown_method_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "train", "--method", "nope", "--out", str(tmp_path / "x")],
        env=ENV,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "nope" in r.stderr
    assert not (tmp_path / "x").exists()


def test_cli_resume_without_checkpoint_explains(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "train", "--resume", "--out", str(tmp_path / "none")],
        env=ENV,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "nothing to resume" in r.stderr and "Traceback" not in r.stderr


def test_cli_eval_prints_json_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(
        method="fp",
        model="deit_test_patch4_16",
        data="digits",
        per_class=5,
        epochs=1,
        batch_size=25,
        out=str(out),
        threads=1,
        image_size=16,
    )
    r = subprocess.run(
        [*CLI, "eval", str(out), "--json"], env=ENV, capture_output=True, text=True, check=True, cwd=tmp_path
    )
    res = json.loads(r.stdout)
    assert res["num_images"] == 360 and 0.0 <= res["top1"] <= res["top5"] <= 1.0
    assert set(res["per_class"]) == {str(i) for i in range(10)}


def test_cli_eval_missing_checkpoint_is_clear(tmp_path: Path) -> None:
    r = subprocess.run([*CLI, "eval", str(tmp_path / "missing")], env=ENV, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "No checkpoint" in r.stderr and "Traceback" not in r.stderr
