"""Machine words the kernels pack bits into: uint64 (x86-64, aarch64) or uint32 (armv7).

The ONNX contract packs 64 elements per little-endian uint64; on a little-endian target the same bytes
read as uint32 words hold elements 32*w .. 32*w+31 in word w, so the repacking for armv7 is only a view.
"""

from __future__ import annotations

from bvit_edge.errors import ConfigError

SUPPORTED_WORD_BITS = (64, 32)


def word_dtype(word_bits: int) -> str:
    """TIR dtype of a packed word: ``"uint64"`` for 64, ``"uint32"`` for 32."""
    if word_bits not in SUPPORTED_WORD_BITS:
        raise ConfigError(
            f"word size {word_bits} bits is not supported by the bvit_edge kernels; use 64 "
            "(x86-64, aarch64) or 32 (armv7)."
        )
    return f"uint{word_bits}"


def n_words(k: int, word_bits: int) -> int:
    """Number of words that hold K bits: ceil(K / word_bits)."""
    return -(-int(k) // int(word_bits))
