"""Top-1 / top-5 accuracy and fidelity of logits, against a row-by-row count written out here."""

from __future__ import annotations

import numpy as np

from bvit_edge.metrics import accuracy, fidelity


def test_top1_and_top5_count_the_rows_whose_label_is_among_the_largest_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10))
    labels = rng.integers(0, 10, size=200)
    top1 = sum(int(np.argmax(row) == y) for row, y in zip(logits, labels, strict=True)) / 200
    top5 = sum(int(y in sorted(range(10), key=lambda j: -row[j])[:5]) for row, y in zip(logits, labels, strict=True))
    assert accuracy(logits, labels) == {"top1": top1, "top5": top5 / 200}


def test_fidelity_is_the_largest_difference_and_the_argmax_agreement():
    ref = np.array([[1.0, 2.0, 0.5], [3.0, -1.0, 0.5]], np.float32)
    other = np.array([[1.0, 1.5, 2.5], [3.0, -1.0, 0.75]], np.float32)
    got = fidelity(ref, other)
    assert got["max_abs_diff"] == 2.0  # |0.5 - 2.5|
    assert got["max_rel_diff"] == 4.0  # 2.0 / 0.5
    assert got["top1_agreement"] == 0.5  # row 0: argmax 1 vs 2; row 1: 0 vs 0
