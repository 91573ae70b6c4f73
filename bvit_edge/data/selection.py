"""Deterministic choices of samples: the stratified digits split and the ``per_class`` few-sample subsets.

Both draw from numpy ``Generator`` s seeded with ``[seed, class_index]``, so the choice inside one class does not
depend on the other classes, and a class's ``per_class = n`` subset is the first ``n`` of one fixed permutation
(a smaller subset is contained in a larger one with the same seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bvit_edge.errors import DataError, UsageError


def _class_perm(idx: np.ndarray, seed: int, c: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(c)]).permutation(idx)


def check_seed(seed: int) -> int:
    """A seed for the sample choice must be a non-negative integer."""
    if int(seed) != seed or int(seed) < 0:
        raise UsageError(f"The data seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def stratified_split(labels: Sequence[int] | np.ndarray, num_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, val) with ``num_val`` val samples, every class in proportion.

    Class c with n_c samples gets ``floor(num_val * n_c / N)`` val samples, and the remaining ones go to the
    classes with the largest fractional parts (ties: lower class first). Returned index arrays are sorted.
    """
    y = np.asarray(labels)
    classes = np.unique(y)
    n = len(y)
    quota = np.array([num_val * np.sum(y == c) / n for c in classes])
    take = np.floor(quota).astype(int)
    rest = num_val - int(take.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(quota[i] - take[i]), i))
    for i in order[:rest]:
        take[i] += 1
    val: list[np.ndarray] = []
    for i, c in enumerate(classes):
        perm = _class_perm(np.flatnonzero(y == c), seed, int(c))
        val.append(perm[: take[i]])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx, val_idx


def select_per_class(
    labels: Sequence[int] | np.ndarray, per_class: int, seed: int, classes: Sequence[str], where: str
) -> np.ndarray:
    """Indices (sorted) of ``per_class`` samples of every class, drawn with ``seed``.

    A class with fewer than ``per_class`` samples is a :class:`DataError` naming the class and its count.
    """
    if int(per_class) != per_class or per_class < 1:
        raise UsageError(f"per_class must be a positive integer, got {per_class!r}.")
    seed = check_seed(seed)
    y = np.asarray(labels)
    chosen: list[np.ndarray] = []
    short = []
    for c, name in enumerate(classes):
        idx = np.flatnonzero(y == c)
        if len(idx) < per_class:
            short.append(f"{name!r} has {len(idx)}")
            continue
        chosen.append(_class_perm(idx, seed, c)[:per_class])
    if short:
        raise DataError(
            f"per_class={per_class} asks for more training images than {where} holds: class "
            f"{'; class '.join(short)}. Lower per_class to at most the smallest class count or add images."
        )
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
