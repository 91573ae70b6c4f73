"""TIR kernels for the ``bvit_edge`` ops (bit-serial popcount products with integer accumulation).

Every kernel is a TVMScript prim func built for static shapes by a small factory function; the
schedules that make the block-based ones fast live in :mod:`bvit_edge.runtime.schedules`. The row-wise
BinaryMatMul kernel (:mod:`bvit_edge.runtime.kernels.binary_matmul_rows`, what `compile` uses for both
attention products) is written already scheduled: parallel rows and explicit vector loops.
"""

from bvit_edge.runtime.kernels.binary_linear import binary_linear_kernel
from bvit_edge.runtime.kernels.binary_matmul import binary_matmul_kernel
from bvit_edge.runtime.kernels.binary_matmul_rows import binary_matmul_rows_kernel
from bvit_edge.runtime.kernels.words import word_dtype

__all__ = ["binary_linear_kernel", "binary_matmul_kernel", "binary_matmul_rows_kernel", "word_dtype"]
