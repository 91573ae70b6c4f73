"""Bit packing of binary operands, as the ``bvit_edge`` op domain (version 1) defines it. numpy only.

A binary operand is packed along its reduction axis K, 64 elements per little-endian 64-bit word: element
k is bit k % 64 of word k // 64. It is stored as uint8 with K padded to a multiple of 64 (Kp); pad bits are 0.
With little-endian words this is the same as: element k is bit k % 8 of byte k // 8.

Signed operands: bit 1 means -1 (the float sign bit), bit 0 means +1, so sgn(0) = +1 at deployment.
Unsigned operands: bit 1 means 1.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


def padded_length(k: int, word_bits: int = WORD_BITS) -> int:
    """K rounded up to a multiple of ``word_bits`` (64 in the ONNX contract; 32 for armv7 kernels)."""
    return -(-int(k) // word_bits) * word_bits


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean array [..., K] along its last axis into uint8 [..., Kp/8] (Kp = K padded to 64)."""
    bits = np.asarray(bits, dtype=bool)
    k = bits.shape[-1]
    kp = padded_length(k)
    if kp != k:
        pad = np.zeros((*bits.shape[:-1], kp - k), dtype=bool)
        bits = np.concatenate([bits, pad], axis=-1)
    return np.packbits(bits, axis=-1, bitorder="little")


def unpack_bits(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: uint8 [..., Kp/8] -> bool [..., K]."""
    packed = np.asarray(packed, dtype=np.uint8)
    return np.unpackbits(packed, axis=-1, count=int(k), bitorder="little").astype(bool)


def sign_bits(x: np.ndarray) -> np.ndarray:
    """Bits of a signed operand: 1 where x < 0 (-1), 0 where x >= 0 (+1, so sgn(0) = +1)."""
    return np.asarray(x) < 0


def as_words(packed: np.ndarray, word_bits: int = WORD_BITS) -> np.ndarray:
    """View packed uint8 [..., Kp/8] as little-endian words [..., Kp/word_bits] (uint64 or uint32)."""
    dtype = {64: "<u8", 32: "<u4"}[word_bits]
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.shape[-1] % (word_bits // 8):
        raise ValueError(f"packed length {packed.shape[-1]} bytes is not a multiple of {word_bits // 8}")
    return packed.view(dtype)


def pack_signed(x: np.ndarray) -> np.ndarray:
    """Pack the signs of a float array [..., K] (bit 1 = negative)."""
    return pack_bits(sign_bits(x))
