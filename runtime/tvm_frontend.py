"""The one place where bvit-edge registers its ONNX converters with TVM's Relax ONNX importer.

TVM 0.27's importer (``tvm.relax.frontend.onnx``) looks converters up by ``op_type`` alone in the dict
its module function ``_get_convert_map()`` returns; it ignores node domains and has no registration
argument. :func:`bvit_converters` therefore wraps that function, for the duration of one import, so the
dict also maps ``BinaryLinear`` and ``BinaryMatMul`` to our converters. Because the importer never sees
domains, :func:`check_domains` checks them before the import: every node must be in the default ONNX
domain or in ``bvit_edge`` version 1 (a custom-domain ``Relu`` would otherwise silently become
relax.nn.relu). :func:`convert_map_hook` fails loudly (ToolchainError) if a TVM upgrade moves the hook;
a test holds it.

Each converter builds the op's TIR kernel for the static shapes at hand, schedules it for the target
family and emits ``relax.call_tir``. Packed weights (u8[N, Kp/8] initializers) are repacked at compile
time into the target's words as [KW, N] (uint64, or uint32 on armv7).

One standard op is also converted here, for speed only: a patch-embedding Conv (kernel == stride, no
padding) becomes im2col + MatMul (:func:`_patchify_conv`, the same sums); every other Conv goes to the
stock converter.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from bvit_edge.contract import DEFAULT_GSB_RATIOS, DOMAIN, DOMAIN_VERSION, ContractError, check_domain_version
from bvit_edge.contract import OP_TYPES as OPS
from bvit_edge.contract import STANDARD_DOMAINS as _STANDARD_DOMAINS
from bvit_edge.errors import ConfigError, ToolchainError, UsageError
from bvit_edge.packing import as_words, padded_length

_FAMILY: contextvars.ContextVar[Any] = contextvars.ContextVar("bvit_edge_family_params")


def convert_map_hook() -> ModuleType:
    """The TVM module whose ``_get_convert_map`` we extend; ToolchainError if TVM moved it."""
    try:
        from tvm.relax.frontend.onnx import onnx_frontend
    except ImportError as exc:
        raise ToolchainError(
            f"TVM's Relax ONNX importer (tvm.relax.frontend.onnx.onnx_frontend) cannot be imported: {exc}. "
            "bvit-edge needs apache-tvm 0.27 (pip install 'apache-tvm==0.27.*')."
        ) from None
    fn = getattr(onnx_frontend, "_get_convert_map", None)
    base = getattr(onnx_frontend, "OnnxOpConverter", None)
    if not callable(fn) or base is None or not isinstance(fn(), dict):
        raise ToolchainError(
            "This TVM version moved the Relax ONNX importer's converter table "
            "(tvm.relax.frontend.onnx.onnx_frontend._get_convert_map / OnnxOpConverter): bvit-edge cannot "
            "register its BinaryLinear/BinaryMatMul converters. Use apache-tvm 0.27 or update "
            "bvit_edge/runtime/tvm_frontend.py."
        )
    return onnx_frontend


def check_domains(model: Any) -> None:
    """Refuse a model whose ops the importer would mis-read: unknown domains, or bvit_edge != v1.

    Raises ContractError (a ConfigError, exit code 2) naming the op and the fix.
    """
    versions = {imp.domain: imp.version for imp in model.opset_import}
    if DOMAIN in versions:
        check_domain_version(versions[DOMAIN])
    for node in model.graph.node:
        dom = node.domain
        if dom == DOMAIN:
            if node.op_type not in OPS:
                raise ContractError(
                    f"Node {node.name!r}: op {DOMAIN}::{node.op_type} is not part of domain {DOMAIN!r} "
                    f"version {DOMAIN_VERSION} (ops: {', '.join(OPS)}). Re-export the model."
                )
        elif dom not in _STANDARD_DOMAINS:
            raise ContractError(
                f"Node {node.name!r}: op {dom}::{node.op_type} is in domain {dom!r}, which the TVM lowering "
                f"does not know (only the standard ONNX domain and {DOMAIN!r} v{DOMAIN_VERSION}). Export with "
                "standard ops or the bvit_edge domain."
            )
        elif node.op_type in OPS:
            raise ContractError(
                f"Node {node.name!r}: {node.op_type} must be in domain {DOMAIN!r}, not the default domain."
            )


def _attr_str(attr: dict, key: str, default: str | None = None) -> str:
    val = attr.get(key, default)
    if val is None:
        raise ContractError(f"bvit_edge op is missing its attribute {key!r}; re-export the model.")
    return val.decode() if isinstance(val, bytes) else str(val)


def _static_shape(expr: Any, what: str) -> list[int]:
    from tvm import relax

    sinfo = expr.ty
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        raise ConfigError(f"{what}: the TVM lowering needs a tensor of known rank.")
    dims = []
    for d in sinfo.shape.values:
        if not hasattr(d, "value"):
            raise ConfigError(f"{what}: dimension {d} is symbolic; compile with a static input shape (batch 1).")
        dims.append(int(d.value))
    return dims


def _constant(expr: Any, what: str) -> np.ndarray:
    from tvm.ir.expr import Constant

    if not isinstance(expr, Constant):
        raise ConfigError(f"{what} must be an ONNX initializer (a constant) for the TVM lowering.")
    return expr.value.numpy()


def _as_vector(bb: Any, expr: Any, length: int, what: str) -> Any:
    """Reshape a scalar/vector input to f32[length] (ConfigError when its size does not fit)."""
    from tvm import relax

    size = int(np.prod(_static_shape(expr, what))) if _static_shape(expr, what) else 1
    if size != length:
        raise ConfigError(f"{what} has {size} elements, expected {length}.")
    return bb.normalize(relax.op.reshape(expr, (length,)))


def _family() -> Any:
    params = _FAMILY.get(None)
    if params is None:
        raise ToolchainError("bvit_edge converters used outside bvit_converters(); use import_onnx().")
    return params


def _add_kernel(bb: Any, func: Any, name: str) -> Any:
    # op_pattern 8 (kOpaque): FuseOps must not merge the scheduled kernel with its neighbours.
    return bb.add_func(func.with_attr("op_pattern", 8), name)


def _binary_linear(bb: Any, inputs: list, attr: dict, _params: Any) -> Any:
    from tvm import relax

    from bvit_edge.runtime.kernels import binary_linear_kernel
    from bvit_edge.runtime.schedules import schedule_binary_linear

    fam = _family()
    mode = _attr_str(attr, "mode")
    x, shift, alpha, w_bits, w_scale = inputs[:5]
    bias = inputs[5] if len(inputs) > 5 else None
    xs = _static_shape(x, "BinaryLinear input X")
    k = xs[-1]
    k_attr = int(attr.get("in_features", k))
    if k_attr != k:
        raise ConfigError(f"BinaryLinear: in_features={k_attr} but X has {k} features; re-export the model.")
    wb = _constant(w_bits, "BinaryLinear W_bits")
    if wb.dtype != np.uint8 or wb.ndim != 2 or wb.shape[1] * 8 != padded_length(k):
        raise ConfigError(
            f"BinaryLinear W_bits must be uint8[N, {padded_length(k) // 8}] for K={k}; got {wb.dtype}{list(wb.shape)}."
        )
    n = wb.shape[0]
    kw = -(-k // fam.word_bits)
    words = np.ascontiguousarray(as_words(wb, fam.word_bits)[:, :kw].T)  # [KW, N]
    m = int(np.prod(xs[:-1])) if len(xs) > 1 else 1
    from bvit_edge.runtime.tuning import KernelSpec, kernel_params

    knobs = kernel_params(fam, KernelSpec("binary_linear", (m, k, n), (mode,), fam.word_bits))
    func = schedule_binary_linear(binary_linear_kernel(m, k, n, mode, fam.word_bits), knobs)
    # what the residual fusion (bvit_edge.runtime.graph_passes) needs to rebuild the kernel with a residual
    func = func.with_attr(LINEAR_KERNEL_ATTR, linear_kernel_spec(m, k, n, mode, knobs))
    gv = _add_kernel(bb, func, f"bvit_binary_linear_{mode}")
    bias_v = relax.const(np.zeros(n, np.float32)) if bias is None else _as_vector(bb, bias, n, "BinaryLinear bias")
    args = [
        bb.normalize(relax.op.reshape(x, (m, k))),
        _as_vector(bb, shift, k, "BinaryLinear shift"),
        _as_vector(bb, alpha, 1, "BinaryLinear alpha"),
        relax.const(words),
        _as_vector(bb, w_scale, n, "BinaryLinear w_scale"),
        bias_v,
    ]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((m, n), "float32")))
    return relax.op.reshape(y, (*tuple(xs[:-1]), n))


LINEAR_KERNEL_ATTR = "bvit_edge.binary_linear"
"""PrimFunc attribute of a BinaryLinear kernel: its shape, mode and schedule knobs as JSON."""


def linear_kernel_spec(m: int, k: int, n: int, mode: str, knobs: Any) -> str:
    """The JSON of :data:`LINEAR_KERNEL_ATTR` (knobs: the FamilyParams the kernel was scheduled with)."""
    import dataclasses
    import json

    return json.dumps({"m": m, "k": k, "n": n, "mode": mode, "knobs": dataclasses.asdict(knobs)}, sort_keys=True)


def linear_kernel_with_residual(spec_json: str) -> Any:
    """The scheduled BinaryLinear kernel of a :data:`LINEAR_KERNEL_ATTR` spec with a residual input (same
    knobs): y = (scale * dot + bias) + res."""
    import json

    from bvit_edge.runtime.kernels import binary_linear_kernel
    from bvit_edge.runtime.schedules import schedule_binary_linear
    from bvit_edge.runtime.schedules.family import FamilyParams

    spec = json.loads(spec_json)
    knobs = FamilyParams(**spec["knobs"])
    func = binary_linear_kernel(spec["m"], spec["k"], spec["n"], spec["mode"], knobs.word_bits, residual=True)
    return schedule_binary_linear(func, knobs).with_attr("op_pattern", 8)


def _to4d(shape: list[int], what: str) -> tuple[int, ...]:
    if len(shape) == 4:
        return tuple(shape)
    if len(shape) == 3:
        return (shape[0], 1, shape[1], shape[2])
    if len(shape) == 2:
        return (1, 1, shape[0], shape[1])
    raise ConfigError(f"{what}: rank {len(shape)} is not supported by the TVM lowering (2, 3 or 4).")


def _is_zero_const(expr: Any) -> bool:
    from tvm.ir.expr import Constant

    return expr is None or (isinstance(expr, Constant) and not np.any(expr.value.numpy()))


def _binary_matmul(bb: Any, inputs: list, attr: dict, _params: Any) -> Any:
    from tvm import relax

    from bvit_edge.runtime.kernels import binary_matmul_kernel
    from bvit_edge.runtime.kernels.binary_matmul import n_planes
    from bvit_edge.runtime.kernels.binary_matmul_rows import ROW_A_MODES, binary_matmul_rows_kernel
    from bvit_edge.runtime.schedules import schedule_binary_matmul

    fam = _family()
    a_mode = _attr_str(attr, "a_mode")
    b_mode = _attr_str(attr, "b_mode")
    ratios = [float(r) for r in attr.get("gsb_ratios", DEFAULT_GSB_RATIOS)]
    a, b, a_shift, a_alpha, b_shift, b_alpha = (list(inputs) + [None] * 6)[:6]
    ash, bsh = _static_shape(a, "BinaryMatMul A"), _static_shape(b, "BinaryMatMul B")
    a4, b4 = _to4d(ash, "BinaryMatMul A"), _to4d(bsh, "BinaryMatMul B")
    if a4[:2] != b4[:2] or a4[3] != b4[2]:
        raise ConfigError(f"BinaryMatMul: shapes {ash} and {bsh} do not multiply (no broadcasting).")
    if not _is_zero_const(a_shift):
        a = bb.normalize(relax.op.add(a, a_shift))
    if not _is_zero_const(b_shift):
        b = bb.normalize(relax.op.add(b, b_shift))
    batch, heads, m, k = a4
    n = b4[3]
    if a_mode in ROW_A_MODES:
        # both GSB products (Q·Kᵀ signed, A·V gsb_unsigned): rows packed in registers, all-zero words and rows
        # of unsigned planes skipped; written already scheduled (no knobs, so nothing for the tuner)
        func = binary_matmul_rows_kernel(
            batch, heads, m, k, n, a_mode, b_mode, ratios, fam.row_word_bits, fam.float_lanes
        )
    else:
        from bvit_edge.runtime.tuning import KernelSpec, kernel_params

        knobs = kernel_params(
            fam, KernelSpec("binary_matmul", (batch, heads, m, k, n), (a_mode, b_mode), fam.word_bits, tuple(ratios))
        )
        func = schedule_binary_matmul(
            binary_matmul_kernel(batch, heads, m, k, n, a_mode, b_mode, ratios, fam.word_bits), knobs
        )
    gv = _add_kernel(bb, func, f"bvit_binary_matmul_{a_mode}_{b_mode}")
    args = [
        bb.normalize(relax.op.reshape(a, a4)),
        bb.normalize(relax.op.reshape(b, b4)),
        _as_vector(bb, a_alpha, n_planes(a_mode), f"BinaryMatMul a_alpha ({a_mode})"),
        _as_vector(bb, b_alpha, n_planes(b_mode), f"BinaryMatMul b_alpha ({b_mode})"),
    ]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((batch, heads, m, n), "float32")))
    return relax.op.reshape(y, (*tuple(ash[:-1]), n))


def _patchify_conv(bb: Any, inputs: list, attr: dict) -> Any | None:
    """A patch-embedding Conv (kernel == stride, no padding, dilation 1, one group, NCHW) as im2col + MatMul.

    Y[0, o, i, j] = sum_{c, u, v} X[0, c, i*P + u, j*P + v] * W[o, c, u, v] + b[o] is exactly the matmul of
    the patches [Hp*Wp, C*P*P] with W reshaped [C*P*P, O] (the weight reshaping folds at compile time).
    The float matmul then gets the tiled, vectorized schedule; a direct conv loop nest vectorizes only
    along the 14 output columns with stride-P reads (measured ~40x slower). Returns None when the node is
    not of that form (the stock converter handles it).
    """
    from tvm import relax

    try:
        xs = _static_shape(inputs[0], "Conv input")
        ws = _static_shape(inputs[1], "Conv weight")
    except ConfigError:
        return None
    if len(xs) != 4 or len(ws) != 4 or xs[0] != 1:
        return None
    kernel = [int(v) for v in attr.get("kernel_shape", ws[2:])]
    strides = [int(v) for v in attr.get("strides", [1, 1])]
    pads = [int(v) for v in attr.get("pads", [0, 0, 0, 0])]
    dil = [int(v) for v in attr.get("dilations", [1, 1])]
    auto_pad = attr.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    ph, pw = kernel
    if (
        kernel != strides
        or any(pads)
        or dil != [1, 1]
        or int(attr.get("group", 1)) != 1
        or auto_pad not in ("NOTSET", "VALID")
        or xs[2] % ph
        or xs[3] % pw
        or ws[1] != xs[1]
    ):
        return None
    c, o = xs[1], ws[0]
    hp, wp = xs[2] // ph, xs[3] // pw
    k = c * ph * pw
    if ph == pw:  # 8-bit weights: the W8A32 kernel reads the image itself (bvit_edge.runtime.int8_lowering)
        from bvit_edge.runtime import int8_lowering
        from bvit_edge.runtime.kernels.int8_weight_linear import PatchGeometry

        out = int8_lowering.patch_conv(bb, inputs, PatchGeometry(c, xs[2], xs[3], ph), _family())
        if out is not None:
            return out
    x = relax.op.reshape(inputs[0], (c, hp, ph, wp, pw))
    x = relax.op.permute_dims(x, [1, 3, 0, 2, 4])
    x = relax.op.reshape(x, (hp * wp, k))
    w = relax.op.permute_dims(relax.op.reshape(inputs[1], (o, k)), [1, 0])
    y = relax.op.matmul(x, w)
    if len(inputs) > 2 and inputs[2] is not None:
        y = relax.op.add(y, inputs[2])
    y = relax.op.reshape(y, (1, hp, wp, o))
    return relax.op.permute_dims(y, [0, 3, 1, 2])


def _converter_classes(base: type, stock: dict) -> dict[str, type]:
    def make(name: str, fn: Any) -> type:
        return type(name, (base,), {"_impl_v1": classmethod(lambda cls, bb, i, at, p: fn(bb, i, at, p))})

    table = {"BinaryLinear": make("BinaryLinear", _binary_linear), "BinaryMatMul": make("BinaryMatMul", _binary_matmul)}
    conv = stock.get("Conv")
    if conv is not None:

        def conv_impl(cls: type, bb: Any, inputs: list, attr: dict, params: Any) -> Any:
            out = _patchify_conv(bb, inputs, attr)
            return out if out is not None else conv.get_converter(11)(bb, inputs, attr, params)

        table["Conv"] = type("PatchifyConv", (base,), {"_impl_v11": classmethod(conv_impl)})
    from bvit_edge.runtime.compact_params import cast_converter

    cast = cast_converter(stock.get("Cast"), base)  # float16-stored weights stay float16 in params.npz
    if cast is not None:
        table["Cast"] = cast
    table.update(_int8_converters(base, stock))
    return table


def _int8_converters(base: type, stock: dict) -> dict[str, type]:
    """Gemm and MatMul with 8-bit weights become the integer kernels (bvit_edge.runtime.int8_lowering);
    any other Gemm/MatMul goes to the stock converter of the node's opset."""
    from bvit_edge.runtime import int8_lowering

    table = {}
    for op, lower in (
        ("Gemm", lambda bb, i, at: int8_lowering.gemm(bb, i, at, _family())),
        ("MatMul", lambda bb, i, at: int8_lowering.matmul(bb, i, _family())),
    ):
        conv = stock.get(op)
        if conv is None:
            continue

        def make(conv: Any, lower: Any) -> Any:
            def get_converter(cls: type, opset: int) -> Any:
                fallback = conv.get_converter(opset)

                def impl(bb: Any, inputs: list, attr: dict, params: Any) -> Any:
                    out = lower(bb, inputs, attr)
                    return out if out is not None else fallback(bb, inputs, attr, params)

                return impl

            return classmethod(get_converter)

        table[op] = type(f"Int8{op}", (base,), {"get_converter": make(conv, lower)})
    return table


