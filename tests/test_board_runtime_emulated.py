"""The board-side install, for real, on the emulated aarch64 board (no RPC): the bvit-edge-runtime wheel built from
this tree is pip-installed into a fresh site folder for the board (its dependencies resolved offline from the
board's wheelhouse, which the board build downloads once with the image), torch is not importable there, and the
installed ``bvit-edge-device`` script runs the rpi4-aarch64 artifact of a GSB student of the demo geometry
natively under qemu-aarch64 on digits val images saved as PNG files. Its logits are compared with the host
artifact's on the same files. The shared board image is only read.

The student is the demo's geometry with its binarizer scales initialised from real digits images (training it
would add minutes to CI); the README's figures come from the trained demo student, run the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bvit_edge.targets import board

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 12


def _require_board() -> None:
    for tool in ("qemu-aarch64", "debootstrap", "aarch64-linux-gnu-gcc"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make setup installs it)")
    if not board.status("aarch64").built and os.geteuid() != 0:
        pytest.skip("building the board image runs debootstrap, which needs root (run once as root)")


@pytest.fixture(scope="module")
def board_site(tmp_path_factory):
    """The board-side install: the wheel built from packaging/bvit-edge-runtime, installed for aarch64."""
    _require_board()
    board.build("aarch64", log=print)  # the image and its wheelhouse (cached: downloads only the first time)
    tmp = tmp_path_factory.mktemp("board-site")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(ROOT / "packaging" / "bvit-edge-runtime"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("bvit_edge_runtime-*.whl")
    return board.install_site([wheel], tmp / "site", log=print)


def _board(site: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return board.run_python(list(args), site, timeout_s=900, stdin=stdin)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A frozen GSB student of the demo geometry, exported (packed ops, with the data set's metadata) and compiled
    for rpi4-aarch64 and for the host; digits val images saved as PNG files."""
    import torch
    from PIL import Image

    from bvit_edge.data import load_dataset
    from bvit_edge.export import export_onnx
    from bvit_edge.models import create_model
    from bvit_edge.runtime.compile import compile_model

    tmp = tmp_path_factory.mktemp("student")
    splits = load_dataset("digits", image_size=32)
    info = splits.info
    torch.manual_seed(0)
    model = create_model("gsb_demo_patch4_32", num_classes=10)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    model.train()
    with torch.no_grad():  # lazy binarizer scales from real images
        model((torch.stack([splits.train[i][0] for i in range(32)]) - mean) / std)
    model.freeze()
    onnx_path = tmp / "student.packed.onnx"
    data = {"mean": list(info.mean), "std": list(info.std), "classes": list(info.classes), "image_size": 32}
    export_onnx(model, onnx_path, ops="packed", input_shape=(1, 3, 32, 32), data=data)
    pngs = tmp / "val-png"
    pngs.mkdir()
    for i in range(N_IMAGES):
        x, y = splits.val[i]
        arr = np.rint(x.numpy().transpose(1, 2, 0) * 255).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(pngs / f"val{i:03d}_label{int(y)}.png")
    return {
        "arm": compile_model(onnx_path, "rpi4-aarch64", tmp / "art-rpi4"),
        "host": compile_model(onnx_path, "host", tmp / "art-host"),
        "pngs": pngs,
    }


def test_the_board_install_has_no_torch_and_no_training_stack(board_site):
    r = _board(
        board_site,
        "-c",
        "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not "
        "None for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib', 'sklearn', 'typer', 'numpy', 'PIL', "
        "'tvm_ffi', 'bvit_edge.runtime.device')}))",
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    found = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert found == {
        "torch": False,
        "onnx": False,
        "onnxruntime": False,
        "matplotlib": False,
        "sklearn": False,
        "typer": False,
        "numpy": True,
        "PIL": True,
        "tvm_ffi": True,
        "bvit_edge.runtime.device": True,
    }
    r = _board(
        board_site,
        "-c",
        "import bvit_edge\ntry:\n    bvit_edge.train\nexcept Exception as e:\n    "
        "print(type(e).__name__, e)\nimport torch",
    )
    assert r.returncode != 0 and b"No module named 'torch'" in r.stderr
    assert r.stdout.decode().startswith("MissingDependencyError") and "full toolkit" in r.stdout.decode()


def test_the_rpi4_artifact_runs_on_the_board_like_the_host_artifact(board_site, student):
    from bvit_edge.runtime.artifact import run_artifact
    from bvit_edge.runtime.image_input import expand_inputs, load_image

    script = str(board_site / "bin" / "bvit-edge-device")  # the console script pip wrote, run by the board's Python
    r = _board(
        board_site,
        script,
        "run",
        str(student["arm"]),
        str(student["pngs"]),
        "--json",
        "--logits",
        "--top-k",
        "3",
        "--threads",
        "2",
    )
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    doc = json.loads(r.stdout.decode())
    files = expand_inputs([student["pngs"]])
    assert [p["input"] for p in doc["predictions"]] == [str(f) for f in files] and doc["num_images"] == N_IMAGES
    on_board = np.array([p["logits"] for p in doc["predictions"]], np.float32)
    on_host = run_artifact(student["host"], np.stack([load_image(f, 32) for f in files]))
    delta = float(np.abs(on_board - on_host).max())
    scale = float(np.abs(on_host).max())
    print(
        f"\nbvit-edge-device on the emulated board: {N_IMAGES} PNGs, max |dlogit| vs host artifact {delta:.3g} "
        f"(logit scale {scale:.3g}); top-1 {[p['top'][0][0] for p in doc['predictions']]}"
    )
    assert delta <= 1e-5 * scale
    assert (on_board.argmax(1) == on_host.argmax(1)).all()
    classes = [str(i) for i in range(10)]
    assert all(p["top"][0][0] in classes for p in doc["predictions"])


def test_board_bench_check_and_refusals(board_site, student, tmp_path):
    script = str(board_site / "bin" / "bvit-edge-device")
    out = tmp_path / "board-bench.json"
    r = _board(board_site, script, "bench", str(student["arm"]), "--warmup", "1", "--runs", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    doc = json.loads(out.read_text())
    assert doc["kind"] == "bvit_edge.bench" and doc["timing_kind"] == "emulated" and doc["emulated"] is True
    assert doc["target"]["name"] == "rpi4-aarch64" and doc["student"]["steady"]["runs"] == 3
    assert doc["versions"]["tvm_ffi"] == "0.1.14.post1"
    r = _board(board_site, script, "check", str(student["arm"]), "--json")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    chk = json.loads(r.stdout.decode())
    assert chk["machine"]["arch"] == "aarch64" and chk["machine"]["emulated"] is True
    assert set(chk["required_cpu_features"]) <= set(chk["machine"]["cpu_features"])
    # The host (x86-64) artifact on the board: a clear error, exit 2, nothing written.
    out2 = tmp_path / "refused.json"
    r = _board(board_site, script, "bench", str(student["host"]), "--out", str(out2))
    assert r.returncode == 2 and b"x86_64" in r.stderr and b"Traceback" not in r.stderr, r.stderr.decode()[-2000:]
    assert not out2.exists()
