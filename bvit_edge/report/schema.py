"""The report document (JSON), schema version 1, and its validation.

A report is what benchmarks and evaluations write and what :func:`bvit_edge.report.render_report`
draws from (nothing else is read). Units are in the field names::

    {
      "schema": "bvit-edge/report",
      "schema_version": 1,
      "title": "bvit-edge demo",                       # optional
      "created_utc": "2026-11-22T05:00:00Z",            # optional
      "environment": {"git_revision": "...", "seed": 0, "tvm": "0.27.0", ...},   # optional, flat
      "models": [{
          "name": "deit-demo-fp",                      # unique
          "role": "teacher" | "student" | "baseline",  # baseline: what a user would pick instead of the
                                                       # student (the teacher quantized by onnxruntime)
          "method": "fp" | "gsb" | "bit" | ...,        # optional
          "accuracy": {"split": "val", "n_images": 360, "top1_pct": 97.2, "top5_pct": 99.7},  # optional
          "size": {"weights_1bit_bytes": 0, "weights_8bit_bytes": 0, "weights_32bit_bytes": 1234,
                   "weights_16bit_bytes": 0,                # optional: parameters stored as float16
                   "artifact_bytes": 5678,             # optional: bytes on disk of the artifact
                   "weights_1bit_count": 0, ...},      # optional counts
          "fidelity": {"reference": "onnx", "compared": "tvm", "max_abs_diff": 1e-6,
                       "top1_agreement_pct": 100.0}    # optional
      }, ...],
      "latency": [{
          "model": "deit-demo-fp", "target": "host", "emulated": false,
          "threads": 1, "batch": 1, "warmup_runs": 10, "runs": 100,
          "median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.2, "mean_ms": 1.05, "std_ms": 0.1, "min_ms": 0.85
      }, ...]
    }

Validation names the offending field (``latency[2].p90_ms``) in a :class:`~bvit_edge.errors.DataError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from bvit_edge.errors import DataError

SCHEMA = "bvit-edge/report"
SCHEMA_VERSION = 1
ROLES = ("teacher", "student", "baseline")
LATENCY_STATS = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "min_ms")
SIZE_BYTES = ("weights_1bit_bytes", "weights_8bit_bytes", "weights_32bit_bytes")

__all__ = ["LATENCY_STATS", "ROLES", "SCHEMA", "SCHEMA_VERSION", "SIZE_BYTES", "validate_report"]


def _objects(errs: _Errors, doc: dict[str, Any], key: str, non_empty: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, entry) of each object in the list ``doc[key]``; an error for a missing (when ``non_empty``) or
    non-list value and for each entry that is not an object."""
    items = doc.get(key, None if non_empty else [])
    if not isinstance(items, list) or (non_empty and not items):
        errs.add(key, "must be a non-empty list" if non_empty else "must be a list")
        items = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errs.add(f"{key}[{i}]", "must be an object")
            continue
        yield f"{key}[{i}]", item


class _Errors:
    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, path: str, problem: str) -> None:
        self.items.append(f"{path}: {problem}")

    def raise_if_any(self) -> None:
        if self.items:
            shown = "; ".join(self.items[:8]) + (f"; and {len(self.items) - 8} more" if len(self.items) > 8 else "")
            raise DataError(
                f"The report {self.source} does not follow schema {SCHEMA} v{SCHEMA_VERSION}: {shown}. "
                "Fix these fields (see bvit_edge/report/schema.py for the layout)."
            )


def _number(
    errs: _Errors,
    obj: dict,
    key: str,
    path: str,
    required: bool = True,
    minimum: float = 0.0,
    maximum: float | None = None,
) -> float | None:
    if key not in obj or obj[key] is None:
        if required:
            errs.add(f"{path}.{key}", "missing")
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        errs.add(f"{path}.{key}", f"must be a finite number, got {v!r}")
        return None
    if v < minimum or (maximum is not None and v > maximum):
        errs.add(f"{path}.{key}", f"must be in [{minimum}, {maximum if maximum is not None else 'inf'}], got {v}")
        return None
    return float(v)


def validate_report(doc: Any, source: str = "(in memory)") -> dict[str, Any]:
    """Check ``doc`` against schema v1; return it unchanged, or raise DataError listing every problem."""
    errs = _Errors(source)
    if not isinstance(doc, dict):
        raise DataError(f"The report {source} must be a JSON object, got {type(doc).__name__}.")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"The report {source} has schema_version {version!r}; this bvit-edge reads version "
            f"{SCHEMA_VERSION}. Re-create it with this version's benchmark/report commands."
        )
    if doc.get("schema", SCHEMA) != SCHEMA:
        errs.add("schema", f"must be {SCHEMA!r}, got {doc.get('schema')!r}")
    env = doc.get("environment", {})
    if not isinstance(env, dict):
        errs.add("environment", "must be an object")
    names: set[str] = set()
    for p, m in _objects(errs, doc, "models", non_empty=True):
        name = m.get("name")
        if not isinstance(name, str) or not name:
            errs.add(f"{p}.name", "must be a non-empty string")
        elif name in names:
            errs.add(f"{p}.name", f"duplicate model name {name!r}")
        else:
            names.add(name)
        if m.get("role") not in ROLES:
            errs.add(f"{p}.role", f"must be one of {ROLES}, got {m.get('role')!r}")
        acc = m.get("accuracy")
        if acc is not None:
            if not isinstance(acc, dict):
                errs.add(f"{p}.accuracy", "must be an object")
            else:
                _number(errs, acc, "top1_pct", f"{p}.accuracy", maximum=100.0)
                _number(errs, acc, "top5_pct", f"{p}.accuracy", required=False, maximum=100.0)
                _number(errs, acc, "n_images", f"{p}.accuracy", required=False)
        size = m.get("size")
        if size is not None:
            if not isinstance(size, dict):
                errs.add(f"{p}.size", "must be an object")
            else:
                for key in SIZE_BYTES:
                    _number(errs, size, key, f"{p}.size")
                _number(errs, size, "weights_16bit_bytes", f"{p}.size", required=False)
                _number(errs, size, "artifact_bytes", f"{p}.size", required=False)
        fid = m.get("fidelity")
        if fid is not None:
            if not isinstance(fid, dict):
                errs.add(f"{p}.fidelity", "must be an object")
            else:
                _number(errs, fid, "max_abs_diff", f"{p}.fidelity")
                _number(errs, fid, "top1_agreement_pct", f"{p}.fidelity", required=False, maximum=100.0)
    for p, e in _objects(errs, doc, "latency", non_empty=False):
        if e.get("model") not in names:
            errs.add(f"{p}.model", f"{e.get('model')!r} is not one of the models {sorted(names)}")
        if not isinstance(e.get("target"), str) or not e.get("target"):
            errs.add(f"{p}.target", "must be a non-empty string")
        if not isinstance(e.get("emulated", False), bool):
            errs.add(f"{p}.emulated", "must be true or false")
        stats = {k: _number(errs, e, k, p, required=k in ("median_ms", "p10_ms", "p90_ms")) for k in LATENCY_STATS}
        for k in ("threads", "batch", "runs", "warmup_runs"):
            _number(errs, e, k, p, required=k in ("threads", "runs"))
        lo, med, hi = stats["p10_ms"], stats["median_ms"], stats["p90_ms"]
        if lo is not None and med is not None and hi is not None and not lo <= med <= hi:
            errs.add(p, f"needs p10_ms <= median_ms <= p90_ms, got {lo} / {med} / {hi}")
    errs.raise_if_any()
    return doc
