"""Every float op of a ViT-shaped graph gets a schedule (no unscheduled loop nest), and stays correct.

The graph holds the float ops of a binary ViT: patch-embedding Conv, LayerNormalization, MatMul + Add, Softmax,
GELU (Erf form) + Clip, residual Add, Gemm head. After our Relax pipeline every prim func must contain a parallel
loop; the compiled model must match onnxruntime. Also: the converter hook of TVM's ONNX importer is where
bvit_edge.runtime.tvm_frontend expects it, and is restored after an import.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
tvm = pytest.importorskip("tvm")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from bvit_edge.errors import ToolchainError
from bvit_edge.runtime import tvm_frontend
from bvit_edge.runtime.compile import build_relax, relax_pipeline
from bvit_edge.runtime.schedules import family_params
from bvit_edge.targets import load_target

D, P, IMG = 32, 4, 16  # embed dim, patch, image size -> 16 tokens


def float_vit_block() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def f(*s: int) -> np.ndarray:
        return (rng.standard_normal(s) * 0.2).astype(np.float32)

    t = (IMG // P) ** 2
    inits = [
        nh.from_array(f(D, 3, P, P), "pw"),
        nh.from_array(f(D), "pb"),
        nh.from_array(np.array([1, D, t], np.int64), "s1"),
        nh.from_array(np.ones(D, np.float32), "g"),
        nh.from_array(np.zeros(D, np.float32), "be"),
        nh.from_array(f(D, 4 * D), "w1"),
        nh.from_array(f(4 * D), "b1"),
        nh.from_array(f(4 * D, D), "w2"),
        nh.from_array(np.float32(np.sqrt(0.5)).reshape(()), "rs2"),
        nh.from_array(np.float32(1).reshape(()), "one"),
        nh.from_array(np.float32(0.5).reshape(()), "half"),
        nh.from_array(np.float32(-10).reshape(()), "lo"),
        nh.from_array(np.float32(10).reshape(()), "hi"),
        nh.from_array(f(10, D), "hw"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "pw", "pb"], ["c"], kernel_shape=[P, P], strides=[P, P]),
        oh.make_node("Reshape", ["c", "s1"], ["r"]),
        oh.make_node("Transpose", ["r"], ["tok"], perm=[0, 2, 1]),
        oh.make_node("LayerNormalization", ["tok", "g", "be"], ["ln"], axis=-1, epsilon=1e-6),
        oh.make_node("MatMul", ["ln", "w1"], ["h0"]),
        oh.make_node("Add", ["h0", "b1"], ["h1"]),
        oh.make_node("Mul", ["h1", "rs2"], ["e0"]),
        oh.make_node("Erf", ["e0"], ["e1"]),
        oh.make_node("Add", ["e1", "one"], ["e2"]),
        oh.make_node("Mul", ["h1", "e2"], ["e3"]),
        oh.make_node("Mul", ["e3", "half"], ["gelu"]),
        oh.make_node("Clip", ["gelu", "lo", "hi"], ["gc"]),
        oh.make_node("MatMul", ["gc", "w2"], ["h2"]),
        oh.make_node("Add", ["h2", "tok"], ["res"]),
        oh.make_node("Softmax", ["res"], ["sm"], axis=-1),
        oh.make_node("ReduceMean", ["sm", "ax"], ["pool"], keepdims=0),
        oh.make_node("Gemm", ["pool", "hw"], ["logits"], transB=1),
    ]
    inits.append(nh.from_array(np.array([1], np.int64), "ax"))
    g = oh.make_graph(
        nodes,
        "blk",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, IMG, IMG])],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)


@pytest.fixture(scope="module")
def lowered():
    spec = load_target("host")
    fam = family_params(spec.family)
    model = float_vit_block()
    mod = tvm_frontend.import_onnx(model, {"x": [1, 3, IMG, IMG]}, fam)
    return model, mod, spec, fam


def test_every_prim_func_is_scheduled_parallel(lowered):
    _, mod, spec, fam = lowered
    low = relax_pipeline(spec, fam)(mod)
    funcs = {gv.name_hint: f for gv, f in low.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert funcs
    unscheduled = [name for name, f in funcs.items() if "T.parallel" not in f.script()]
    assert not unscheduled, f"prim funcs without a parallel loop: {unscheduled}"
    # the elementwise GELU chain and the float matmuls are vectorized too
    vec = [name for name, f in funcs.items() if "T.vectorized" in f.script()]
    assert any("erf" in n for n in vec) and any("matmul" in n for n in vec), sorted(vec)


def test_scheduled_float_graph_matches_onnxruntime(lowered):
    model, mod, spec, fam = lowered
    exe = build_relax(mod, spec, fam)
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, 3, IMG, IMG)).astype(np.float32)
    y = vm["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_tvm_converter_hook_is_where_we_expect_and_restored():
    """Fails loudly if a TVM upgrade moves the Relax ONNX importer's converter table."""
    frontend = tvm_frontend.convert_map_hook()
    before = frontend._get_convert_map
    assert "BinaryLinear" not in before()
    with tvm_frontend.bvit_converters(family_params("x86-avx512")):
        table = frontend._get_convert_map()
        assert {"BinaryLinear", "BinaryMatMul"} <= set(table)
        assert issubclass(table["BinaryLinear"], frontend.OnnxOpConverter)
    assert frontend._get_convert_map is before and "BinaryLinear" not in frontend._get_convert_map()