@contextlib.contextmanager
def bvit_converters(family_params: Any) -> Iterator[None]:
    """Within the block, TVM's ONNX importer converts bvit_edge ops for ``family_params``' target."""
    frontend = convert_map_hook()
    original = frontend._get_convert_map
    ours = _converter_classes(frontend.OnnxOpConverter, original())

    def extended() -> dict:
        table = dict(original())
        table.update(ours)
        return table

    token = _FAMILY.set(family_params)
    setattr(frontend, "_get_convert_map", extended)  # noqa: B010 - a module attribute mypy cannot see
    try:
        yield
    finally:
        setattr(frontend, "_get_convert_map", original)  # noqa: B010 - restores TVM's function
        _FAMILY.reset(token)


def import_onnx(model: Any, shape_dict: dict[str, list[int]], family_params: Any) -> Any:
    """ONNX ModelProto -> Relax IRModule with bvit_edge ops lowered to scheduled TIR kernels."""
    from tvm.relax.frontend.onnx import from_onnx

    check_domains(model)
    from bvit_edge.runtime.compact_params import widen_int4

    model = widen_int4(model)  # TVM cannot read 4-bit initializers; int8 holds the same values
    with bvit_converters(family_params):
        try:
            return from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)
        except (ConfigError, UsageError, ToolchainError):
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ToolchainError(
                f"TVM could not import the ONNX model: {type(exc).__name__}: {first}. If an op is not "
                "supported, export with standard ops or report it."
            ) from exc
