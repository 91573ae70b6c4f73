"""The Relax rewrites before legalize (bvit_edge.runtime.graph_passes) and the reshape rule of the float
schedules: fewer kernels and copies, the same values as numpy (exactly for the layout rewrites, within an
ulp-level tolerance for the scaled softmax and the division by a constant)."""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax

from bvit_edge.runtime.compile import build_relax
from bvit_edge.runtime.graph_passes import graph_passes
from bvit_edge.runtime.schedules import family_params
from bvit_edge.targets import load_target

SPEC = load_target("host")
FAM = family_params(SPEC.family, SPEC.tvm())


def _module(build, *shapes):
    bb = relax.BlockBuilder()
    xs = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", xs):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *xs))
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, *arrays, fast_math=False):
    vm = relax.VirtualMachine(build_relax(mod, SPEC, FAM, fast_math), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
    return out.numpy() if hasattr(out, "numpy") else [o.numpy() for o in out]


def _kernel_calls(mod, fast_math=False):
    """The kernels ``main`` calls once fused and scheduled, as the pipeline does it (reshapes that became
    views are left out: they are relax reshapes, no kernel)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from bvit_edge.runtime.schedules import float_schedule_pass

    target = SPEC.tvm()
    with target:
        seq = tvm.transform.Sequential(
            graph_passes(fast_math)
            + ([relax.transform.FastMathTransform()] if fast_math else [])
            + cpu.legalize_passes(target)
            + [float_schedule_pass(FAM), relax.transform.RewriteDataflowReshape()]
        )
        low = seq(mod)
    return re.findall(r"call_tir\((?:cls\.)?(\w+)", low["main"].script())


def _opaque_double(bb, x):
    """2 * x as an opaque kernel (op_pattern 8, like the binary kernels): FuseOps fuses nothing into it."""
    from tvm.script import tirx as T

    n = int(np.prod([int(d) for d in x.ty.shape.values]))

    @T.prim_func(private=True, s_tir=True)
    def double(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32")):
        for i in range(n):
            with T.sblock("b"):
                vi = T.axis.remap("S", [i])
                b[vi] = a[vi] * T.float32(2)

    gv = bb.add_func(double.with_attr("op_pattern", 8), "opaque_double")
    flat = bb.emit(relax.op.reshape(x, (n,)))
    return bb.emit(relax.call_tir(gv, [flat], relax.TensorType((n,), "float32")))


def test_identity_reshape_is_dropped_and_a_reshape_before_an_opaque_kernel_is_a_view():
    """reshape to the same shape disappears; a reshape feeding an opaque kernel (as the binary kernels'
    inputs) costs no copy kernel: the float rules leave it unscheduled, so it becomes a view."""

    def build(bb, x):
        y = bb.emit(relax.op.add(x, x))
        y = bb.emit(relax.op.reshape(y, (2, 6, 10)))  # identity
        return _opaque_double(bb, y)

    mod = _module(build, (2, 6, 10))
    assert tvm.transform.Sequential(graph_passes(False))(mod)["main"].script().count("R.reshape") == 1
    calls = _kernel_calls(mod)
    assert calls == ["add", "opaque_double"], calls
    x = np.random.default_rng(0).standard_normal((2, 6, 10)).astype(np.float32)
    np.testing.assert_array_equal(_run(mod, x), (4 * x).reshape(-1))


def test_the_qkv_split_reads_the_projection_output_without_a_permuted_copy():
    """take(permute_dims(reshape(qkv)), i) for q, k, v (the ViT attention split): no take kernel and no
    kernel writing the permuted [3, 1, H, N, D] tensor; each operand one fused kernel; values exact."""
    n, h, d = 10, 2, 8

    def build(bb, qkv):
        t = bb.emit(relax.op.reshape(qkv, (1, n, 3, h, d)))
        t = bb.emit(relax.op.permute_dims(t, [2, 0, 3, 1, 4]))
        q = bb.emit(relax.op.take(t, relax.const(0, "int64"), axis=0))
        k = bb.emit(relax.op.take(t, relax.const(1, "int64"), axis=0))
        v = bb.emit(relax.op.take(t, relax.const(2, "int64"), axis=0))
        kt = bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))
        return relax.Tuple([bb.emit(relax.op.add(q, q)), bb.emit(relax.op.add(kt, kt)), bb.emit(relax.op.add(v, v))])

    mod = _module(build, (n, 3 * h * d))
    calls = _kernel_calls(mod)
    assert not any(c.startswith("take") for c in calls), calls
    assert len(calls) == 3, calls
    x = np.random.default_rng(1).standard_normal((n, 3 * h * d)).astype(np.float32)
    t = x.reshape(1, n, 3, h, d).transpose(2, 0, 3, 1, 4)
    q, k, v = _run(mod, x)
    np.testing.assert_array_equal(q, 2 * t[0])
    np.testing.assert_array_equal(k, 2 * t[1].transpose(0, 1, 3, 2))
    np.testing.assert_array_equal(v, 2 * t[2])


def test_division_by_a_scalar_constant_becomes_a_multiplication():
    def build(bb, x):
        return relax.op.divide(x, relax.const(np.float32(1.4142135), "float32"))

    mod = _module(build, (4, 33))
    after = tvm.transform.Sequential(graph_passes(False))(mod)
    script = after["main"].script()
    assert "R.divide" not in script and "R.multiply" in script
    x = np.random.default_rng(2).standard_normal((4, 33)).astype(np.float32)
    np.testing.assert_allclose(_run(mod, x), x / np.float32(1.4142135), rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("fast_math", [False, True])
def test_scaled_softmax_with_its_bias_is_one_kernel_and_matches_numpy(fast_math):
    """softmax(x * c) + B (attention's scale and GSB's bias): one kernel, e * (1 / sum) within float
    rounding (and TVM's exp approximation) of numpy's float64 softmax."""
    rng = np.random.default_rng(3)
    b_np = rng.standard_normal((2, 9, 37)).astype(np.float32) * 0.01

    def build(bb, x):
        s = bb.emit(relax.op.multiply(x, relax.const(np.float32(0.125), "float32")))
        p = bb.emit(relax.op.nn.softmax(s, axis=-1))
        return relax.op.add(p, relax.const(b_np))

    mod = _module(build, (1, 2, 9, 37))
    calls = _kernel_calls(mod, fast_math)
    assert len(calls) == 1 and "softmax" in calls[0], calls
    x = rng.standard_normal((1, 2, 9, 37)).astype(np.float32) * 8
    xd = x.astype(np.float64) * 0.125
    e = np.exp(xd - xd.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True) + b_np
    np.testing.assert_allclose(_run(mod, x, fast_math=fast_math), ref, rtol=1e-6, atol=1e-6)


def test_softmax_over_another_axis_is_left_to_tvm():
    def build(bb, x):
        return relax.op.nn.softmax(x, axis=1)

    mod = _module(build, (3, 5, 4))
    after = tvm.transform.Sequential(graph_passes(True))(mod)
    assert "R.nn.softmax" in after["main"].script()
    x = np.random.default_rng(4).standard_normal((3, 5, 4)).astype(np.float32)
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(_run(mod, x), e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
