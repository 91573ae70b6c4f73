"""End to end, batch 1: GSB DeiT-S and DeiT-T compiled for the host vs their float teachers in onnxruntime,
fp32 and int8 (onnxruntime's quantize_dynamic: what a user gets for free).

For each pair (gsb_deit_small_patch16_224 / deit_small_distilled_patch16_224, gsb_deit_tiny_patch16_224 /
deit_tiny_distilled_patch16_224: the same 198 tokens):

* the models get random weights with EVERY parameter non-zero (bvit_edge.bench_models: a zero attention bias
  B or shift would be folded away by the compiler), checked on the frozen model and, after compiling, in
  params.npz (B must be there);
* the student is exported with the default storage (B as int8, bvit_edge.export.storage) and compiled for
  the host; the teacher is exported to ONNX and quantized by onnxruntime;
* at each thread count, the three are measured in one process in alternating blocks by the protocol of
  ``bvit-edge bench`` (bvit_edge.runtime.bench: warm-up before each block, discarded and counted; median,
  p90, mean, std, min), and the ratios printed;
* sizes: the student's ONNX file and artifact (lib.so + params.npz) against the fp32 and int8 teacher ONNX
  files, and the student's ONNX bytes under every storage choice;
* the per-op profile of the student at 1 thread (the Relax VM's instrument hook times every kernel call).

Usage (one command; the JSON goes to benches/results/bench_e2e.json):
  python benches/bench_e2e.py [--models deit_s deit_t] [--threads 1 2] [--runs 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PAIRS = {
    "deit_s": ("gsb_deit_small_patch16_224", "deit_small_distilled_patch16_224"),
    "deit_t": ("gsb_deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"),
}


def export_models(tmp: Path, student: str, teacher: str, seed: int = 0) -> dict[str, Any]:
    """Student (packed, default storage) and teacher ONNX files with every parameter non-zero, and the
    teacher quantized by onnxruntime; with the student's storage report and bytes under every choice."""
    import torch

    from bvit_edge.bench_models import random_frozen_student, random_teacher
    from bvit_edge.export.int8_teacher import quantize_teacher
    from bvit_edge.export.onnx_export import export_onnx, export_teacher_onnx
    from bvit_edge.export.size import size_report
    from bvit_edge.export.storage import state_names

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = random_frozen_student(student, seed)
    sp, tp, ip = tmp / f"{student}.onnx", tmp / f"{teacher}.onnx", tmp / f"{teacher}.int8.onnx"
    res = export_onnx(s, sp)
    export_teacher_onnx(random_teacher(teacher, seed), tp)
    q = quantize_teacher(tp, ip)
    rep = size_report(sp, tp, state_names(s))
    heads, tokens = s.blocks[0].attn.num_heads, s.blocks[0].attn.num_tokens
    return {
        "student_onnx": sp,
        "teacher_onnx": tp,
        "teacher_int8_onnx": ip,
        "storage": res.storage,
        "storage_bytes": rep.storage_bytes,
        "weights": {k: getattr(rep, k) for k in ("weights_1bit", "weights_8bit", "weights_16bit", "weights_32bit")},
        "int8_teacher": q.to_dict(),
        "att_bias_shape": [heads, tokens, tokens],
        "export_s": time.perf_counter() - t0,
    }


def check_att_bias_kept(art: Path, shape: list[int]) -> list[str]:
    """How params.npz holds GSB's attention biases; an AssertionError when there are none (the compiler
    folded B away: the benchmark would be optimistic)."""
    from bvit_edge.bench_models import att_bias_in_artifact

    found = att_bias_in_artifact(art, shape[0], shape[1])
    assert found, f"params.npz of {art} holds no attention bias {shape}: B was folded away"
    return [f"{len(found)} x {sorted(set(found))}"]


