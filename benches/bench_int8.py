"""The 8-bit layers of GSB DeiT-S / DeiT-T: integer kernels vs the float matmuls they replace, side by side.

For each model geometry, at 1 thread, in one process, interleaved blocks (warm-up runs discarded):
  * heads (W8A8, M = 1 class token, K = embed dim, N = 1000): bvit-edge's int8 GEMM (exact int32
    accumulators, the host's dot scheme: vpdpbusd / vpmaddwd / sdot / smull) vs the float GEMV it replaced
    (dequantized f32 weights, our float schedules, built the same way) and onnxruntime's f32 MatMul;
  * patch embedding (W8A32: float image, int8 weights, 16x16 patches, 196 tokens): bvit-edge's kernel
    reading the image directly vs the float path it replaced (im2col copy + float GEMM on dequantized
    weights, our schedules) and onnxruntime's f32 Conv.
Times are medians of thread CPU time (robust when other processes share the cores) and of wall time; the
ratios compare medians. The weight bytes as the artifact stores them (params.npz arrays): float32 before,
int8 (padded to the kernels' tiles) now. Results in benches/results/bench_int8.json.

Usage: python benches/bench_int8.py [--out benches/results/bench_int8.json] [--runs 200] [--rounds 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GEOMETRIES = {"deit_small": 384, "deit_tiny": 192}


def _float_module(build, shapes):
    import tvm
    from tvm import relax

    from bvit_edge.runtime.compile import build_relax
    from bvit_edge.runtime.schedules import family_params
    from bvit_edge.targets import load_target

    spec = load_target("host")
    bb = relax.BlockBuilder()
    xs = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", xs):
        with bb.dataflow():
            out = bb.emit_output(build(*xs))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(build_relax(bb.get(), spec, family_params(spec.family, spec.tvm()), True), tvm.cpu())
    return lambda *a: vm["main"](*a)


def _kernel(func):
    import tvm

    from bvit_edge.targets import load_target

    ex = tvm.compile(tvm.IRModule({"k": func.with_attr("global_symbol", "k")}), target=load_target("host").tvm())
    return ex.mod["k"]


def _ort(nodes, inputs, inits, threads=1):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _time(fns: dict, runs: int, rounds: int, warmup: int = 3) -> dict:
    cpu = {k: [] for k in fns}
    wall = {k: [] for k in fns}
    per = max(1, runs // rounds)
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(warmup):
                fn()
            for _ in range(per):
                c, t = time.thread_time(), time.perf_counter()
                fn()
                wall[k].append(time.perf_counter() - t)
                cpu[k].append(time.thread_time() - c)
    return {
        k: {
            "cpu_median_us": float(np.median(cpu[k]) * 1e6),
            "wall_median_us": float(np.median(wall[k]) * 1e6),
            "wall_min_us": float(np.min(wall[k]) * 1e6),
            "runs": len(cpu[k]),
            "warmup_discarded": warmup * rounds,
        }
        for k in fns
    }


def bench_heads(dim: int, runs: int, rounds: int) -> dict:
    import tvm
    from tvm import relax

    from bvit_edge.runtime.kernels.int8_dot import SCHEMES, offset_correction, pack_weights
    from bvit_edge.runtime.kernels.int8_linear import int8_linear_kernel
    from bvit_edge.runtime.schedules import family_params
    from bvit_edge.runtime.schedules.int8 import schedule_int8_linear
    from bvit_edge.targets import load_target

    spec = load_target("host")
    fam = family_params(spec.family, spec.tvm())
    scheme = SCHEMES[fam.int8_dot]
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.standard_normal((1, dim)).astype(np.float32)
    w = rng.integers(-128, 128, size=(n, dim), dtype=np.int8)
    s_a, s_w = np.float32(0.05), (rng.random(n) * 0.01 + 1e-3).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    packed = pack_weights(w, scheme, 4)
    corr = offset_correction(w, scheme, packed.shape[0] * scheme.lanes)
    kern = _kernel(schedule_int8_linear(int8_linear_kernel(1, dim, n, scheme, 4), scheme, 4, fam.float_lanes))
    iargs = [
        tvm.runtime.tensor(a)
        for a in (x, np.array([s_a], np.float32), packed, s_w, b, corr, np.zeros((1, n), np.float32))
    ]
    wf_t = np.ascontiguousarray((w.astype(np.float32) * s_w[:, None]).T)  # the dequantized f32 weights [K, N]
    xq = (np.clip(np.rint(x / s_a), -128, 127) * s_a).astype(np.float32)
    flt = _float_module(lambda v: relax.op.add(relax.op.matmul(v, relax.const(wf_t)), relax.const(b)), [(1, dim)])
    xt = tvm.runtime.tensor(xq)
    sess = _ort(
        [_node("MatMul", ["x", "w"], ["m"]), _node("Add", ["m", "b"], ["y"])], [("x", [1, dim])], {"w": wf_t, "b": b}
    )
    kern(*iargs)
    np.testing.assert_allclose(iargs[-1].numpy(), flt(xt).numpy(), rtol=1e-5, atol=1e-5)
    times = _time(
        {
            "int8_kernel": lambda: kern(*iargs),
            "float_gemv_tvm": lambda: flt(xt),
            "float_matmul_ort": lambda: sess.run(None, {"x": xq}),
        },
        runs,
        rounds,
    )
    return {
        "shape_m_k_n": [1, dim, n],
        "scheme": scheme.name,
        "instructions": list(scheme.instructions),
        "times": times,
        "weight_bytes": {"float32": int(wf_t.nbytes), "int8_params": int(packed.nbytes + corr.nbytes)},
    }


def _node(op, ins, outs, **attrs):
    from onnx import helper

    return helper.make_node(op, ins, outs, **attrs)


def bench_patch(dim: int, runs: int, rounds: int) -> dict:
    import tvm
    from tvm import relax

    from bvit_edge.runtime.kernels.int8_weight_linear import (
        PatchGeometry,
        int8_weight_linear_kernel,
        pack_weight_panels,
        pad_vector,
    )
    from bvit_edge.runtime.schedules import family_params
    from bvit_edge.runtime.schedules.int8 import register_tile, schedule_int8_weight_linear
    from bvit_edge.targets import load_target

    spec = load_target("host")
    fam = family_params(spec.family, spec.tvm())
    geo = PatchGeometry(3, 224, 224, 16)
    rng = np.random.default_rng(1)
    img = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    w = rng.integers(-128, 128, size=(dim, 3, 16, 16), dtype=np.int8)
    s = (rng.random(dim) * 0.01 + 1e-3).astype(np.float32)
    b = rng.standard_normal(dim).astype(np.float32)
    lanes = fam.float_lanes
    rows, vectors = register_tile(14, -(-dim // lanes) * lanes, lanes, fam.float_registers)
    panel = vectors * lanes
    pn = -(-dim // panel) * panel
    kern = _kernel(
        schedule_int8_weight_linear(int8_weight_linear_kernel(196, 768, dim, panel, geo), rows, vectors, lanes)
    )
    packed = pack_weight_panels(w.reshape(dim, -1), panel)
    kargs = [
        tvm.runtime.tensor(a)
        for a in (img, packed, pad_vector(s, pn), pad_vector(b, pn), np.zeros((14, 14, dim), np.float32))
    ]
    wf = (w.astype(np.float32) * s[:, None, None, None]).astype(np.float32)

    def im2col_gemm(v):  # the float path bvit-edge took before: patches copied, then a float GEMM
        p = relax.op.reshape(
            relax.op.permute_dims(relax.op.reshape(v, (3, 14, 16, 14, 16)), [1, 3, 0, 2, 4]), (196, 768)
        )
        return relax.op.add(
            relax.op.matmul(p, relax.const(np.ascontiguousarray(wf.reshape(dim, -1).T))), relax.const(b)
        )

    flt = _float_module(im2col_gemm, [(1, 3, 224, 224)])
    it = tvm.runtime.tensor(img)
    sess = _ort(
        [_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[16, 16], strides=[16, 16])],
        [("x", [1, 3, 224, 224])],
        {"w": wf, "b": b},
    )
    kern(*kargs)
    np.testing.assert_allclose(kargs[-1].numpy().reshape(196, dim), flt(it).numpy(), rtol=1e-4, atol=1e-4)
    times = _time(
        {
            "int8_patch_kernel": lambda: kern(*kargs),
            "float_im2col_gemm_tvm": lambda: flt(it),
            "float_conv_ort": lambda: sess.run(None, {"x": img}),
        },
        runs,
        rounds,
    )
    return {
        "tokens_k_n": [196, 768, dim],
        "register_tile": [rows, vectors],
        "times": times,
        "weight_bytes": {"float32": int(wf.nbytes), "int8_params": int(packed.nbytes)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_int8.json")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import tvm

    from bvit_edge.atomic import write_json
    from bvit_edge.runtime.schedules import family_params
    from bvit_edge.targets import load_target

    tvm.get_global_func("runtime.config_threadpool")(0, 1)
    spec = load_target("host")
    fam = family_params(spec.family, spec.tvm())
    results = {}
    for name, dim in GEOMETRIES.items():
        heads = bench_heads(dim, args.runs, args.rounds)
        patch = bench_patch(dim, args.runs, args.rounds)
        results[name] = {"heads": heads, "patch_embed": patch}
        ht, pt = heads["times"], patch["times"]
        print(
            f"{name}: head (1 x {dim} x 1000, {heads['scheme']}): int8 {ht['int8_kernel']['cpu_median_us']:.1f} us, "
            f"float GEMV (TVM) {ht['float_gemv_tvm']['cpu_median_us']:.1f} us "
            f"({ht['float_gemv_tvm']['cpu_median_us'] / ht['int8_kernel']['cpu_median_us']:.1f}x), "
            f"ORT {ht['float_matmul_ort']['cpu_median_us']:.1f} us; weights "
            f"{heads['weight_bytes']['float32']} -> {heads['weight_bytes']['int8_params']} bytes",
            flush=True,
        )
        print(
            f"{name}: patch embedding (196 x 768 x {dim}): int8-weight kernel "
            f"{pt['int8_patch_kernel']['cpu_median_us']:.1f} us, im2col + float GEMM (TVM) "
            f"{pt['float_im2col_gemm_tvm']['cpu_median_us']:.1f} us "
            f"({pt['float_im2col_gemm_tvm']['cpu_median_us'] / pt['int8_patch_kernel']['cpu_median_us']:.2f}x), "
            f"ORT Conv {pt['float_conv_ort']['cpu_median_us']:.1f} us; weights "
            f"{patch['weight_bytes']['float32']} -> {patch['weight_bytes']['int8_params']} bytes",
            flush=True,
        )
    report = {
        "schema_version": 1,
        "bench": "bench_int8",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": 1,
        "batch": 1,
        "host": {
            "machine": platform.machine(),
            "cpu": spec.tvm_target.get("mcpu"),
            "family": spec.family,
            "int8_dot": fam.int8_dot,
        },
        "versions": {"tvm": tvm.__version__, "onnxruntime": ort.__version__, "python": sys.version.split()[0]},
        "timing": "medians of thread CPU time and wall time, interleaved blocks in one process",
        "results": results,
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
