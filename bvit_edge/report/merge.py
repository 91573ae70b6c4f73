"""Several report documents -> one: the host's report with benchmarks run elsewhere (a board's
``bvit-edge-device bench --out pi4.json``), for ``bvit-edge report HOST.json pi4.json --out DIR``.

Bench JSONs (kind "bvit_edge.bench") become report documents first, with
``bvit_edge.runtime.bench_record.report_of`` (one model and one latency entry per side, labelled with the
bench's target and timing kind: host, board or emulated); this module only merges documents.

Merging: models are united by name (the first document's entry wins, fields it lacks are taken from later ones);
latency entries are concatenated (the same model on another target or machine is another row), exact
duplicates dropped; the environment is the first document's, with each later one's recorded under
``environment.merged_<i>_*`` keys when they differ.
"""

from __future__ import annotations

from typing import Any

from bvit_edge.errors import DataError
from bvit_edge.report.schema import SCHEMA, SCHEMA_VERSION, validate_report

__all__ = ["merge_reports"]


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
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "environment": env,
        "models": list(models.values()),
        "latency": latency,
    }
    for key in ("title", "created_utc"):
        if key in docs[0]:
            out[key] = docs[0][key]
    return validate_report(out, source="(merged)")
