"""Latency statistics for the report, from raw per-run times.

For samples t_1..t_n (milliseconds, warm-up runs already discarded): median = the 50th percentile,
p10/p90 = the 10th/90th percentiles (linear interpolation between order statistics, numpy's default),
mean = sum t_i / n, std = sqrt(sum (t_i - mean)^2 / n) (population), min = min t_i.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bvit_edge.errors import DataError

__all__ = ["latency_entry", "summarize_latency"]


def summarize_latency(samples_ms: Sequence[float]) -> dict[str, float]:
    """{median_ms, p10_ms, p90_ms, mean_ms, std_ms, min_ms} of ``samples_ms`` (see module docstring)."""
    t = np.asarray(samples_ms, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise DataError("Latency samples must be a non-empty list of finite, non-negative milliseconds.")
    p10, med, p90 = np.percentile(t, [10, 50, 90])
    return {
        "median_ms": float(med),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "mean_ms": float(t.mean()),
        "std_ms": float(t.std()),
        "min_ms": float(t.min()),
    }


def latency_entry(
    model: str,
    target: str,
    samples_ms: Sequence[float],
    *,
    threads: int,
    batch: int = 1,
    warmup_runs: int = 0,
    emulated: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """One ``latency`` record of the report from raw samples (``extra`` keys are kept, e.g. affinity)."""
    return {
        "model": model,
        "target": target,
        "emulated": emulated,
        "threads": threads,
        "batch": batch,
        "warmup_runs": warmup_runs,
        "runs": len(samples_ms),
        **summarize_latency(samples_ms),
        **extra,
    }
