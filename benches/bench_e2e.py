"""End to end, batch 1: gsb_deit_small_patch16_224 compiled for the host vs the float teacher in onnxruntime.

Measured in one process, in alternating blocks (--rounds, each after --warmup untimed runs), at 1 and 2
threads: the compiled binary student (bvit-edge artifact, TVM runtime) and the float DeiT-S teacher
(deit_small_distilled_patch16_224: same 198 tokens) exported to ONNX and run by onnxruntime. Compile time,
load time, first run and steady state are timed separately; warm-up runs are discarded and counted;
median / p90 / mean / std / min are reported. A per-op profile of
the student (the Relax VM's instrument hook times every kernel call) says where the time goes.

The models come from the registry with random initial weights unless --student-onnx / --teacher-onnx name
exported files (speed does not depend on the weights). Usage:
  python benches/bench_e2e.py [--out benches/results/bench_e2e.json] [--threads 1 2] [--runs 30]
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

import numpy as np

HERE = Path(__file__).resolve().parent


def _stats(ts: list[float], warmup: int) -> dict:
    a = np.array(ts) * 1e3
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "std_ms": float(a.std()), "min_ms": float(a.min()), "runs": len(ts), "warmup_discarded": warmup}


def export_models(tmp: Path, student: str, teacher: str) -> tuple[Path, Path]:
    import torch

    from bvit_edge.export.onnx_export import export_onnx, export_teacher_onnx
    from bvit_edge.models.registry import create_model
    from bvit_edge.quant.freeze import freeze

    torch.manual_seed(0)
    torch.set_num_threads(1)
    s = create_model(student)
    s.train()
    with torch.no_grad():  # initialise the lazy alphas from one batch
        s(torch.randn(2, *s.default_cfg["input_size"]))
    freeze(s)
    sp, tp = tmp / f"{student}.onnx", tmp / f"{teacher}.onnx"
    export_onnx(s, sp)
    export_teacher_onnx(create_model(teacher).eval(), tp)
    return sp, tp


def profile_ops(vm, x, params, repeats: int = 5) -> list[dict]:
    """Per kernel: total ms per inference (median over repeats), calls, share of the sum."""
    per = defaultdict(list)
    current: dict = {}

    def instrument(func, name, before, ret, *args):  # noqa: ANN001
        if before:
            current[name] = time.perf_counter()
        else:
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - current.pop(name, time.perf_counter())
            calls[name] = calls.get(name, 0) + 1
        return 0

    vm.set_instrument(instrument)
    for _ in range(repeats):
        acc: dict = {}
        calls: dict = {}
        vm["main"](x, *params)
        for k, v in acc.items():
            per[k].append((v, calls[k]))
    rows = []
    for k, vals in per.items():
        rows.append({"op": k, "ms": float(np.median([v for v, _ in vals]) * 1e3), "calls": vals[0][1]})
    total = sum(r["ms"] for r in rows) or 1.0
    for r in rows:
        r["share_pct"] = 100.0 * r["ms"] / total
    return sorted(rows, key=lambda r: -r["ms"])


def _group(op: str) -> str:
    if "binary_linear" in op:
        return "binary linear (qkv/proj/fc1/fc2)"
    if "binary_matmul" in op:
        return "binary attention products"
    for key, label in (("layer_norm", "LayerNorm"), ("softmax", "softmax"), ("erf", "GELU+clip"),
                       ("conv2d", "patch embedding"), ("matmul", "float matmul (patch embedding, heads)"),
                       ("quantize", "8-bit quant/dequant")):
        if key in op:
            return label
    if op.startswith("vm.") or "alloc" in op or "kill" in op:
        return "VM builtins"
    return "other float (adds, reshapes, copies)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="gsb_deit_small_patch16_224")
    ap.add_argument("--teacher", default="deit_small_distilled_patch16_224")
    ap.add_argument("--student-onnx", type=Path)
    ap.add_argument("--teacher-onnx", type=Path)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs before each block")
    ap.add_argument("--rounds", type=int, default=5, help="blocks per runtime, alternating (runs split across them)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_e2e.json")
    ap.add_argument("--tune", type=int, default=0, help="re-tune the binary kernels (N candidates each) first")
    ap.add_argument("--no-fast-math", dest="fast_math", action="store_false",
                    help="exact libm erf/exp instead of TVM's vectorized approximations")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import tvm

    from bvit_edge.atomic import write_json
    from bvit_edge.runtime.artifact import load_artifact
    from bvit_edge.runtime.compile import compile_model

    pool = tvm.get_global_func("runtime.config_threadpool")
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        t0 = time.perf_counter()
        if args.student_onnx and args.teacher_onnx:
            sp, tp = args.student_onnx, args.teacher_onnx
        else:
            sp, tp = export_models(tmp, args.student, args.teacher)
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        art = compile_model(sp, "host", tmp / "student_host", fast_math=args.fast_math, tune=args.tune)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = load_artifact(art)
        load_s = time.perf_counter() - t0
        shape = loaded.manifest["input"]["shape"]
        x_np = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        x = tvm.runtime.tensor(x_np)
        t0 = time.perf_counter()
        loaded.invoke(x)
        first_s = time.perf_counter() - t0
        sizes = {"student_lib_bytes": (art / "lib.so").stat().st_size,
                 "student_params_bytes": (art / "params.npz").stat().st_size, "student_onnx_bytes": Path(sp).stat().st_size,
                 "teacher_onnx_bytes": Path(tp).stat().st_size}
        results = []
        for th in args.threads:
            # onnxruntime's threads inherit this thread's affinity when the session is created: give them
            # every CPU the process started with, whatever TVM's pool did to the calling thread
            if affinity:
                os.sched_setaffinity(0, affinity)
            so = ort.SessionOptions()
            so.intra_op_num_threads = th
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            sess = ort.InferenceSession(str(tp), so, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x_np}
            pool(0, th)
            ts_s, ts_t = [], []
            # interleaved in blocks (drift on a shared machine hits both alike), each block after its own
            # warm-up: the other runtime's threads keep spinning for a while after a call, and one run of
            # each in turn measured that contention, not the model (2 threads: TVM 72 ms instead of 15)
            per = max(1, args.runs // args.rounds)
            for _ in range(args.rounds):
                for fn, ts in ((lambda: loaded.invoke(x), ts_s), (lambda: sess.run(None, feed), ts_t)):
                    for _ in range(args.warmup):
                        fn()
                    for _ in range(per):
                        t = time.perf_counter()
                        fn()
                        ts.append(time.perf_counter() - t)
            st, tt = _stats(ts_s, args.warmup * args.rounds), _stats(ts_t, args.warmup * args.rounds)
            row = {"threads": th, "student_tvm": st, "teacher_ort_f32": tt,
                   "speedup_median": tt["median_ms"] / st["median_ms"]}
            results.append(row)
            print(f"threads={th}: student (TVM) {st['median_ms']:.2f} ms, teacher (ORT f32) {tt['median_ms']:.2f} ms "
                  f"-> {row['speedup_median']:.1f}x", flush=True)
        pool(0, 1)
        prof = profile_ops(loaded.vm, x, loaded.params)
        groups = defaultdict(float)
        for r in prof:
            groups[_group(r["op"])] += r["ms"]
        total = sum(groups.values()) or 1.0
        print("per-op profile at 1 thread (instrumented, ms per inference):")
        for g, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"  {g:40s} {ms:8.2f} ms  {100 * ms / total:5.1f}%")
    report = {
        "schema_version": 1,
        "bench": "bench_e2e",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "student": args.student, "teacher": args.teacher, "batch": 1, "target": "host",
        "fast_math": args.fast_math,
        "host": {"machine": platform.machine(), "cpu": loaded.manifest["target"]["tvm_target"].get("mcpu"),
                 "family": loaded.manifest["target"]["family"], "cpu_count": os.cpu_count()},
        "versions": {"tvm": tvm.__version__, "onnxruntime": ort.__version__, "python": sys.version.split()[0]},
        "export_s": export_s, "compile_s": compile_s, "load_s": load_s, "first_run_s": first_s,
        "sizes": sizes, "results": results,
        "profile_1thread_by_group_ms": dict(groups), "profile_1thread_ops": prof,
        "note": "weights are random initial weights; timings do not depend on them. Shared machine: quote ratios.",
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
