"""Timing several models side by side in alternating blocks: per round, each model in turn makes its
warm-up calls (untimed) and then its share of the timed calls, so that drift on a shared machine hits every
model alike and each block starts after its own warm-up (a runtime's threads keep spinning for a while after
its last call). Each timed call is timed on its own (bvit_edge.runtime.timing.measure).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from bvit_edge.runtime.timing import Timing, measure

__all__ = ["blocks", "measure_alternating"]


def blocks(runs: int, rounds: int) -> list[int]:
    """``runs`` timed calls split over ``rounds`` blocks as evenly as possible (no empty block)."""
    rounds = max(1, min(int(rounds), int(runs)))
    return [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]


def measure_alternating(
    calls: list[Callable[[], Any]], warmup: int, runs: int, rounds: int, around: Callable[[], Any] | None = None
) -> list[Timing]:
    """Time every function of ``calls`` in alternating blocks (the module docstring): per round, each in turn
    makes ``warmup`` untimed calls then its share of ``runs`` timed ones. ``around`` (a context manager
    factory) wraps each block. One Timing per function; its ``warmup`` counts every discarded call."""
    samples: list[list[float]] = [[] for _ in calls]
    per_round = blocks(runs, rounds)
    for per in per_round:
        for i, fn in enumerate(calls):
            with around() if around is not None else contextlib.nullcontext():
                t = measure(fn, warmup=warmup, runs=per)
            samples[i].extend(t.samples_ms)
    return [Timing.from_samples_ms(s, warmup=warmup * len(per_round)) for s in samples]
