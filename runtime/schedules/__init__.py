"""Schedules per target family: the binary kernels (popcount GEMMs) and every float op of a model.

Families (bvit_edge.targets TargetSpec.family): "x86-avx512", "x86-avx2", "aarch64-neon", "armv7-neon".
"""

from bvit_edge.runtime.schedules.binary import schedule_binary_linear, schedule_binary_matmul
from bvit_edge.runtime.schedules.family import FamilyParams, family_params
from bvit_edge.runtime.schedules.float_ops import float_schedule_pass

__all__ = [
    "FamilyParams",
    "family_params",
    "float_schedule_pass",
    "schedule_binary_linear",
    "schedule_binary_matmul",
]
