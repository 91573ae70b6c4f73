"""Integer dot-product instructions for the 8-bit layers, one scheme per CPU feature set.

Every scheme computes the same exact integer update, on a tile of ``lanes`` outputs and ``group``
consecutive reduction steps (the "micro-kernel" the 8-bit GEMM is tensorized with):

    C[i] += sum_{c < group} int32(A[c]) * int32(B[i, c])        (i < lanes)

with A the ``group`` activation bytes of one row, B the weight bytes laid out [lanes, group] (so one vector
load reads the whole tile) and C int32 accumulators. No intermediate can overflow, so every scheme gives
numpy's int32 result bit for bit:

================  =======  =====  ======================================================================
scheme            lanes    group  instructions (activations a in [-128, 127], weights w in [-128, 127])
================  =======  =====  ======================================================================
``vnni512``        16        4    ``vpdpbusd zmm`` (AVX-512 VNNI): u8 x s8 products summed in fours into
                                  i32. The activation is stored offset, a + 128 in [0, 255] (u8); the
                                  kernel subtracts 128 * sum_k w[n, k] (a compile-time constant) after.
``vnni256``         8        4    ``vpdpbusd ymm`` (AVX-VNNI, VEX-encoded), same offset as vnni512.
``avx2_madd``       8        2    ``vpmovsxbw`` + ``vpmaddwd ymm``: both operands sign-extended to i16,
                                  pairs of i16 products summed into i32. (``vpmaddubsw`` is not used: it
                                  saturates its i16 pair sums, (a + 128) * w + ... reaches +-65280.)
``sdot``            4        4    ``sdot v.4s, v.16b, v.4b[]`` (ARMv8.2 dot product, Cortex-A76 / Pi 5):
                                  s8 x s8 summed in fours into i32.
``smull``           8        2    ``smull`` / ``smull2`` (s8 x s8 -> i16, exact: |a w| <= 16384) then
                                  ``sadalp`` (add pairs of i16 into i32 accumulators): ARMv8.0 NEON,
                                  Cortex-A72 / Pi 4.
``vmull``           8        2    ``vmull.s8`` + ``vpadal.s16``: the same on 32-bit ARM NEON (Pi 3 armhf).
``generic``         8        1    plain multiply-add on int32; LLVM vectorizes what it can (fallback).
================  =======  =====  ======================================================================

:func:`dot_scheme_for` picks the scheme from the CPU features LLVM reports for the target's mcpu/mattr.
The intrinsics are registered with TVM (``s_tir.TensorIntrin``) under ``bvit_int8_dot_<scheme>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bvit_edge.errors import ConfigError


@dataclass(frozen=True)
class DotScheme:
    """One integer dot-product micro-kernel (see the module docstring)."""

    name: str
    lanes: int  # outputs per micro-kernel call (int32 accumulators of one vector, or two on smull/vmull)
    group: int  # consecutive k steps summed into each output per call
    act_offset: int  # added to the int8 activation before the dot (128: stored as uint8), 0 otherwise
    instructions: tuple[str, ...]  # mnemonics the assembly must hold (the tests look for them)

    @property
    def act_dtype(self) -> str:
        """The activation operand's dtype inside the kernel: uint8 (offset by 128) or int8."""
        return "uint8" if self.act_offset else "int8"

    @property
    def intrin_name(self) -> str:
        return f"bvit_int8_dot_{self.name}"


SCHEMES: dict[str, DotScheme] = {
    "vnni512": DotScheme("vnni512", 16, 4, 128, ("vpdpbusd",)),
    "vnni256": DotScheme("vnni256", 8, 4, 128, ("vpdpbusd",)),
    "avx2_madd": DotScheme("avx2_madd", 8, 2, 0, ("vpmaddwd", "vpmovsxbw")),
    "sdot": DotScheme("sdot", 4, 4, 0, ("sdot",)),
    "smull": DotScheme("smull", 8, 2, 0, ("smull", "sadalp")),
    "vmull": DotScheme("vmull", 8, 2, 0, ("vmull.s8", "vpadal.s16")),
    "generic": DotScheme("generic", 8, 1, 0, ()),
}

#: The scheme a target family gets when no target (CPU features) is at hand.
FAMILY_DEFAULT = {"x86-avx512": "vnni512", "x86-avx2": "avx2_madd", "aarch64-neon": "smull", "armv7-neon": "vmull"}


