"""Rebuild an artifact's compactly stored weights in float32 when it is loaded (numpy only: board side).

params.npz may hold large weights in the dtype the export stored them in (bvit_edge.runtime.compact_params
keeps them so at compile time); the manifest's ``params.decode`` says, per parameter, how to rebuild the
float32 tensor ``main`` takes:

    dequantize  x = (float32(C) - float32(zero_point)) * scale   (scale per index of ``axis``, or scalar)
    cast        x = float32(C)                                    (float16 -> float32 is exact)
    then        x.reshape(shape)

``"packing": "int4"`` codes are stored two a byte (element i is the low nibble of byte i // 2 when i is even,
the high nibble when odd, two's complement) with their ``stored_shape``. The scale and zero point are further
params.npz arrays (:func:`extra_names`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DECODE_KINDS = ("dequantize", "cast")

__all__ = ["DECODE_KINDS", "decode_param", "decode_params", "extra_names", "pack_int4", "unpack_int4"]


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int8 codes in [-8, 7] -> uint8 [ceil(n / 2)], two a byte, low nibble first (the flattened order)."""
    flat = np.asarray(q, np.int8).reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return np.ascontiguousarray(flat[0::2] | (flat[1::2] << 4))


def unpack_int4(packed: np.ndarray, shape: list[int]) -> np.ndarray:
    """The int8 codes :func:`pack_int4` packed, in ``shape``."""
    b = np.asarray(packed, np.uint8).reshape(-1)
    nib = np.empty(b.size * 2, np.uint8)
    nib[0::2], nib[1::2] = b & 0x0F, b >> 4
    n = int(np.prod(shape)) if shape else 1
    return ((nib[:n].astype(np.int16) ^ 8) - 8).astype(np.int8).reshape(shape)


def decode_param(stored: np.ndarray, spec: dict[str, Any], extra: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 tensor ``spec`` (a manifest ``params.decode`` entry) rebuilds from ``stored``; ``extra``
    holds the arrays it names (scale, zero point). ValueError for a spec this runtime does not know."""
    kind = spec.get("kind")
    packing = spec.get("packing")
    if packing == "int4":
        stored = unpack_int4(stored, [int(d) for d in spec["stored_shape"]])
    elif packing is not None:
        raise ValueError(f"unknown parameter packing {packing!r} (this runtime knows int4)")
    if kind == "dequantize":
        scale = np.asarray(extra[spec["scale"]], np.float32)
        zero = np.asarray(extra[spec["zero_point"]]).astype(np.float32)
        axis = int(spec.get("axis", -1)) % max(stored.ndim, 1)
        view = [1] * stored.ndim
        if scale.size > 1 or zero.size > 1:
            view[axis] = -1
        x = (stored.astype(np.float32) - zero.reshape(view if zero.size > 1 else ())) * scale.reshape(
            view if scale.size > 1 else ()
        )
    elif kind == "cast":
        x = stored.astype(np.float32)
    else:
        raise ValueError(f"unknown parameter decoding {kind!r} (this runtime knows {', '.join(DECODE_KINDS)})")
    return np.ascontiguousarray(x.astype(np.float32).reshape([int(d) for d in spec["shape"]]))


def decode_params(
    names: list[str], arrays: list[np.ndarray], decode: dict[str, dict[str, Any]], extra: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """``arrays`` (params.npz, in ``names`` order) with the entries ``decode`` names rebuilt in float32."""
    if not decode:
        return arrays
    return [decode_param(a, decode[n], extra) if n in decode else a for n, a in zip(names, arrays, strict=True)]


def extra_names(decode: dict[str, dict[str, Any]]) -> list[str]:
    """The params.npz keys the decodings read besides the parameters themselves."""
    return sorted({spec[k] for spec in decode.values() for k in ("scale", "zero_point") if k in spec})