def test_a_moved_hook_is_a_toolchain_error(monkeypatch):
    from tvm.relax.frontend.onnx import onnx_frontend

    monkeypatch.delattr(onnx_frontend, "_get_convert_map")
    with pytest.raises(ToolchainError) as err:
        tvm_frontend.convert_map_hook()
    assert err.value.exit_code == 4 and "_get_convert_map" in str(err.value)


def _conv_model(pads, stride, kernel) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((8, 3, kernel, kernel)) * 0.3).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    node = oh.make_node(
        "Conv", ["x", "w", "b"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=pads
    )
    out = (IMG + pads[0] + pads[2] - kernel) // stride + 1
    g = oh.make_graph(
        [node],
        "conv",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, IMG, IMG])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, out, out])],
        [nh.from_array(w, "w"), nh.from_array(b, "b")],
    )
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("pads,stride,kernel,patchify", [([0, 0, 0, 0], 4, 4, True), ([1, 1, 1, 1], 2, 3, False)])
def test_patch_conv_becomes_matmul_and_other_convs_stay(pads, stride, kernel, patchify):
    """kernel == stride, no padding: im2col + matmul (no conv2d left); any other Conv: the stock conv2d."""
    spec = load_target("host")
    fam = family_params(spec.family)
    model = _conv_model(pads, stride, kernel)
    mod = tvm_frontend.import_onnx(model, {"x": [1, 3, IMG, IMG]}, fam)
    has_conv = "conv2d" in mod.script()
    assert has_conv != patchify
    vm = tvm.relax.VirtualMachine(build_relax(mod, spec, fam), tvm.cpu())
    x = np.random.default_rng(3).standard_normal((1, 3, IMG, IMG)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), ref, rtol=1e-4, atol=1e-5)


def test_fast_math_keeps_the_float_graph_close(lowered):
    """fast_math=True (vectorized erf/exp/softmax approximations) stays within 1e-4 of onnxruntime."""
    model, mod, spec, fam = lowered
    low = relax_pipeline(spec, fam, fast_math=True)(mod)
    names = [gv.name_hint for gv in low.functions]
    assert any("fast" in n for n in names), names
    vm = tvm.relax.VirtualMachine(build_relax(mod, spec, fam, fast_math=True), tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, 3, IMG, IMG)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fast_math", [False, True])
