"""Accuracy and fidelity of logits (numpy only): what the pipeline, the demo and ``bvit-edge run`` report.

* top-k accuracy: the fraction of rows whose label is among the k largest logits (ties broken by argsort);
* fidelity of ``other`` against ``reference`` (the same inputs through two runtimes): max |a - b|, max of
  |a - b| / max(|reference|, 1e-12) elementwise, and the fraction of rows with the same argmax.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "fidelity"]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{"top1", "top5"}: fractions of the rows of ``logits`` [N, C] whose label is the largest logit / among
    the five largest (all of them when C < 5)."""
    top = np.argsort(-np.asarray(logits), axis=1)[:, :5]
    labels = np.asarray(labels)
    return {"top1": float((top[:, 0] == labels).mean()), "top5": float((top == labels[:, None]).any(1).mean())}


def fidelity(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """{"max_abs_diff", "max_rel_diff", "top1_agreement"} of ``other`` against ``reference`` (both [N, C])."""
    diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    scale = np.maximum(np.abs(reference).astype(np.float64), 1e-12)
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / scale).max()),
        "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
    }
