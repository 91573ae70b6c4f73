"""Bytes on disk of GSB DeiT-S (and DeiT-T) under every storage choice, as ONNX files and as compiled artifacts,
against the float teacher's ONNX file and the teacher quantized by onnxruntime (quantize_dynamic, int8).

    python benches/size_deit_small.py [--models deit_s deit_t] [--no-artifacts] [--out benches/results/size_deit.json]

Random weights with every parameter non-zero (bvit_edge.bench_models; sizes do not depend on the values, but
a zero attention bias would be folded away by the compiler). For each model: the packed export under each
(--att-bias, --float-params) choice (1/8/16/32-bit weight counts, bytes), each compiled for the host
(lib.so + params.npz, with the dtypes params.npz holds B in), and the ratios fp32 ONNX / student and
int8 ONNX / student for the ONNX file and for the artifact.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAIRS = {
    "deit_s": ("gsb_deit_small_patch16_224", "deit_small_distilled_patch16_224"),
    "deit_t": ("gsb_deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"),
}
CHOICES = [
    ("float32", "float32"),
    ("float16", "float32"),
    ("int8", "float32"),
    ("int8", "float16"),
    ("int4", "float32"),
    ("int4", "float16"),
]


def sizes_of(key: str, tmp: Path, artifacts: bool) -> dict[str, Any]:
    from bvit_edge.bench_models import att_bias_in_artifact, random_frozen_student, random_teacher
    from bvit_edge.export.int8_teacher import quantize_teacher
    from bvit_edge.export.onnx_export import export_onnx, export_teacher_onnx
    from bvit_edge.export.size import weight_counts
    from bvit_edge.runtime.ort import load_model

    student, teacher = PAIRS[key]
    t0 = time.time()
    model = random_frozen_student(student)
    heads, n = model.blocks[0].attn.num_heads, model.blocks[0].attn.num_tokens
    tp, ip = tmp / f"{teacher}.onnx", tmp / f"{teacher}.int8.onnx"
    export_teacher_onnx(random_teacher(teacher), tp)
    quantize_teacher(tp, ip)
    fp32, int8 = tp.stat().st_size, ip.stat().st_size
    rows = []
    for att_bias, float_params in CHOICES:
        sp = tmp / f"{student}.{att_bias}.{float_params}.onnx"
        res = export_onnx(model, sp, att_bias=att_bias, float_params=float_params)
        row: dict[str, Any] = {
            "att_bias": att_bias,
            "float_params": float_params,
            "onnx_bytes": res.bytes,
            "weights": weight_counts(load_model(sp)),
            "storage": res.storage["by_kind"],
            "fp32_over_onnx": fp32 / res.bytes,
            "int8_over_onnx": int8 / res.bytes,
        }
        if artifacts:
            from bvit_edge.runtime.artifact import read_manifest
            from bvit_edge.runtime.bench import artifact_sizes
            from bvit_edge.runtime.compile import compile_model

            art = compile_model(sp, "host", tmp / f"art.{att_bias}.{float_params}")
            a = artifact_sizes(art, read_manifest(art))
            b_dtypes = sorted(set(att_bias_in_artifact(art, heads, n)))
            row.update(
                {
                    "artifact": a,
                    "att_bias_dtype_in_params_npz": b_dtypes,
                    "fp32_over_artifact": fp32 / a["total_bytes"],
                    "int8_over_artifact": int8 / a["total_bytes"],
                }
            )
        rows.append(row)
        art_txt = (
            f", artifact {row['artifact']['total_bytes'] / 1e6:.2f} MB (lib.so "
            f"{row['artifact']['lib_bytes'] / 1e6:.2f} + params.npz "
            f"{row['artifact']['params_bytes'] / 1e6:.2f}, "
            f"B {row['att_bias_dtype_in_params_npz']}): {row['fp32_over_artifact']:.1f}x / "
            f"{row['int8_over_artifact']:.2f}x"
            if artifacts
            else ""
        )
        print(
            f"  {student} --att-bias {att_bias:7s} --float-params {float_params:7s}: ONNX {res.bytes / 1e6:.2f} MB: "
            f"{row['fp32_over_onnx']:.1f}x smaller than fp32, {row['int8_over_onnx']:.2f}x than int8{art_txt}",
            flush=True,
        )
    return {
        "student": student,
        "teacher": teacher,
        "teacher_fp32_onnx_bytes": fp32,
        "teacher_int8_onnx_bytes": int8,
        "att_bias_shape": [heads, n, n],
        "choices": rows,
        "seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(PAIRS), default=["deit_s", "deit_t"])
    p.add_argument("--no-artifacts", dest="artifacts", action="store_false", help="ONNX files only (no compiles)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "size_deit.json")
    a = p.parse_args(argv)

    import torch

    from bvit_edge.atomic import write_json
    from bvit_edge.runtime.bench import git_revision

    torch.set_num_threads(1)
    out: dict[str, Any] = {"schema_version": 1, "bench": "size_deit", "git_revision": git_revision(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="bvit-edge-size-") as tmpd:
        for key in a.models:
            print(f"== {PAIRS[key][0]} vs {PAIRS[key][1]}: fp32 and int8 (onnxruntime quantize_dynamic) ONNX files")
            out["models"][key] = sizes_of(key, Path(tmpd), a.artifacts)
            m = out["models"][key]
            print(
                f"  teacher fp32 ONNX {m['teacher_fp32_onnx_bytes'] / 1e6:.2f} MB, int8 ONNX "
                f"{m['teacher_int8_onnx_bytes'] / 1e6:.2f} MB"
            )
    write_json(a.out, out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
