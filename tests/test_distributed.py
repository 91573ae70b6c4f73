"""Multi-process training: torchrun with the gloo backend on CPU keeps every rank's weights identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_torchrun_two_gloo_processes_stay_in_sync_and_scale_the_lr(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "bvit_edge",
        "train",
        "--method",
        "fp",
        "--model",
        "deit_test_patch4_16",
        "--image-size",
        "16",
        "--per-class",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--lr-base",
        "1e-3",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "ddp"),
        "--json",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["world_size"] == 2
    assert result["ranks_in_sync"] is True
    # 80 images, 2 ranks x batch 8 -> 5 steps an epoch, each rank seeing a disjoint half.
    assert result["steps"] == 5
    cfg = json.loads((tmp_path / "ddp" / "last" / "config.json").read_text())
    assert cfg["step"] == 5
    assert result["base_lr"] == pytest.approx(1e-3 * 8 * 2 / 512)  # lr = lr_base * batch * world / 512
