"""Several results -> one report: the host's report with benchmarks run elsewhere (a board's
``bvit-edge-device bench --out pi4.json``), for ``bvit-edge report HOST.json pi4.json --out DIR``.

Each input is a report document (schema "bvit-edge/report") or a bench JSON (kind "bvit_edge.bench", from
``bvit-edge bench --out`` or ``bvit-edge-device bench --out``), which becomes a report with
:meth:`bvit_edge.runtime.bench_record.BenchResult.to_report` (one model and one latency entry per side, labelled with
the bench's target and timing kind: host, board or emulated).

Merging: models are united by name (the first document's entry wins, fields it lacks are taken from later ones);
latency entries are concatenated (the same model on another target or machine is another row), exact
duplicates dropped; the environment is the first document's, with each later one's recorded under
``environment.merged_<i>_*`` keys when they differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from bvit_edge.errors import DataError
from bvit_edge.report.schema import SCHEMA, SCHEMA_VERSION, validate_report

__all__ = ["bench_to_report", "is_bench_file", "load_any", "merge_reports"]

BENCH_KIND = "bvit_edge.bench"


def _build(cls: type, data: dict[str, Any], **override: Any) -> Any:
    """``cls(**data)`` with the dataclass's own fields only (later schema additions with defaults are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in {**data, **override}.items() if k in names})


def bench_to_report(doc: dict[str, Any], source: str = "(in memory)") -> dict[str, Any]:
    """A bench JSON (``BenchResult.to_dict()``) as a report document."""
    from bvit_edge.runtime.bench_record import BenchResult, SideResult
    from bvit_edge.runtime.timing import Timing

    def side(d: dict[str, Any] | None) -> Any:
        if d is None:
            return None
        steady = dict(d["steady"])
        steady["samples_ms"] = tuple(steady.get("samples_ms") or ())
        return _build(SideResult, d, steady=_build(Timing, steady))

    try:
        res = _build(BenchResult, doc, student=side(doc["student"]), teacher=side(doc.get("teacher")))
        return validate_report(res.to_report(), source=source)
    except DataError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{source} is not a complete bench result ({type(exc).__name__}: {exc}); re-run the bench "
                        "that wrote it.") from None


def is_bench_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds a bench JSON (False for anything else, unreadable files included)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("kind") == BENCH_KIND


def load_any(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A report document from a report file or a bench JSON file (DataError naming the file otherwise)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p} does not exist; give a report or bench JSON file.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{p} is not readable JSON ({exc}). Re-create it.") from None
    if isinstance(doc, dict) and doc.get("kind") == BENCH_KIND:
        return bench_to_report(doc, source=str(p))
    return validate_report(doc, source=str(p))


def merge_reports(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One report holding every model and latency entry of ``docs`` (see the module docstring)."""
    if not docs:
        raise DataError("Nothing to merge: give at least one report or bench JSON.")
    models: dict[str, dict[str, Any]] = {}
    latency: list[dict[str, Any]] = []
    env = dict(docs[0].get("environment") or {})
    for i, doc in enumerate(docs):
        for m in doc["models"]:
            have = models.setdefault(m["name"], dict(m))
            for key, value in m.items():
                have.setdefault(key, value)
        for entry in doc.get("latency", []):
            if entry not in latency:
                latency.append(entry)
        if i:
            for key, value in (doc.get("environment") or {}).items():
                if env.get(key) != value:
                    env[f"merged_{i}_{key}"] = value
    out: dict[str, Any] = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "environment": env,
                           "models": list(models.values()), "latency": latency}
    for key in ("title", "created_utc"):
        if key in docs[0]:
            out[key] = docs[0][key]
    return validate_report(out, source="(merged)")
