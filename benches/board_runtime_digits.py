"""The board-side install on the emulated aarch64 board, on a trained student: digits val images as PNG files
classified natively under qemu-aarch64 by ``bvit-edge-device`` (no RPC), compared with the host artifact.

Builds the bvit-edge-runtime wheel from this tree, installs it into a fresh aarch64 site folder (dependencies from
the board's wheelhouse, offline; checks torch is not importable there), saves the first N digits val images as
PNG files, runs ``bvit-edge-device run ART_ARM PNGS --json --logits`` with the board's Python under qemu, runs the
host artifact on the same files, and writes the max |delta logit|, top-1 agreement and accuracy, and the installed
sizes (the board install's packages next to this host's full toolkit) to benches/results/board_runtime_digits.json.

    python benches/board_runtime_digits.py --demo bvit-edge-demo [--n 360]

``--demo`` is a ``bvit-edge demo`` folder (its artifacts/rpi4-aarch64 and artifacts/host of the trained GSB
student). Emulated timings are printed for completeness only: they say nothing about a Pi.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from importlib.metadata import distributions
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def installed_sizes(site: str, root: str) -> dict:
    """MiB per package of ``root``'s dependency closure in ``site`` (from each package's RECORD)."""

    def norm(n: str) -> str:
        return re.sub(r"[-_.]+", "-", n).lower()

    dists = {norm(d.metadata["Name"]): d for d in distributions(path=[site])}
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in dists:
            continue
        seen.add(name)
        todo += [
            norm(re.split(r"[ ;<>=!~\[(]", r.strip(), maxsplit=1)[0])
            for r in dists[name].requires or []
            if "extra ==" not in r
        ]
    sizes = {}
    for name in seen:
        d = dists[name]
        total = sum(Path(d.locate_file(f)).stat().st_size for f in d.files or [] if Path(d.locate_file(f)).is_file())
        sizes[f"{name}=={d.version}"] = round(total / 2**20, 1)
    return {
        "packages": len(sizes),
        "total_mib": round(sum(sizes.values()), 1),
        "by_package_mib": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, required=True, help="a bvit-edge demo output folder")
    ap.add_argument("--n", type=int, default=360, help="digits val images (default: all 360)")
    ap.add_argument("--out", type=Path, default=ROOT / "benches" / "results" / "board_runtime_digits.json")
    args = ap.parse_args(argv)

    from PIL import Image

    from bvit_edge.atomic import write_json
    from bvit_edge.data import load_dataset
    from bvit_edge.runtime.artifact import read_manifest, run_artifact
    from bvit_edge.runtime.image_input import expand_inputs, load_image
    from bvit_edge.targets import board

    arm, host = args.demo / "artifacts" / "rpi4-aarch64", args.demo / "artifacts" / "host"
    board.build("aarch64", log=print)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        subprocess.run(
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
            check=True,
            timeout=600,
        )
        site = board.install_site(list((tmp / "dist").glob("*.whl")), tmp / "site", log=print)
        torch_probe = board.run_python(["-c", "import torch"], site)
        torch_absent = torch_probe.returncode != 0 and b"No module named 'torch'" in torch_probe.stderr
        size = int(read_manifest(arm)["input"]["shape"][-1])
        splits = load_dataset("digits", image_size=size)
        pngs = tmp / "digits-val-png"
        pngs.mkdir()
        labels = []
        for i in range(min(args.n, len(splits.val))):
            x, y = splits.val[i]
            Image.fromarray(np.rint(x.numpy().transpose(1, 2, 0) * 255).clip(0, 255).astype(np.uint8)).save(
                pngs / f"val{i:03d}.png"
            )
            labels.append(int(y))
        command = [
            str(site / "bin" / "bvit-edge-device"),
            "run",
            str(arm),
            str(pngs),
            "--json",
            "--logits",
            "--top-k",
            "1",
            "--threads",
            "2",
        ]
        t0 = time.monotonic()
        r = board.run_python(command, site, timeout_s=3600)
        board_s = time.monotonic() - t0
        if r.returncode != 0:
            sys.exit(f"bvit-edge-device failed on the board (exit {r.returncode}):\n{r.stderr.decode()[-3000:]}")
        doc = json.loads(r.stdout.decode())
        files = expand_inputs([pngs])
        on_board = np.array([p["logits"] for p in doc["predictions"]], np.float32)
        on_host = run_artifact(host, np.stack([load_image(f, size) for f in files]))
        sizes_board = installed_sizes(str(site), "bvit-edge-runtime")
    import sysconfig

    y = np.array(labels)
    delta = np.abs(on_board - on_host)
    result = {
        "demo": str(args.demo),
        "n_images": len(files),
        "torch_absent_on_board": bool(torch_absent),
        "board_command": "qemu-aarch64 python3.11 " + " ".join([*command[:1], "run", "ART", "PNGS", *command[4:]]),
        "max_abs_delta_logit": float(delta.max()),
        "logit_scale": float(np.abs(on_host).max()),
        "images_beyond_1e-5_relative": int((delta.max(1) > 1e-5 * np.abs(on_host).max()).sum()),
        "top1_agreement": float((on_board.argmax(1) == on_host.argmax(1)).mean()),
        "top1_accuracy_board": float((on_board.argmax(1) == y).mean()),
        "top1_accuracy_host": float((on_host.argmax(1) == y).mean()),
        "board_load_ms": doc["load_ms"],
        "board_wall_s_emulated": round(board_s, 1),
        "installed": {
            "board_bvit_edge_runtime_aarch64": sizes_board,
            "host_full_toolkit": installed_sizes(sysconfig.get_paths()["purelib"], "bvit-edge"),
        },
    }
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "installed"}, indent=2))
    print(
        f"board install: {sizes_board['packages']} packages, {sizes_board['total_mib']} MiB; full toolkit: "
        f"{result['installed']['host_full_toolkit']['packages']} packages, "
        f"{result['installed']['host_full_toolkit']['total_mib']} MiB; written {args.out}"
    )


if __name__ == "__main__":
    main()
