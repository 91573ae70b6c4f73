"""GSB's attention products for DeiT-S shapes: the row-wise A·V kernel vs the plane-pair popcount kernel.

Shapes: 6 heads, N = 198 tokens, head dim 64 (GSB DeiT-S). Operands of A·V (A' f32[1, 6, 198, 198]
gsb_unsigned, V' f32[1, 6, 198, 64] gsb_signed):
  * ``deit_s_blocks``: the real operands of the 12 blocks of GSB DeiT-S with random non-zero frozen
    weights (bvit_edge.bench_models) on one random image, captured with benches/attention_planes.py;
    the time is the sum over the 12 blocks (one inference's A·V);
  * ``dense``: every plane of A' and every mask of V' dense (A' in [1, 2) with a1 = 0.02, |V'| close to
    its max): no word or row is skipped, the data-dependent kernel's worst case;
  * ``zeros``: A' = 0 (every plane empty).
Kernels, built for the host family (TVM, 1 thread), timed interleaved in one process:
  * ``popcount``: bvit_edge.runtime.kernels.binary_matmul (packing of all planes + the 9 plane-pair popcount
    products + epilogue; the kernel `compile` used before the row-wise one);
  * ``rows``: bvit_edge.runtime.kernels.binary_matmul_rows (rows packed in registers, all-zero words and
    rows of a plane skipped), what `compile` uses now.
Both are checked equal to the numpy reference (bvit_edge.export.ops.binary_matmul) on every input.
Also Q·Kᵀ (signed x signed, K = 64, one word: both kernels, random Q and K) and one BinaryLinear
(198 x 384 -> 1152) for the binary efficiency of the linear layers in the same run. Binary MAC/s = the
nominal plane-pair MACs (pairs * H * M * K * N) / time.

Usage: python benches/bench_attention.py [--runs 50] [--rounds 3] [--out benches/results/bench_attention.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
HEADS, TOKENS, HEAD_DIM = 6, 198, 64
RATIOS = (0.7, 0.9)


def _build(func: Any, target: Any) -> Any:
    import tvm

    mod = tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")})
    return tvm.tirx.build(mod, target=target)["kernel"]


def build_kernels(shape: tuple[int, ...], a_mode: str, b_mode: str) -> tuple[dict[str, Any], Any]:
    """{'popcount': fn, 'rows': fn (unsigned A only)} for the host, and the target spec."""
    from bvit_edge.runtime.kernels import binary_matmul_kernel
    from bvit_edge.runtime.kernels.binary_matmul_rows import ROW_A_MODES, binary_matmul_rows_kernel
    from bvit_edge.runtime.schedules import family_params, schedule_binary_matmul
    from bvit_edge.targets import load_target

    spec = load_target("host")
    fam = family_params(spec.family)
    tgt = spec.tvm()
    out = {
        "popcount": _build(
            schedule_binary_matmul(binary_matmul_kernel(*shape, a_mode, b_mode, RATIOS, fam.word_bits), fam), tgt
        )
    }
    if a_mode in ROW_A_MODES:
        out["rows"] = _build(
            binary_matmul_rows_kernel(*shape, a_mode, b_mode, RATIOS, fam.row_word_bits, fam.float_lanes), tgt
        )
    return out, spec


def deit_s_operands() -> list[dict[str, Any]]:
    """A', V' and scales of the 12 A·V products of GSB DeiT-S (random non-zero frozen weights, 1 image)."""
    import torch

    sys.path.insert(0, str(HERE))
    from attention_planes import capture_attention_operands

    from bvit_edge.bench_models import random_frozen_student

    torch.set_num_threads(1)
    model = random_frozen_student("gsb_deit_small_patch16_224").eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return capture_attention_operands(model, x)


def synthetic_operands(kind: str) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    shp_a, shp_v = (1, HEADS, TOKENS, TOKENS), (1, HEADS, TOKENS, HEAD_DIM)
    v = rng.choice([-1.0, 1.0], size=shp_v).astype(np.float32) * rng.uniform(0.95, 1.0, shp_v).astype(np.float32)
    a = rng.uniform(1.0, 2.0, shp_a).astype(np.float32) if kind == "dense" else np.zeros(shp_a, np.float32)
    return {"a": a, "v": v, "a_alpha": np.array([0.02, 0.5, 0.25], np.float32), "v_alpha": np.ones(3, np.float32)}


def _time(fn: Any, args: list[Any], runs: int) -> list[float]:
    for _ in range(3):
        fn(*args)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(*args)
        ts.append(time.perf_counter() - t0)
    return ts


def bench_av(cases: dict[str, list[dict[str, Any]]], runs: int, rounds: int) -> list[dict[str, Any]]:
    import tvm

    from bvit_edge.export.ops.binary_matmul import binary_matmul_reference

    shape = (1, HEADS, TOKENS, TOKENS, HEAD_DIM)
    kernels, _ = build_kernels(shape, "gsb_unsigned", "gsb_signed")
    rows = []
    for case, recs in cases.items():
        prepared = []
        err = dict.fromkeys(kernels, 0.0)
        same = True
        for rec in recs:
            args = [
                tvm.runtime.tensor(x)
                for x in (
                    rec["a"],
                    rec["v"],
                    rec["a_alpha"],
                    rec["v_alpha"],
                    np.zeros((*shape[:3], HEAD_DIM), np.float32),
                )
            ]
            ref = binary_matmul_reference(
                rec["a"],
                rec["v"],
                np.zeros(1, np.float32),
                rec["a_alpha"],
                np.zeros(1, np.float32),
                rec["v_alpha"],
                a_mode="gsb_unsigned",
                b_mode="gsb_signed",
                gsb_ratios=RATIOS,
            )
            outs = {}
            for name, fn in kernels.items():
                fn(*args)
                outs[name] = args[-1].numpy().copy()
                scale = max(float(np.abs(ref).max()), 1e-30)
                err[name] = max(err[name], float(np.abs(outs[name] - ref).max()) / scale)
            same &= len({o.tobytes() for o in outs.values()}) == 1
            prepared.append(args)
        per: dict[str, list[float]] = {name: [] for name in kernels}
        for _ in range(rounds):
            for name, fn in kernels.items():
                # one inference = every block's product once; median over runs of that sum
                samples = np.sum([_time(fn, args, runs) for args in prepared], axis=0)
                per[name].append(float(np.median(samples)))
        macs = 9 * HEADS * TOKENS * TOKENS * HEAD_DIM * len(prepared)
        res = {
            "case": case,
            "products": len(prepared),
            "nominal_binary_macs": macs,
            "max_rel_diff_vs_numpy": err,  # float rounding only: the kernels fuse out + c * dot into an FMA
            "kernels_bitwise_equal": same,
        }
        for name in kernels:
            t = float(np.median(per[name]))
            res[f"{name}_us"] = t * 1e6
            res[f"{name}_us_per_product"] = t * 1e6 / len(prepared)
            res[f"{name}_binary_mac_per_s"] = macs / t
        if "rows" in kernels:
            res["speedup_rows_vs_popcount"] = res["popcount_us"] / res["rows_us"]
        rows.append(res)
        print(
            f"A.V {case:14s} x{len(prepared):2d}: popcount {res['popcount_us']:8.1f} us  "
            f"rows {res.get('rows_us', 0):8.1f} us"
            f"  ({res.get('speedup_rows_vs_popcount', 0):.2f}x; {res.get('rows_binary_mac_per_s', 0):.2e} binary MAC/s)"
            f"  max rel diff vs numpy {err}, kernels equal {same}",
            flush=True,
        )
    return rows


def bench_qk(runs: int, rounds: int) -> dict[str, Any]:
    import tvm

    shape = (1, HEADS, TOKENS, HEAD_DIM, TOKENS)
    kernels, _ = build_kernels(shape, "signed", "signed")
    rng = np.random.default_rng(1)
    args = [
        tvm.runtime.tensor(x)
        for x in (
            rng.standard_normal((1, HEADS, TOKENS, HEAD_DIM)).astype(np.float32),
            rng.standard_normal((1, HEADS, HEAD_DIM, TOKENS)).astype(np.float32),
            np.ones(1, np.float32),
            np.ones(1, np.float32),
            np.zeros((1, HEADS, TOKENS, TOKENS), np.float32),
        )
    ]
    per: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(rounds):
        for name, fn in kernels.items():
            per[name].append(float(np.median(_time(fn, args, runs))))
    macs = HEADS * TOKENS * HEAD_DIM * TOKENS
    res: dict[str, Any] = {"binary_macs": macs}
    for name in kernels:
        t = float(np.median(per[name]))
        res[f"{name}_us_per_product"] = t * 1e6
        res[f"{name}_binary_mac_per_s"] = macs / t
    res["speedup_rows_vs_popcount"] = res["popcount_us_per_product"] / res["rows_us_per_product"]
    print(
        f"Q.K^T per block: popcount {res['popcount_us_per_product']:8.1f} us  rows {res['rows_us_per_product']:8.1f} us"
        f"  ({res['speedup_rows_vs_popcount']:.2f}x; {res['rows_binary_mac_per_s']:.2e} binary MAC/s)",
        flush=True,
    )
    return res


def bench_linear(runs: int, rounds: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from bench_kernels import _kernel_args, build_binary_linear

    m, k, n = 198, 384, 1152
    _, _, args = _kernel_args(m, k, n)
    lib, _ = build_binary_linear(m, k, n)
    fn = lib["kernel"]
    t = float(np.median([np.median(_time(fn, args, runs)) for _ in range(rounds)]))
    print(f"BinaryLinear {m}x{k}->{n}: {t * 1e6:8.1f} us ({m * k * n / t:.2e} binary MAC/s)", flush=True)
    return {"m": m, "k": k, "n": n, "us": t * 1e6, "binary_mac_per_s": m * k * n / t}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_attention.json")
    args = ap.parse_args(argv)
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(0, 1)
    cases = {
        "deit_s_blocks": deit_s_operands(),
        "dense": [synthetic_operands("dense")],
        "zeros": [synthetic_operands("zeros")],
    }
    av = bench_av(cases, args.runs, args.rounds)
    qk = bench_qk(args.runs, args.rounds)
    lin = bench_linear(args.runs, args.rounds)
    for r in av:
        r["rows_efficiency_vs_linear"] = r.get("rows_binary_mac_per_s", 0.0) / lin["binary_mac_per_s"]
        r["popcount_efficiency_vs_linear"] = r["popcount_binary_mac_per_s"] / lin["binary_mac_per_s"]
    from bvit_edge.targets import load_target

    spec = load_target("host")
    doc = {
        "schema_version": 1,
        "bench": "bench_attention",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": 1,
        "host": {"family": spec.family, "cpu": spec.tvm_target.get("mcpu")},
        "shapes": {"heads": HEADS, "tokens": TOKENS, "head_dim": HEAD_DIM},
        "a_v": av,
        "q_kt": qk,
        "binary_linear": lin,
    }
    from bvit_edge.atomic import write_json

    write_json(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