def dot_scheme(name: str) -> DotScheme:
    """The scheme called ``name``; ConfigError listing the known ones otherwise."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ConfigError(f"int8 dot scheme {name!r} is unknown; known: {sorted(SCHEMES)}.") from None


def dot_scheme_for(target: Any, family: str | None = None) -> DotScheme:
    """The fastest exact scheme the target's CPU has (LLVM's feature list for its mcpu + mattr).

    x86-64: AVX-512 VNNI -> vnni512, AVX-VNNI -> vnni256, AVX2 -> avx2_madd; aarch64: dotprod -> sdot, else
    smull; 32-bit ARM with NEON: vmull; anything else: generic.
    """
    import tvm
    from tvm.target import codegen

    tgt = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    triple = str(tgt.attrs.get("mtriple", "")) if tgt.kind.name == "llvm" else ""
    if not triple:
        return dot_scheme(FAMILY_DEFAULT.get(family or "", "generic"))

    def has(feature: str) -> bool:
        try:
            with tgt:
                return bool(codegen.llvm_cpu_has_features(feature, tgt))
        except Exception:  # noqa: BLE001 - an LLVM without this feature name: not available
            return False

    if triple.startswith(("x86_64", "i686", "i386")):
        for feature, name in (("avx512vnni", "vnni512"), ("avxvnni", "vnni256"), ("avx2", "avx2_madd")):
            if has(feature):
                return SCHEMES[name]
        return SCHEMES["generic"]
    if triple.startswith(("aarch64", "arm64")):
        return SCHEMES["sdot" if has("dotprod") else "smull"]
    if triple.startswith(("armv7", "arm")) and has("neon"):
        return SCHEMES["vmull"]
    return SCHEMES["generic"]


# ---------------------------------------------------------------------------------------------------------
# weight layout (compile time, numpy)
# ---------------------------------------------------------------------------------------------------------


def padded(n: int, multiple: int) -> int:
    """n rounded up to a multiple of ``multiple``."""
    return -(-int(n) // int(multiple)) * int(multiple)


def pack_weights(w: np.ndarray, scheme: DotScheme, n_block: int = 1) -> np.ndarray:
    """int8 W[N, K] -> int8 [NT, KG, lanes, group]: tile t, group g holds W[t*lanes + i, g*group + c] at
    [t, g, i, c]. N is zero-padded to a multiple of ``lanes * n_block`` and K to a multiple of ``group``
    (zero weights add nothing, whatever the activation pad holds)."""
    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != 2:
        raise ConfigError(f"8-bit weights must be int8[N, K]; got {w.dtype}{list(w.shape)}.")
    n, k = w.shape
    np_, kp = padded(n, scheme.lanes * n_block), padded(k, scheme.group)
    full = np.zeros((np_, kp), np.int8)
    full[:n, :k] = w
    tiles = full.reshape(np_ // scheme.lanes, scheme.lanes, kp // scheme.group, scheme.group)
    return np.ascontiguousarray(tiles.transpose(0, 2, 1, 3))


def offset_correction(w: np.ndarray, scheme: DotScheme, n_padded: int) -> np.ndarray:
    """int32[n_padded]: act_offset * sum_k W[n, k] (0 past N), subtracted from the offset accumulators."""
    w = np.asarray(w, np.int64)
    out = np.zeros(n_padded, np.int64)
    out[: w.shape[0]] = scheme.act_offset * w.sum(axis=1)
    return out.astype(np.int32)


# ---------------------------------------------------------------------------------------------------------
# tensor intrinsics (TIR): a description (the update above, for tensorize to match) and an implementation
# ---------------------------------------------------------------------------------------------------------


def _desc(scheme: DotScheme) -> Any:
    from tvm.script import tirx as T

    lanes, group, adt = scheme.lanes, scheme.group, scheme.act_dtype

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (group,), adt, offset_factor=1)
        B = T.match_buffer(b, (lanes, group), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    return desc


def _impl_vnni(lanes: int) -> Any:
    from tvm.script import tirx as T

    # LLVM 22 declares the byte operands as <4*lanes x i8> (older LLVMs took <lanes x i32>)
    intrin = "llvm.x86.avx512.vpdpbusd.512" if lanes == 16 else "llvm.x86.avx512.vpdpbusd.256"
    acc_t, w_t = f"int32x{lanes}", f"int8x{lanes * 4}"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a4 = T.reinterpret("int32", A.vload([0], "uint8x4"))
            C[T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                acc_t,
                intrin,
                C.vload([0], acc_t),
                T.reinterpret(w_t, T.broadcast(a4, lanes)),
                B.vload([0, 0], w_t),
            )

    return impl


def _impl_avx2_madd() -> Any:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2,), "int8", offset_factor=1)
        B = T.match_buffer(b, (8, 2), "int8", offset_factor=1)
        C = T.match_buffer(c, (8,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            pair = T.reinterpret("int32", T.Cast("int16x2", A.vload([0], "int8x2")))
            C[T.ramp(0, 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
                "int32x8",
                "llvm.x86.avx2.pmadd.wd",
                T.Cast("int16x16", B.vload([0, 0], "int8x16")),
                T.reinterpret("int16x16", T.broadcast(pair, 8)),
            )

    return impl


def _impl_sdot() -> Any:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            a4 = T.reinterpret("int32", A.vload([0], "int8x4"))
            C[T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                "int32x4",
                "llvm.aarch64.neon.sdot.v4i32.v16i8",
                C.vload([0], "int32x4"),
                T.reinterpret("int8x16", T.broadcast(a4, 4)),
                B.vload([0, 0], "int8x16"),
            )

    return impl


def _impl_widening_pairs(mull: str, pairwise: str, accumulate_in_intrinsic: bool) -> Any:
    """smull/sadalp (aarch64) or vmull/vpadal (armv7): 8 outputs x 2 k per call, two int32x4 halves."""
    from tvm.script import tirx as T

    if accumulate_in_intrinsic:  # armv7: vpadal(acc, x) is an intrinsic of its own

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (2,), "int8", offset_factor=1)
            B = T.match_buffer(b, (8, 2), "int8", offset_factor=1)
            C = T.match_buffer(c, (8,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:8], A[0:2], B[0:8, 0:2])
                T.writes(C[0:8])
                pair = T.reinterpret("int16", A.vload([0], "int8x2"))
                a8 = T.reinterpret("int8x8", T.broadcast(pair, 4))
                w = B.vload([0, 0], "int8x16")
                C[T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                    "int32x4",
                    pairwise,
                    C.vload([0], "int32x4"),
                    T.call_llvm_pure_intrin("int16x8", mull, a8, T.vectorlow("int8x8", w)),
                )
                C[T.ramp(4, 1, 4)] = T.call_llvm_pure_intrin(
                    "int32x4",
                    pairwise,
                    C.vload([4], "int32x4"),
                    T.call_llvm_pure_intrin("int16x8", mull, a8, T.vectorhigh("int8x8", w)),
                )

        return impl

    @T.prim_func(s_tir=True)
    def impl2(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2,), "int8", offset_factor=1)
        B = T.match_buffer(b, (8, 2), "int8", offset_factor=1)
        C = T.match_buffer(c, (8,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            pair = T.reinterpret("int16", A.vload([0], "int8x2"))
            a8 = T.reinterpret("int8x8", T.broadcast(pair, 4))
            w = B.vload([0, 0], "int8x16")
            C[T.ramp(0, 1, 4)] = C.vload([0], "int32x4") + T.call_llvm_pure_intrin(
                "int32x4", pairwise, T.call_llvm_pure_intrin("int16x8", mull, a8, T.vectorlow("int8x8", w))
            )
            C[T.ramp(4, 1, 4)] = C.vload([4], "int32x4") + T.call_llvm_pure_intrin(
                "int32x4", pairwise, T.call_llvm_pure_intrin("int16x8", mull, a8, T.vectorhigh("int8x8", w))
            )

    return impl2


def _impl(scheme: DotScheme) -> Any:
    if scheme.name == "vnni512":
        return _impl_vnni(16)
    if scheme.name == "vnni256":
        return _impl_vnni(8)
    if scheme.name == "avx2_madd":
        return _impl_avx2_madd()
    if scheme.name == "sdot":
        return _impl_sdot()
    if scheme.name == "smull":
        return _impl_widening_pairs("llvm.aarch64.neon.smull.v8i16", "llvm.aarch64.neon.saddlp.v4i32.v8i16", False)
    if scheme.name == "vmull":
        return _impl_widening_pairs("llvm.arm.neon.vmulls.v8i16", "llvm.arm.neon.vpadals.v4i32.v8i16", True)
    raise ConfigError(f"int8 dot scheme {scheme.name!r} has no tensor intrinsic (it is scheduled without one).")


def register_intrinsic(scheme: DotScheme) -> str | None:
    """Register ``scheme``'s tensor intrinsic with TVM once; its name, or None for ``generic``."""
    if scheme.name == "generic":
        return None
    from tvm.s_tir import TensorIntrin

    if TensorIntrin.get(scheme.intrin_name, allow_missing=True) is None:
        TensorIntrin.register(scheme.intrin_name, _desc(scheme), _impl(scheme))
    return scheme.intrin_name


__all__ = [
    "FAMILY_DEFAULT",
    "SCHEMES",
    "DotScheme",
    "dot_scheme",
    "dot_scheme_for",
    "offset_correction",
    "pack_weights",
    "padded",
    "register_intrinsic",
]
