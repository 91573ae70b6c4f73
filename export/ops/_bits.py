"""Binary planes and their exact integer dot products on packed uint64 words (numpy references).

A *plane* is one binary operand along the reduction axis K, packed per :mod:`bvit_edge.packing`:

* ``sign``    bit 1 = -1, bit 0 = +1 (None for an unsigned plane, whose values are 0/1);
* ``support`` bit 1 = the element is non-zero (None = every element of the K true ones is non-zero).

So a signed plane is (sign, None), an unsigned plane is (None, u) and a masked-signed plane (values in
{-1, 0, +1}) is (w, m). For two planes a, b with joint support S = supp(a) AND supp(b):

    dot(a, b) = popcount(S) - 2 * popcount(S AND (sign_a XOR sign_b))

which is exactly the contract's formulas: signed·signed = K - 2·popcount(a XOR b);
unsigned·signed = popcount(u) - 2·popcount(u AND w); unsigned·masked-signed =
popcount(u AND m) - 2·popcount(u AND m AND w). Pad bits are 0 in every word, so pads add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bvit_edge import packing

#: Upper bound (bytes) on the [rows_a, rows_b, words] temporary of one chunk of a dot product.
_CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class Plane:
    """One packed binary operand: ``sign`` / ``support`` words [..., rows, Kw] (uint64) or None."""

    sign: np.ndarray | None
    support: np.ndarray | None


def pack_words(bits: np.ndarray) -> np.ndarray:
    """bool [..., K] -> uint64 words [..., Kp/64] (element k = bit k % 64 of word k // 64)."""
    return packing.as_words(packing.pack_bits(bits))


def plane_from_bits(sign: np.ndarray | None, support: np.ndarray | None) -> Plane:
    """Pack boolean sign / support arrays [..., rows, K] into a :class:`Plane`."""
    return Plane(
        None if sign is None else pack_words(sign),
        None if support is None else pack_words(support),
    )


def _popcount(words: np.ndarray) -> np.ndarray:
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)


def _dot_block(a: Plane, b: Plane, k: int, ia: slice) -> np.ndarray:
    """dot of rows ``ia`` of a [..., M, Kw] with all rows of b [..., N, Kw] -> int64 [..., m, N]."""

    def rows_a(w: np.ndarray | None) -> np.ndarray | None:
        return None if w is None else w[..., ia, None, :]

    def rows_b(w: np.ndarray | None) -> np.ndarray | None:
        return None if w is None else w[..., None, :, :]

    sa, ma, sb, mb = rows_a(a.sign), rows_a(a.support), rows_b(b.sign), rows_b(b.support)
    if sa is not None and sb is not None:
        flip = sa ^ sb
    else:
        flip = sa if sa is not None else sb
    if ma is None and mb is None:
        # Both full support: K - 2 popcount(a XOR b) (a full-support plane is always signed).
        assert flip is not None
        return np.int64(k) - 2 * _popcount(flip)
    support = ma if mb is None else (mb if ma is None else ma & mb)
    assert support is not None
    if flip is None:  # unsigned · unsigned: popcount(u AND v)
        return _popcount(support)
    # popcount(S) broadcasts from [..., m, 1] or [..., 1, N] to [..., m, N].
    return _popcount(support) - 2 * _popcount(support & flip)


def plane_dot(a: Plane, b: Plane, k: int) -> np.ndarray:
    """Exact integer dots of every row of ``a`` [..., M, Kw] with every row of ``b`` [..., N, Kw].

    Returns int64 [..., M, N]; leading axes broadcast. Chunked over M so the temporary stays small.
    """
    ref = next(w for w in (a.sign, a.support) if w is not None)
    refb = next(w for w in (b.sign, b.support) if w is not None)
    m, n, kw = ref.shape[-2], refb.shape[-2], ref.shape[-1]
    lead = int(np.prod(np.broadcast_shapes(ref.shape[:-2], refb.shape[:-2]), dtype=np.int64))
    step = max(1, _CHUNK_BYTES // max(1, lead * n * kw * 8))
    parts = [_dot_block(a, b, k, slice(i, min(m, i + step))) for i in range(0, m, step)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-2)
