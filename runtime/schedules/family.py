"""Schedule parameters of each target family.

``n_tile`` is the number of output columns a popcount GEMM keeps in vector registers (the vectorized
inner loop over N): 16 uint64 = two zmm registers with AVX-512 VPOPCNTDQ (vpopcntq); 8 uint64 = two ymm
with AVX2 (LLVM lowers a vector popcount to the vpshufb nibble lookup there, or scalar popcnt when
``vector_popcount`` is False); 8 words = four 128-bit q registers on NEON (cnt v.16b + uaddlp).
``float_lanes`` is the number of f32 lanes of a vector register (for the float-op rules).
"""

from __future__ import annotations

from dataclasses import dataclass

from bvit_edge.errors import ConfigError


@dataclass(frozen=True)
class FamilyParams:
    """Tiling choices for one target family (see the module docstring)."""

    family: str
    word_bits: int
    n_tile: int
    float_lanes: int
    vector_popcount: bool = True


_FAMILIES = {
    "x86-avx512": FamilyParams("x86-avx512", 64, 16, 16),
    "x86-avx2": FamilyParams("x86-avx2", 64, 8, 8),
    "aarch64-neon": FamilyParams("aarch64-neon", 64, 8, 4),
    "armv7-neon": FamilyParams("armv7-neon", 32, 8, 4),
}


def family_params(family: str) -> FamilyParams:
    """Parameters of a target family; ConfigError names the known families for anything else."""
    try:
        return _FAMILIES[family]
    except KeyError:
        raise ConfigError(
            f"target family {family!r} has no bvit_edge schedules; known families: {sorted(_FAMILIES)}. "
            "Pick a target preset of one of them (bvit-edge targets list)."
        ) from None
