"""The timing core of ``bvit-edge bench``: warm-up runs discarded and counted, then a sample of timed runs.

``measure(fn, warmup=N, runs=M)`` calls ``fn()`` N times without timing them (warm-up: caches, lazy
initialisation, thread-pool start), then M times, each call timed on its own with
``time.perf_counter_ns`` (monotonic, integer nanoseconds); ``min_seconds=S`` instead keeps timing until
the timed calls add up to at least S seconds (and at least ``runs`` calls when ``runs`` is also given).

Statistics of the timed sample t_1..t_M (milliseconds), as written in :class:`Timing`:

* median_ms = the 50th percentile, p10_ms / p90_ms = the 10th / 90th percentiles, all with linear
  interpolation between order statistics (numpy's default ``method="linear"``: the q-th percentile of the
  sorted sample s_0..s_{M-1} is s_j + (h - j)(s_{j+1} - s_j) with h = (M - 1) q / 100, j = floor(h));
* mean_ms = (1/M) sum t_i; std_ms = sqrt((1/M) sum (t_i - mean)^2), the population standard deviation of
  the sample (ddof = 0, so one run gives 0, never NaN);
* min_ms, max_ms; runs = M; warmup = N (the calls made and discarded).

The clock is injectable (``clock=``, a zero-argument function returning integer nanoseconds) so tests
check the statistics on a fake clock.

:func:`time_protocol` is the whole per-model protocol of ``bvit-edge bench`` (and of ``bvit-edge-device bench``
on a board): the load timed on its own, the first run timed on its own, then :func:`measure` of the steady
state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from bvit_edge.errors import UsageError

__all__ = ["ProtocolTimes", "Timing", "measure", "time_once", "time_protocol"]

Clock = Callable[[], int]
T = TypeVar("T")
#: A hard ceiling on the number of timed calls with ``min_seconds`` (a guard against a near-zero fn).
MAX_RUNS = 1_000_000
_NS_PER_MS = 1e6


@dataclass(frozen=True)
class Timing:
    """Statistics of one timed sample (milliseconds; ``runs`` timed calls after ``warmup`` discarded ones)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    samples_ms: tuple[float, ...] = field(default=(), repr=False)

    @classmethod
    def from_samples_ms(cls, samples_ms: Sequence[float], warmup: int = 0) -> Timing:
        """Statistics of ``samples_ms`` (one duration per timed call, in ms); see the module docstring."""
        t = np.asarray(samples_ms, dtype=np.float64).reshape(-1)
        if t.size == 0:
            raise UsageError("A timing needs at least one timed run; ask for runs >= 1.")
        if not np.all(np.isfinite(t)) or np.any(t < 0):
            raise UsageError(
                "Timed durations must be finite and non-negative; the clock went backwards or "
                "the timer returned garbage."
            )
        p10, p50, p90 = np.percentile(t, [10.0, 50.0, 90.0])
        return cls(
            median_ms=float(p50),
            p10_ms=float(p10),
            p90_ms=float(p90),
            mean_ms=float(t.mean()),
            std_ms=float(t.std(ddof=0)),
            min_ms=float(t.min()),
            max_ms=float(t.max()),
            runs=int(t.size),
            warmup=int(warmup),
            samples_ms=tuple(float(v) for v in t),
        )

    @classmethod
    def from_samples_ns(cls, samples_ns: Sequence[int], warmup: int = 0) -> Timing:
        """Same as :meth:`from_samples_ms` from integer nanoseconds."""
        return cls.from_samples_ms([int(v) / _NS_PER_MS for v in samples_ns], warmup)

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        """JSON-ready dict, units in the field names; ``samples=False`` leaves out the raw durations."""
        d: dict[str, Any] = {
            "median_ms": self.median_ms,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "mean_ms": self.mean_ms,
            "std_ms": self.std_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "runs": self.runs,
            "warmup": self.warmup,
        }
        if samples:
            d["samples_ms"] = list(self.samples_ms)
        return d


def _check_counts(warmup: int, runs: int | None, min_seconds: float | None) -> None:
    if int(warmup) < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}.")
    if runs is not None and int(runs) < 1:
        raise UsageError(f"runs must be >= 1, got {runs}.")
    if min_seconds is not None and not float(min_seconds) > 0:
        raise UsageError(f"min_seconds must be > 0, got {min_seconds}.")


def measure(
    fn: Callable[[], Any],
    warmup: int = 5,
    runs: int | None = None,
    min_seconds: float | None = None,
    clock: Clock = time.perf_counter_ns,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``runs`` timed ones (default 50) or, with
    ``min_seconds``, timed calls until they add up to ``min_seconds`` (at least ``runs`` of them when given,
    else at least one; at most :data:`MAX_RUNS`). Each call is timed on its own: t_i = clock() after minus
    clock() before, so the sample's spread is the run-to-run spread."""
    _check_counts(warmup, runs, min_seconds)
    for _ in range(int(warmup)):
        fn()
    samples: list[int] = []
    if min_seconds is None:
        n = 50 if runs is None else int(runs)
        for _ in range(n):
            t0 = clock()
            fn()
            samples.append(clock() - t0)
    else:
        budget_ns = float(min_seconds) * 1e9
        least = 1 if runs is None else int(runs)
        total = 0
        while (total < budget_ns or len(samples) < least) and len(samples) < MAX_RUNS:
            t0 = clock()
            fn()
            dt = clock() - t0
            samples.append(dt)
            total += dt
    return Timing.from_samples_ns(samples, warmup=int(warmup))


def time_once(fn: Callable[[], Any], clock: Clock = time.perf_counter_ns) -> tuple[float, Any]:
    """(milliseconds, result) of one call of ``fn()``: for load and first-run times, timed apart."""
    t0 = clock()
    out = fn()
    return (clock() - t0) / _NS_PER_MS, out


@dataclass(frozen=True)
class ProtocolTimes:
    """One model's times under the bench protocol: load, first run (each timed once) and the steady state."""

    load_ms: float
    first_run_ms: float
    steady: Timing


def time_protocol(
    load: Callable[[], T],
    call_of: Callable[[T], Callable[[], Any]],
    warmup: int = 5,
    runs: int = 50,
    clock: Clock = time.perf_counter_ns,
) -> tuple[ProtocolTimes, T, Any]:
    """``load()`` timed once; ``call = call_of(loaded)`` (untimed: e.g. the input put on the device); ``call()``
    timed once (the first run); then :func:`measure` of ``call`` (``warmup`` discarded, ``runs`` timed).
    Returns (the times, what ``load`` returned, what the first call returned)."""
    _check_counts(warmup, runs, None)
    load_ms, loaded = time_once(load, clock)
    call = call_of(loaded)
    first_ms, first = time_once(call, clock)
    steady = measure(call, warmup=warmup, runs=runs, clock=clock)
    return ProtocolTimes(load_ms, first_ms, steady), loaded, first
