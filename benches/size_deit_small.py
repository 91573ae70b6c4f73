"""Bytes on disk: packed GSB DeiT-S export vs the float DeiT-S teacher export (random weights suffice for size).

    python benches/size_deit_small.py --out bench-results/size [--num-classes 1000]

Prints the size report (1/8/32-bit weight counts, largest float initializers, ratio) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results/size"))
    p.add_argument("--num-classes", type=int, default=1000)
    a = p.parse_args()
    from bvit_edge.atomic import write_json
    from bvit_edge.export import export_onnx, export_teacher_onnx, size_report
    from bvit_edge.models import create_model

    torch.manual_seed(0)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    student = create_model("gsb_deit_small_patch16_224", num_classes=a.num_classes)
    student.eval()
    with torch.no_grad():
        student(torch.randn(2, 3, 224, 224))  # lazy initialisation of the binarizer scales
    student.freeze()
    s = export_onnx(student, a.out / "gsb_deit_small.packed.onnx", ops="packed")
    teacher = create_model("deit_small_patch16_224", num_classes=a.num_classes).eval()
    t = export_teacher_onnx(teacher, a.out / "deit_small.onnx")
    rep = size_report(s.path, t.path).to_dict()
    bias = sum(n for name, n in (rep.get("largest_32bit") or []) if "att_bias" in name or "move_att" in name)
    rep["attention_bias_params_in_largest"] = bias
    rep["seconds"] = round(time.time() - t0, 1)
    write_json(a.out / "size_deit_small.json", rep)
    print(json.dumps(rep, indent=1))
    mb = 1e6
    print(f"\npacked GSB DeiT-S: {rep['bytes_on_disk'] / mb:.2f} MB; float DeiT-S: {rep['teacher_bytes'] / mb:.2f} MB; "
          f"ratio {rep['compression_ratio']:.2f}x")


if __name__ == "__main__":
    main()