def profile_ops(vm: Any, x: Any, params: list[Any], repeats: int = 5) -> list[dict]:
    """Per kernel: total ms per inference (median over repeats), calls, share of the sum."""
    per: dict[str, list[tuple[float, int]]] = defaultdict(list)
    current: dict[str, float] = {}
    acc: dict[str, float] = {}
    calls: dict[str, int] = {}

    def instrument(func, name, before, ret, *args):
        if before:
            current[name] = time.perf_counter()
        else:
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - current.pop(name, time.perf_counter())
            calls[name] = calls.get(name, 0) + 1
        return 0

    vm.set_instrument(instrument)
    try:
        for _ in range(repeats):
            acc.clear()
            calls.clear()
            vm["main"](x, *params)
            for k, v in acc.items():
                per[k].append((v, calls[k]))
    finally:
        vm.set_instrument(lambda *a: 0)
    rows = [
        {"op": k, "ms": float(np.median([v for v, _ in vals]) * 1e3), "calls": vals[0][1]} for k, vals in per.items()
    ]
    total = sum(r["ms"] for r in rows) or 1.0
    for r in rows:
        r["share_pct"] = 100.0 * r["ms"] / total
    return sorted(rows, key=lambda r: -r["ms"])


def group_of(op: str) -> str:
    """A profile row's group (what the time is spent on)."""
    if "binary_linear" in op:
        return "binary linear (qkv/proj/fc1/fc2)"
    if "binary_matmul" in op:
        return "binary attention products"
    for key, label in (
        ("layer_norm", "LayerNorm"),
        ("softmax", "softmax"),
        ("erf", "GELU+clip"),
        ("conv2d", "patch embedding"),
        ("matmul", "float matmul (patch embedding, heads)"),
        ("quantize", "8-bit quant/dequant"),
    ):
        if key in op:
            return label
    if op.startswith("vm.") or "alloc" in op or "kill" in op:
        return "VM builtins"
    return "other float (adds, reshapes, copies)"


