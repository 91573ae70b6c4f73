"""Compare compiled artifacts (and ONNX models in onnxruntime) side by side: latency and a per-op profile.

Every model is loaded in this one process and timed in interleaved blocks at 1 thread (batch 1, warm-up
runs discarded), so drift on a shared machine hits all of them alike. Reported per model: the median of
thread CPU time (what the model's own thread spent: robust when other processes share the cores) and of wall
time, and the ratio to the first model. For artifacts, a per-op profile in thread CPU time (the Relax VM's
instrument hook around every kernel and builtin call; the hook's own cost lands in the VM-builtins group),
grouped by op class, optionally per kernel (--ops).

Usage:
  python benches/profile_artifacts.py before=ART_DIR after=ART_DIR [ort_fp32=MODEL.onnx ...]
      [--rounds 6] [--runs 4] [--ops] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

GROUPS = (
    ("binary_linear", "binary linear"),
    ("binary_matmul", "binary attention products"),
    ("int8_patch", "patch embedding (int8 weights)"),
    ("int8_linear", "heads (int8 GEMM)"),
    ("layer_norm", "LayerNorm"),
    ("softmax", "softmax (+ scale, + B)"),
    ("erf", "GELU + clip"),
    ("conv2d", "patch embedding (float)"),
    ("matmul", "float matmul"),
    ("quantize", "8-bit quantize/dequantize"),
)


def op_group(op: str) -> str:
    for key, label in GROUPS:
        if key in op:
            return label
    if op.startswith("vm.") or "alloc" in op or "kill" in op:
        return "VM builtins"
    return "other float (adds, layout)"


def profile_once(vm: Any, call: Any) -> dict[str, tuple[float, int]]:
    """{op: (thread CPU ms, calls)} of one inference, every VM call timed by the instrument hook."""
    acc: dict[str, int] = defaultdict(int)
    calls: dict[str, int] = defaultdict(int)
    start: dict[str, int] = {}

    def instrument(func: Any, name: str, before: bool, ret: Any, *args: Any) -> int:
        now = time.thread_time_ns()
        if before:
            start[name] = now
        else:
            acc[name] += now - start.pop(name, now)
            calls[name] += 1
        return 0

    vm.set_instrument(instrument)
    try:
        call()
    finally:
        vm.set_instrument(lambda *a: 0)
    return {k: (v / 1e6, calls[k]) for k, v in acc.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=ARTIFACT_DIR or NAME=MODEL.onnx (onnxruntime)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=4, help="timed runs per model per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before each block")
    ap.add_argument("--ops", action="store_true", help="print every kernel, not only the groups")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)

    import tvm

    from bvit_edge.runtime.artifact import load_artifact

    tvm.get_global_func("runtime.config_threadpool")(0, 1)
    sides: dict[str, dict[str, Any]] = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"{spec!r}: give NAME=PATH")
        if path.endswith(".onnx"):
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            feed = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
            sides[name] = {"call": lambda s=sess, f=feed: s.run(None, f), "vm": None}
        else:
            art = load_artifact(path)
            x = tvm.runtime.tensor(
                np.random.default_rng(0).standard_normal(art.manifest["input"]["shape"]).astype(np.float32)
            )
            sides[name] = {"call": lambda a=art, x=x: a.invoke(x), "vm": art.vm}
    cpu: dict[str, list[float]] = {n: [] for n in sides}
    wall: dict[str, list[float]] = {n: [] for n in sides}
    ops: dict[str, dict[str, list[float]]] = {n: defaultdict(list) for n in sides}
    op_calls: dict[str, dict[str, int]] = {n: {} for n in sides}
    for _ in range(args.rounds):
        for name, side in sides.items():
            for _ in range(args.warmup):
                side["call"]()
            for _ in range(args.runs):
                c, t = time.thread_time(), time.perf_counter()
                side["call"]()
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.thread_time() - c)
            if side["vm"] is not None:
                for op, (ms, n) in profile_once(side["vm"], side["call"]).items():
                    ops[name][op].append(ms)
                    op_calls[name][op] = n
    first = next(iter(sides))
    base = float(np.median(cpu[first]))
    results: dict[str, Any] = {}
    print(f"{'model':16s} {'cpu median ms':>14s} {'wall median ms':>15s} {'cpu ratio first/this':>21s}")
    for name in sides:
        med_c, med_w = float(np.median(cpu[name])) * 1e3, float(np.median(wall[name])) * 1e3
        print(f"{name:16s} {med_c:14.2f} {med_w:15.2f} {base * 1e3 / med_c:21.2f}")
        groups: dict[str, float] = defaultdict(float)
        gcalls: dict[str, int] = defaultdict(int)
        per_op = {op: float(np.median(v)) for op, v in ops[name].items()}
        for op, ms in per_op.items():
            groups[op_group(op)] += ms
            gcalls[op_group(op)] += op_calls[name][op]
        results[name] = {
            "cpu_median_ms": med_c,
            "wall_median_ms": med_w,
            "runs": len(cpu[name]),
            "profile_cpu_ms_by_group": dict(groups),
            "calls_by_group": dict(gcalls),
            "profile_cpu_ms_by_op": per_op,
        }
    profiled = [n for n in sides if results[n]["profile_cpu_ms_by_group"]]
    if profiled:
        labels = sorted({g for n in profiled for g in results[n]["profile_cpu_ms_by_group"]})
        print("\nper-op profile, thread CPU ms per inference (calls):")
        print(f"{'op class':34s}" + "".join(f"{n:>18s}" for n in profiled))
        for g in labels:
            cells = ""
            for n in profiled:
                ms, calls = results[n]["profile_cpu_ms_by_group"].get(g, 0.0), results[n]["calls_by_group"].get(g, 0)
                cells += f"{ms:11.3f} ({calls:3d})"
            print(f"{g:34s}{cells}")
        print(
            f"{'sum':34s}" + "".join(f"{sum(results[n]['profile_cpu_ms_by_group'].values()):18.3f}" for n in profiled)
        )
        if args.ops:
            for n in profiled:
                print(f"\n{n}:")
                for op, ms in sorted(results[n]["profile_cpu_ms_by_op"].items(), key=lambda kv: -kv[1]):
                    print(f"  {op[:70]:70s} {ms:8.3f}  x{op_calls[n][op]}")
    if args.out:
        from bvit_edge.atomic import write_json

        write_json(
            args.out,
            {
                "schema_version": 1,
                "bench": "profile_artifacts",
                "threads": 1,
                "batch": 1,
                "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "models": {s.partition("=")[0]: s.partition("=")[2] for s in args.models},
                "results": results,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
