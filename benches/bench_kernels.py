"""Binary GEMM kernels vs onnxruntime float32 MatMul, side by side, plus the machine's ceilings.

For each shape (M tokens, K in, N out) of DeiT-S and DeiT-T's binary layers, at 1 and 2 threads, times in
the same process run, interleaved:
  * bvit-edge's BinaryLinear kernel for the host (activation packing fused + popcount GEMM + scale/bias
    epilogue; weights [K/64, N] uint64), built by TVM with the host family's schedule and the knobs
    `bvit-edge compile` applies (the shipped tuning record of the shape, else the family rule);
  * onnxruntime's float32 MatMul x[M, K] @ W[K, N] (intra_op_num_threads = threads).
Then the ratio (ORT time / ours) and the fraction of the popcount ceiling reached:
  achieved binary MAC/s = M*N*K / t; ceiling = per-core XOR+popcount throughput (benches/ceiling.c, compiled
  here with cc -O3 -march=native) * threads.

Also, when the host can run AVX2 code: the AVX2 family's two popcount strategies on the DeiT-S shapes
(LLVM's vpshufb nibble lookup on vectors vs scalar popcnt), 1 thread.

Usage: python benches/bench_kernels.py [--out benches/results/bench_kernels.json] [--threads 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_START_AFFINITY = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
SHAPES = {
    "deit_small": [(198, 384, 1152), (198, 384, 384), (198, 384, 1536), (198, 1536, 384)],
    "deit_tiny": [(198, 192, 576), (198, 192, 192), (198, 192, 768), (198, 768, 192)],
}


def ceilings(iterations: int = 5_000_000) -> dict:
    """Compile and run benches/ceiling.c; its JSON line (per-core binary and fp32 MAC/s)."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "ceiling"
        cc = os.environ.get("CC", "cc")
        flags = ["-O3", "-funroll-loops", "-march=native"]
        subprocess.run([cc, *flags, "-o", str(exe), str(HERE / "ceiling.c")], check=True)
        out = subprocess.run([str(exe), str(iterations)], check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    res["compiler_flags"] = " ".join(flags)
    return res


def build_binary_linear(m: int, k: int, n: int, target: str = "host", vector_popcount: bool | None = None):
    """The BinaryLinear kernel scheduled for ``target``'s family as a callable TVM module.

    ``vector_popcount`` overrides the family's choice (AVX2: True = LLVM's vpshufb nibble lookup on
    vectors, False = scalar popcnt per word).
    """
    import dataclasses

    import tvm

    from bvit_edge.runtime.kernels import binary_linear_kernel
    from bvit_edge.runtime.schedules import family_params, schedule_binary_linear
    from bvit_edge.runtime.tuning import KernelSpec, shipped_database
    from bvit_edge.targets import load_target

    spec = load_target(target)
    fam = family_params(spec.family)
    if vector_popcount is not None:
        fam = dataclasses.replace(fam, vector_popcount=vector_popcount)
    else:  # the knobs `bvit-edge compile` applies: the shipped tuning record of this shape, else the rule
        fam = shipped_database(spec.family).params_for(
            fam, KernelSpec("binary_linear", (m, k, n), ("signed",), fam.word_bits).key
        )
    func = schedule_binary_linear(binary_linear_kernel(m, k, n, "signed", fam.word_bits), fam)
    mod = tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")})
    return tvm.tirx.build(mod, target=spec.tvm()), spec


def ort_matmul(k: int, n: int, w: np.ndarray, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _median_s(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    a = np.array(ts)
    return {
        "median_us": float(np.median(a) * 1e6),
        "p90_us": float(np.percentile(a, 90) * 1e6),
        "min_us": float(a.min() * 1e6),
        "runs": runs,
        "warmup": warmup,
    }


def _kernel_args(m: int, k: int, n: int):
    import tvm

    from bvit_edge.packing import as_words, pack_bits

    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    wf = rng.standard_normal((k, n)).astype(np.float32)
    words = np.ascontiguousarray(as_words(pack_bits(wf.T < 0)).T)
    return (
        x,
        wf,
        [
            tvm.runtime.tensor(a)
            for a in (
                x,
                np.zeros(k, np.float32),
                np.ones(1, np.float32),
                words,
                np.ones(n, np.float32),
                np.zeros(n, np.float32),
                np.zeros((m, n), np.float32),
            )
        ],
    )


def avx2_popcount_variants(m: int, k: int, n: int, runs: int) -> dict:
    """AVX2 family (x86-64-avx2 preset, run natively when the host has AVX2): vpshufb nibble-LUT vector
    popcount vs scalar popcnt, 1 thread, with the instruction each one's assembly holds."""
    _, _, args = _kernel_args(m, k, n)
    out = {"m": m, "k": k, "n": n, "threads": 1}
    for name, vec in (("nibble_lut_vector", True), ("scalar_popcnt", False)):
        lib, _ = build_binary_linear(m, k, n, "x86-64-avx2", vector_popcount=vec)
        asm = lib.inspect_source("asm") if hasattr(lib, "inspect_source") else ""
        kern = lib["kernel"]
        out[name + "_us"] = _median_s(lambda kern=kern: kern(*args), runs, warmup=5)["median_us"]
        out[name + "_asm"] = {"vpshufb": asm.count("vpshufb"), "popcnt": asm.count("\tpopcnt")}
    out["lut_speedup_vs_scalar"] = out["scalar_popcnt_us"] / out["nibble_lut_vector_us"]
    return out


def bench_shape(m: int, k: int, n: int, threads: int, runs: int, rounds: int, set_threads) -> dict:

    x, wf, args = _kernel_args(m, k, n)
    lib, _ = build_binary_linear(m, k, n)
    kern = lib["kernel"]
    if _START_AFFINITY:  # onnxruntime's threads inherit the affinity at session creation: every CPU we had
        os.sched_setaffinity(0, _START_AFFINITY)
    sess = ort_matmul(k, n, wf, threads)
    feed = {"x": x}
    set_threads(threads)
    # interleave: several rounds of (ours, ORT) so drift on a shared machine hits both alike
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(_median_s(lambda: kern(*args), runs, warmup=max(3, runs // 10)))
        theirs.append(_median_s(lambda: sess.run(None, feed), runs, warmup=max(3, runs // 10)))
    t_ours = float(np.median([r["median_us"] for r in ours]))
    t_ort = float(np.median([r["median_us"] for r in theirs]))
    return {
        "m": m,
        "k": k,
        "n": n,
        "threads": threads,
        "binary_us": t_ours,
        "ort_f32_us": t_ort,
        "speedup_vs_ort": t_ort / t_ours,
        "binary_mac_per_s": m * n * k / (t_ours * 1e-6),
        "rounds": rounds,
        "runs_per_round": runs,
        "binary_rounds_median_us": [r["median_us"] for r in ours],
        "ort_rounds_median_us": [r["median_us"] for r in theirs],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_kernels.json")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke run)")
    ap.add_argument("--no-avx2", action="store_true", help="skip the AVX2 nibble-LUT vs scalar popcnt comparison")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.rounds = 10, 1
    import onnxruntime as ort
    import tvm

    pool = tvm.get_global_func("runtime.config_threadpool")
    ceil = ceilings()
    rows = []
    for model in args.models:
        for m, k, n in SHAPES[model]:
            for t in args.threads:
                r = bench_shape(m, k, n, t, args.runs, args.rounds, lambda th: pool(0, th))
                r["model"] = model
                rows.append(r)
                print(
                    f"{model:10s} {m}x{k}->{n:5d} t={t}: binary {r['binary_us']:8.1f} us  ORT f32 "
                    f"{r['ort_f32_us']:8.1f} us  ratio {r['speedup_vs_ort']:5.1f}x",
                    flush=True,
                )
    # the ceiling again after the kernels: on a shared machine the faster of the two is the ceiling
    ceil2 = ceilings()
    if ceil2["binary_mac_per_s"] > ceil["binary_mac_per_s"]:
        ceil = ceil2
    for r in rows:
        r["popcount_ceiling_mac_per_s"] = ceil["binary_mac_per_s"] * r["threads"]
        r["pct_of_popcount_ceiling"] = 100.0 * r["binary_mac_per_s"] / r["popcount_ceiling_mac_per_s"]
        print(
            f"{r['model']:10s} {r['m']}x{r['k']}->{r['n']:5d} t={r['threads']}: "
            f"{r['pct_of_popcount_ceiling']:5.1f}% of the popcount ceiling"
        )
    from bvit_edge.targets import load_target

    spec = load_target("host")
    avx2 = []
    if not args.no_avx2 and load_target("x86-64-avx2").runs_natively():
        pool(0, 1)
        for m, k, n in SHAPES["deit_small"]:
            v = avx2_popcount_variants(m, k, n, args.runs)
            avx2.append(v)
            print(
                f"AVX2 {m}x{k}->{n:5d} t=1: nibble-LUT {v['nibble_lut_vector_us']:8.1f} us, scalar popcnt "
                f"{v['scalar_popcnt_us']:8.1f} us -> LUT {v['lut_speedup_vs_scalar']:.2f}x"
            )
    report = {
        "schema_version": 1,
        "bench": "bench_kernels",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {
            "machine": platform.machine(),
            "cpu": spec.tvm_target.get("mcpu"),
            "family": spec.family,
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "tvm": tvm.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "ceiling": ceil,
        "kernel": "BinaryLinear signed (pack fused + popcount GEMM + epilogue), batch of M tokens",
        "baseline": "onnxruntime CPU float32 MatMul",
        "results": rows,
        "avx2_popcount_variants": avx2,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE.parent))
    from bvit_edge.atomic import write_json

    write_json(args.out, report)
    print(
        f"ceiling per core: {ceil['binary_mac_per_s']:.3e} binary MAC/s ({ceil['popcount_isa']}), "
        f"{ceil['fp32_mac_per_s']:.3e} fp32 MAC/s ({ceil['fma_isa']}); ratio {ceil['ratio']:.1f}x"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
