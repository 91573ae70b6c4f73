"""Size records for the report, from weight counts by precision.

Bytes by precision: 1-bit weights take ceil(n_1 / 8) bytes (packed, before the per-row padding to
64-bit words that the op contract adds; pass exact packed bytes instead where known), 8-bit weights
n_8 bytes, 16-bit weights 2 * n_16 bytes (only recorded when there are any), 32-bit weights 4 * n_32 bytes.
"""

from __future__ import annotations

from typing import Any

from bvit_edge.errors import DataError

__all__ = ["size_entry"]


def size_entry(
    weights_1bit: int,
    weights_8bit: int,
    weights_32bit: int,
    artifact_bytes: int | None = None,
    weights_1bit_bytes: int | None = None,
    weights_16bit: int = 0,
) -> dict[str, Any]:
    """A model's ``size`` record: counts and bytes per precision, plus bytes on disk if given.

    The keyword names match ``bvit_edge.export.size.SizeReport`` so ``size_entry(**counts)`` works
    with its ``weights_1bit``/``weights_8bit``/``weights_32bit`` counts.
    """
    for name, v in (
        ("weights_1bit", weights_1bit),
        ("weights_8bit", weights_8bit),
        ("weights_16bit", weights_16bit),
        ("weights_32bit", weights_32bit),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(f"{name} must be a non-negative integer count, got {v!r}.")
    d: dict[str, Any] = {
        "weights_1bit_count": weights_1bit,
        "weights_8bit_count": weights_8bit,
        "weights_32bit_count": weights_32bit,
        "weights_1bit_bytes": weights_1bit_bytes if weights_1bit_bytes is not None else -(-weights_1bit // 8),
        "weights_8bit_bytes": weights_8bit,
        "weights_32bit_bytes": 4 * weights_32bit,
    }
    if weights_16bit:
        d["weights_16bit_count"], d["weights_16bit_bytes"] = weights_16bit, 2 * weights_16bit
    if artifact_bytes is not None:
        d["artifact_bytes"] = int(artifact_bytes)
    return d