@pytest.mark.parametrize(
    "op,shape", [("softmax", (1, 2, 13, 198)), ("layer_norm", (1, 7, 96)), ("softmax", (1, 3, 5, 40))]
)
def test_row_reductions_get_the_row_rule_and_match_numpy(op, shape, fast_math):
    """LayerNorm / softmax funcs: rows in parallel, each row reduction rfactored into vector lanes, the
    elementwise part vectorized (198 = 192 + a 6-wide tail, no scalar fallback); values as numpy's."""
    from tvm import relax

    from bvit_edge.runtime.schedules.float_ops import RowReductionRule

    spec = load_target("host")
    fam = family_params(spec.family)
    rng = np.random.default_rng(1)
    x_np = (rng.standard_normal(shape) * 3 + 0.5).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    n = shape[-1]
    g_np, b_np = rng.random(n).astype(np.float32) + 0.5, rng.standard_normal(n).astype(np.float32)
    with bb.function("main", [x]):
        with bb.dataflow():
            if op == "softmax":
                y = bb.emit(relax.op.nn.softmax(x, axis=-1))
            else:
                y = bb.emit(relax.op.nn.layer_norm(x, relax.const(g_np), relax.const(b_np), axes=[-1], epsilon=1e-6))
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    mod = bb.get()
    low = relax_pipeline(spec, fam, fast_math)(mod)
    funcs = [f for _, f in low.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(funcs) == 1
    script = funcs[0].script()
    assert "T.parallel" in script and "T.vectorized" in script and "_rf" in script, script[:2000]
    assert "T.where" not in script.split("T.vectorized", 1)[1] or op == "layer_norm"
    # the rule itself accepts the legalized func (not some later fallback)
    legal = relax.transform.LegalizeOps()(mod)
    prim = next(f for _, f in legal.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    assert RowReductionRule(fam.float_lanes).apply(prim, spec.tvm(), False) is not None
    exe = build_relax(mod, spec, fam, fast_math)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(x_np)).numpy()
    xd = x_np.astype(np.float64)
    if op == "softmax":
        ref = np.exp(xd - xd.max(-1, keepdims=True))
        ref /= ref.sum(-1, keepdims=True)
    else:
        ref = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-6) * g_np + b_np
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("rows,k,n", [(196, 48, 64), (28, 40, 96), (13, 24, 32), (1, 64, 10)])
def test_float_matmul_with_rows_is_register_blocked_and_matches_numpy(rows, k, n):
    """MatMul + bias (the patch embedding's shape): several rows -> a register block (local accumulators,
    rows unrolled, columns vectorized); a prime row count or a single row keeps the plain tiling. Values
    as numpy's in float64."""
    from tvm import relax

    spec = load_target("host")
    fam = family_params(spec.family)
    rng = np.random.default_rng(2)
    x_np = rng.standard_normal((1, rows, k)).astype(np.float32)
    w_np, b_np = rng.standard_normal((k, n)).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, rows, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.matmul(x, relax.const(w_np)), relax.const(b_np)))
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    mod = bb.get()
    low = relax_pipeline(spec, fam, False)(mod)
    funcs = [f for _, f in low.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    script = "\n".join(f.script() for f in funcs)
    assert "T.parallel" in script and "T.vectorized" in script
    blocked = '"local"' in script and "T.unroll" in script
    assert blocked == (rows in (196, 28)), script[:3000]
    vm = relax.VirtualMachine(build_relax(mod, spec, fam, False), tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(x_np)).numpy()
    ref = x_np.astype(np.float64) @ w_np.astype(np.float64) + b_np
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape,perm", [((1, 3, 198, 64), (0, 1, 3, 2)), ((1, 66, 3, 2, 32), (2, 0, 3, 1, 4)), ((2, 5, 3), (0, 2, 1))]
)
def test_transposes_are_row_vectorized_and_exact(shape, perm):
    """Injective funcs (K^T with 198 tokens per row, the qkv split, a short inner axis): parallel and
    vectorized, the values exactly numpy's transpose."""
    from tvm import relax

    spec = load_target("host")
    fam = family_params(spec.family)
    x_np = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.permute_dims(x, list(perm))))
        bb.emit_func_output(gv)
    mod = bb.get()
    low = relax_pipeline(spec, fam, False)(mod)
    script = "\n".join(f.script() for _, f in low.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    assert "T.parallel" in script and "T.vectorized" in script, script
    vm = relax.VirtualMachine(build_relax(mod, spec, fam, False), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x_np)).numpy(), x_np.transpose(perm))


@pytest.mark.parametrize("shape,perm", [((1, 3, 198, 64), (0, 1, 3, 2)), ((2, 40, 33), (0, 2, 1))])
def test_a_transpose_of_the_inner_axes_is_tiled_through_a_local_buffer(shape, perm):
    """When the output's innermost axis walks the input's rows (K^T), the block is tiled: each tile read
    along the input's contiguous axis into a local buffer (vector loads), written along the output's."""
    from tvm import relax

    spec = load_target("host")
    fam = family_params(spec.family)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.add(relax.op.permute_dims(x, list(perm)), relax.const(1.0))))
        bb.emit_func_output(gv)
    mod = bb.get()
    low = relax_pipeline(spec, fam, False)(mod)
    script = "\n".join(f.script() for _, f in low.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    assert 'scope="local"' in script and "T.parallel" in script and script.count("T.vectorized") >= 2, script
    x_np = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    vm = relax.VirtualMachine(build_relax(mod, spec, fam, False), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x_np)).numpy(), x_np.transpose(perm) + 1)
