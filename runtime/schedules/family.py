"""Schedule parameters of each target family.

``n_tile`` is the number of output columns a popcount GEMM keeps in vector registers (the vectorized
inner loop over N): 16 uint64 = two zmm registers with AVX-512 VPOPCNTDQ (vpopcntq); 8 uint64 = two ymm
with AVX2 (LLVM lowers a vector popcount to the vpshufb nibble lookup there, or scalar popcnt when
``vector_popcount`` is False); 8 words = four 128-bit q registers on NEON (cnt v.16b + uaddlp).
``float_lanes`` is the number of f32 lanes of a vector register (for the float-op rules) and
``float_registers`` the number of vector registers (32 zmm with AVX-512, 16 ymm with AVX2, 32 q on aarch64,
16 q on armv7): a float GEMM keeps its register tile of accumulators within them.
``int8_dot`` names the integer dot-product scheme of the 8-bit layers (bvit_edge.runtime.kernels.int8_dot:
vnni512, vnni256, avx2_madd, sdot, smull, vmull, generic); :func:`family_params` picks it from the CPU
features of the target when one is given (a Cortex-A76 with dotprod gets sdot, a Cortex-A72 smull).
``row_word_bits`` is the word size of the row-wise BinaryMatMul kernel (bvit_edge.runtime.kernels.
binary_matmul_rows), which packs both operands itself, so its words need not be the weights' words:
32-bit words with int32 accumulators measured faster on x86 (GSB DeiT-S's 12 A·V products 750-778 vs
912-950 us with AVX-512, 2711 vs 3288 us with AVX2; benches/bench_attention.py); aarch64 keeps 64 (not
measured on a board).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bvit_edge.errors import ConfigError


@dataclass(frozen=True)
class FamilyParams:
    """Tiling choices for one target family (see the module docstring)."""

    family: str
    word_bits: int
    n_tile: int
    float_lanes: int
    vector_popcount: bool = True
    float_registers: int = 16
    int8_dot: str = "generic"
    row_word_bits: int = 64


_FAMILIES = {
    "x86-avx512": FamilyParams("x86-avx512", 64, 16, 16, float_registers=32, int8_dot="vnni512", row_word_bits=32),
    "x86-avx2": FamilyParams("x86-avx2", 64, 8, 8, float_registers=16, int8_dot="avx2_madd", row_word_bits=32),
    "aarch64-neon": FamilyParams("aarch64-neon", 64, 8, 4, float_registers=32, int8_dot="smull", row_word_bits=64),
    "armv7-neon": FamilyParams("armv7-neon", 32, 8, 4, float_registers=16, int8_dot="vmull", row_word_bits=32),
}


def family_params(family: str, target: Any = None) -> FamilyParams:
    """Parameters of a target family; ConfigError names the known families for anything else.

    ``target`` (a TVM target or its dict): the int8 dot scheme is chosen from its CPU features instead of
    the family default (bvit_edge.runtime.kernels.int8_dot.dot_scheme_for)."""
    try:
        params = _FAMILIES[family]
    except KeyError:
        raise ConfigError(
            f"target family {family!r} has no bvit_edge schedules; known families: {sorted(_FAMILIES)}. "
            "Pick a target preset of one of them (bvit-edge targets list)."
        ) from None
    if target is not None:
        from bvit_edge.runtime.kernels.int8_dot import dot_scheme_for

        params = dataclasses.replace(params, int8_dot=dot_scheme_for(target, family).name)
    return params
