"""Accuracy and fidelity records of a report's model entry, from the measures of bvit_edge.metrics.

``accuracy_entry({"top1", "top5"}, n)`` -> ``{"split", "n_images", "top1_pct", "top5_pct"}``;
``fidelity_entry({"max_abs_diff", "top1_agreement"})`` -> ``{"reference", "compared", "max_abs_diff",
"top1_agreement_pct"}`` (fractions become percentages).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["accuracy_entry", "fidelity_entry"]


def accuracy_entry(accuracy: Mapping[str, float], n_images: int, split: str = "val") -> dict[str, Any]:
    """A model's ``accuracy`` record from top-1 / top-5 fractions on ``n_images`` images of ``split``."""
    return {
        "split": split,
        "n_images": int(n_images),
        "top1_pct": accuracy["top1"] * 100,
        "top5_pct": accuracy["top5"] * 100,
    }


def fidelity_entry(fidelity: Mapping[str, float], reference: str = "onnx", compared: str = "tvm") -> dict[str, Any]:
    """A model's ``fidelity`` record: ``compared``'s outputs against ``reference``'s on the same images."""
    return {
        "reference": reference,
        "compared": compared,
        "max_abs_diff": fidelity["max_abs_diff"],
        "top1_agreement_pct": fidelity["top1_agreement"] * 100,
    }