def grouped(prof: list[dict]) -> dict[str, dict[str, float]]:
    groups: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "calls": 0})
    for r in prof:
        g = groups[group_of(r["op"])]
        g["ms"] += r["ms"]
        g["calls"] += r["calls"]
    total = sum(g["ms"] for g in groups.values()) or 1.0
    for g in groups.values():
        g["share_pct"] = 100.0 * g["ms"] / total
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["ms"]))


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def run_pair(key: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import tvm

    from bvit_edge.runtime.artifact import load_artifact
    from bvit_edge.runtime.bench import artifact_sizes, bench
    from bvit_edge.runtime.compile import compile_model

    student, teacher = PAIRS[key]
    print(f"== {student} vs {teacher} (fp32 and int8 in onnxruntime), batch 1", flush=True)
    files = export_models(tmp, student, teacher, args.seed)
    t0 = time.perf_counter()
    art = compile_model(
        files["student_onnx"], "host", tmp / f"{student}_host", fast_math=args.fast_math, tune=args.tune
    )
    compile_s = time.perf_counter() - t0
    kept = check_att_bias_kept(art, files["att_bias_shape"])
    from bvit_edge.runtime.artifact import read_manifest

    a_sizes = artifact_sizes(art, read_manifest(art))
    s_onnx = files["student_onnx"].stat().st_size
    t_onnx = files["teacher_onnx"].stat().st_size
    i_onnx = files["teacher_int8_onnx"].stat().st_size
    a_total = a_sizes["total_bytes"]
    sizes = {
        "student_onnx_bytes": s_onnx,
        "student_artifact": a_sizes,
        "teacher_fp32_onnx_bytes": t_onnx,
        "teacher_int8_onnx_bytes": i_onnx,
        "fp32_onnx_over_student_onnx": t_onnx / s_onnx,
        "fp32_onnx_over_student_artifact": t_onnx / a_total,
        "int8_onnx_over_student_onnx": i_onnx / s_onnx,
        "int8_onnx_over_student_artifact": i_onnx / a_total,
        "student_onnx_bytes_by_storage": files["storage_bytes"],
        "student_weights": files["weights"],
        "att_bias_in_params_npz": kept,
    }
    print(
        f"  sizes: GSB ONNX {_mb(s_onnx)}, artifact {_mb(a_total)} (lib.so {_mb(a_sizes['lib_bytes'])} "
        f"+ params.npz {_mb(a_sizes['params_bytes'])}; B in params.npz: {kept[0]}) | fp32 ONNX {_mb(t_onnx)}: "
        f"{sizes['fp32_onnx_over_student_onnx']:.1f}x / {sizes['fp32_onnx_over_student_artifact']:.1f}x smaller | "
        f"int8 ONNX {_mb(i_onnx)}: {sizes['int8_onnx_over_student_onnx']:.1f}x / "
        f"{sizes['int8_onnx_over_student_artifact']:.1f}x smaller (ONNX / artifact)",
        flush=True,
    )
    for choice, b in (files["storage_bytes"] or {}).items():
        print(f"    student ONNX with {choice}: {_mb(b)} ({t_onnx / b:.1f}x fp32, {i_onnx / b:.1f}x int8)")
    results = []
    for th in args.threads:
        r = bench(
            art,
            teacher_onnx=files["teacher_onnx"],
            teacher_int8_onnx=files["teacher_int8_onnx"],
            threads=th,
            warmup=args.warmup,
            runs=args.runs,
            rounds=args.rounds,
            student_onnx=files["student_onnx"],
        ).to_dict()
        for side in ("student", "teacher", "teacher_int8"):
            r[side]["steady"].pop("samples_ms", None)
        s, t, i = (r[k]["steady"]["median_ms"] for k in ("student", "teacher", "teacher_int8"))
        row = {
            "threads": th,
            "student_tvm": r["student"]["steady"],
            "teacher_ort_fp32": r["teacher"]["steady"],
            "teacher_ort_int8": r["teacher_int8"]["steady"],
            "speedup_vs_fp32": t / s,
            "speedup_vs_int8": i / s,
            "affinity": r["affinity"],
            "rounds": r["protocol"]["rounds"],
        }
        results.append(row)
        print(
            f"  threads={th}: GSB (TVM) {s:.2f} ms | fp32 (ORT) {t:.2f} ms -> {t / s:.1f}x | int8 (ORT) {i:.2f} ms "
            f"-> {i / s:.1f}x",
            flush=True,
        )
    loaded = load_artifact(art, threads=1)
    shape = loaded.manifest["input"]["shape"]
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    loaded.invoke(x)
    prof = profile_ops(loaded.vm, x, loaded.params)
    groups = grouped(prof)
    print("  per-op profile at 1 thread (instrumented, ms per inference):")
    for g, v in groups.items():
        print(f"    {g:40s} {v['ms']:8.2f} ms  {v['share_pct']:5.1f}%  {int(v['calls']):5d} calls")
    return {
        "student": student,
        "teacher": teacher,
        "export_s": files["export_s"],
        "compile_s": compile_s,
        "storage": files["storage"],
        "int8_teacher": files["int8_teacher"],
        "sizes": sizes,
        "results": results,
        "profile_1thread_by_group": groups,
        "profile_1thread_ops": prof,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(PAIRS), default=["deit_s", "deit_t"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=30, help="timed runs per model and thread count")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs before each block")
    ap.add_argument("--rounds", type=int, default=5, help="alternating blocks (the runs are split across them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_e2e.json")
    ap.add_argument("--tune", type=int, default=0, help="re-tune the binary kernels (N candidates each) first")
    ap.add_argument(
        "--no-fast-math",
        dest="fast_math",
        action="store_false",
        help="exact libm erf/exp instead of TVM's vectorized approximations",
    )
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import tvm

    from bvit_edge.atomic import write_json
    from bvit_edge.runtime.bench import git_revision

    models = {}
    with tempfile.TemporaryDirectory(prefix="bvit-edge-e2e-") as tmpd:
        for key in args.models:
            models[key] = run_pair(key, args, Path(tmpd))
    report = {
        "schema_version": 2,
        "bench": "bench_e2e",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "batch": 1,
        "target": "host",
        "fast_math": args.fast_math,
        "protocol": {
            "order": "alternating_blocks",
            "rounds": args.rounds,
            "warmup_per_block": args.warmup,
            "runs": args.runs,
            "timer": "time.perf_counter_ns",
        },
        "host": {
            "machine": platform.machine(),
            "cpu": platform.processor(),
            "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "versions": {"tvm": tvm.__version__, "onnxruntime": ort.__version__, "python": sys.version.split()[0]},
        "models": models,
        "note": "random weights with every parameter non-zero (bvit_edge.bench_models); speed does not depend on "
        "the values beyond that. Shared machine: quote the ratios.",
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
