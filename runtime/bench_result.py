"""The host's benchmark result: :class:`BenchResult` (the shared :class:`~bvit_edge.runtime.bench_record.BenchRecord`
that a board writes too, plus ``to_report()``: the bvit_edge.report document ``render_report`` draws), and reading
a result or report back from a file (:func:`report_of`, :func:`is_bench_file`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bvit_edge.errors import DataError
from bvit_edge.runtime.bench_record import KIND, BenchRecord, SideResult

__all__ = ["BenchResult", "is_bench_file", "report_of"]


class BenchResult(BenchRecord):
    """One benchmark (:class:`~bvit_edge.runtime.bench_record.BenchRecord`: the JSON a board writes too), plus its
    report document."""

    def to_report(
        self,
        student_name: str | None = None,
        teacher_name: str | None = None,
        title: str | None = None,
        teacher_int8_name: str | None = None,
    ) -> dict[str, Any]:
        """This benchmark as a report document (bvit_edge.report schema "bvit-edge/report" v1) that
        ``bvit_edge.report.render_report`` draws: one model entry per side (with its size when the weight
        counts are known: 1-bit bytes = ceil(n/8), 8-bit = n, 32-bit = 4n) and one latency entry per side.
        The int8 teacher is the report's "baseline". Names default to the models' file stems."""
        sides = [
            ("student", self.student, student_name),
            ("teacher", self.teacher, teacher_name),
            ("teacher_int8", self.teacher_int8, teacher_int8_name),
        ]
        models: list[dict[str, Any]] = []
        latency: list[dict[str, Any]] = []
        for role, side, name in sides:
            if side is None:
                continue
            name = name or _model_name(side, role)
            if any(m["name"] == name for m in models):
                name = f"{name}-{role}"
            models.append(self._model_entry(role, side, name))
            latency.append(self._latency_entry(side, name))
        doc: dict[str, Any] = {
            "schema": "bvit-edge/report",
            "schema_version": 1,
            "created_utc": self.date_utc,
            "environment": self._environment(),
            "models": models,
            "latency": latency,
        }
        if title:
            doc["title"] = title
        return doc

    def _model_entry(self, role: str, side: SideResult, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "role": "baseline" if role == "teacher_int8" else role}
        if role == "teacher_int8":
            entry["method"] = "fp, int8 by onnxruntime quantize_dynamic"
        size = _report_size((self.sizes or {}).get(role) or {}, side)
        if size:
            entry["size"] = size
        return entry

    def _latency_entry(self, side: SideResult, name: str) -> dict[str, Any]:
        st = side.steady
        return {
            "model": name,
            "target": str(self.target.get("name")),
            "emulated": self.emulated,
            "threads": self.threads if self.threads is not None else 0,
            "batch": self.batch_size,
            "warmup_runs": st.warmup,
            "runs": st.runs,
            "median_ms": st.median_ms,
            "p10_ms": st.p10_ms,
            "p90_ms": st.p90_ms,
            "mean_ms": st.mean_ms,
            "std_ms": st.std_ms,
            "min_ms": st.min_ms,
            "timing_kind": self.timing_kind,
            "runtime": side.runtime,
            "load_ms": side.load_ms,
            "first_run_ms": side.first_run_ms,
            "compile_s": side.compile_s,
        }

    def _environment(self) -> dict[str, Any]:
        env: dict[str, Any] = {
            "git_revision": self.git_revision,
            "seed": self.seed,
            "timing_kind": self.timing_kind,
            "date_utc": self.date_utc,
            **self.versions,
        }
        if self.ratio is not None:
            env["ratio_teacher_over_student_median"] = self.ratio
        if self.ratio_int8 is not None:
            env["ratio_teacher_int8_over_student_median"] = self.ratio_int8
        return env


def _model_name(side: SideResult, role: str) -> str:
    stem = Path(side.path).stem if side.runtime == "onnxruntime" else Path(side.path).name
    return stem or role


def _report_size(sizes: dict[str, Any], side: SideResult) -> dict[str, Any]:
    """The report's size record of one side (bvit_edge.report.size_entry), empty when the weight counts are
    unknown; artifact_bytes is the file that was run (the .onnx in onnxruntime, else the artifact)."""
    counts = sizes.get("weights")
    if not counts:
        return {}
    from bvit_edge.report.size import size_entry

    on_disk: int | None
    if side.runtime == "onnxruntime" and "onnx_bytes" in sizes:
        on_disk = int(sizes["onnx_bytes"])
    else:
        on_disk = int(sizes["artifact"]["total_bytes"]) if "artifact" in sizes else None
    return size_entry(
        int(counts["weights_1bit"]),
        int(counts["weights_8bit"]),
        int(counts["weights_32bit"]),
        artifact_bytes=on_disk,
        weights_16bit=int(counts.get("weights_16bit", 0)),
    )


def report_of(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A report document from a file: a report (validated) or a bench JSON (``BenchResult.to_report()``, labelled
    with where it ran). DataError naming the file otherwise."""
    from bvit_edge.report.schema import validate_report

    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p} does not exist; give a report or bench JSON file.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{p} is not readable JSON ({exc}). Re-create it.") from None
    if not (isinstance(doc, dict) and doc.get("kind") == KIND):
        return validate_report(doc, source=str(p))
    try:
        result = BenchResult.from_dict(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{p} is not a complete bench result ({type(exc).__name__}: {exc}); re-run the bench that wrote it."
        ) from None
    return validate_report(result.to_report(), source=str(p))


def is_bench_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds a bench JSON (False for anything else, unreadable files included)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("kind") == KIND
