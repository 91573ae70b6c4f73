"""The report as Markdown: tables of accuracy, latency (with the speed-up against the teacher), size by
precision (with the compression against the teacher) and fidelity, drawn from the document only.

Derived columns, all "reference over model" so that > 1 means the model is better:
- speed-up = teacher median_ms / model median_ms, for the same target, threads and batch;
- compression = teacher weight bytes / model weight bytes (all precisions summed);
- when the report has a baseline (the teacher quantized to int8 by onnxruntime: what a user would pick
  instead), the same two ratios against it.
"""

from __future__ import annotations

from typing import Any

from bvit_edge.report.plots import byte_unit
from bvit_edge.report.schema import SIZE_BYTES

__all__ = ["compressions", "render_markdown", "speedups"]


def _reference(doc: dict[str, Any], role: str) -> str | None:
    return next((m["name"] for m in doc["models"] if m["role"] == role), None)


def speedups(doc: dict[str, Any], role: str = "teacher") -> list[float | None]:
    """For each latency record: the median of the first model of ``role`` ("teacher" or "baseline") over its
    median on the same target/threads/batch."""
    teacher = _reference(doc, role)
    base = {
        (e["target"], e["threads"], e.get("batch", 1)): e["median_ms"]
        for e in doc.get("latency", [])
        if e["model"] == teacher
    }
    out: list[float | None] = []
    for e in doc.get("latency", []):
        t = base.get((e["target"], e["threads"], e.get("batch", 1)))
        out.append(t / e["median_ms"] if t is not None and e["median_ms"] > 0 else None)
    return out


def _weight_bytes(m: dict[str, Any]) -> int | None:
    if not m.get("size"):
        return None
    return sum(m["size"][k] for k in SIZE_BYTES) + m["size"].get("weights_16bit_bytes", 0)


def compressions(doc: dict[str, Any], role: str = "teacher") -> dict[str, float | None]:
    """model name -> weight bytes of the first model of ``role`` / model weight bytes (None without sizes)."""
    teacher = next((m for m in doc["models"] if m["role"] == role), None)
    tb = _weight_bytes(teacher) if teacher else None
    return {m["name"]: (tb / b if tb and (b := _weight_bytes(m)) else None) for m in doc["models"]}


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def render_markdown(doc: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """Markdown text of the report; ``plots`` maps a plot's title to its (relative) image path."""
    lines = _heading(doc)
    for section in (_accuracy_section, _latency_section, _size_section, _fidelity_section):
        lines += section(doc)
    if plots:
        lines += ["## Plots", ""]
        for title, path in plots.items():
            lines += [f"![{title}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _heading(doc: dict[str, Any]) -> list[str]:
    """Title, schema and date, and the environment table."""
    lines = [f"# {doc.get('title', 'bvit-edge report')}", ""]
    meta = [f"schema {doc.get('schema', 'bvit-edge/report')} v{doc['schema_version']}"]
    if doc.get("created_utc"):
        meta.append(f"created {doc['created_utc']}")
    lines += ["_" + ", ".join(meta) + "_", ""]
    env = doc.get("environment") or {}
    if env:
        lines += ["## Environment", "", *_table(["key", "value"], [[str(k), f"`{v}`"] for k, v in env.items()])]
    return lines


def _pct(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "–"


def _ratio(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}×" if value is not None else "–"


def _accuracy_section(doc: dict[str, Any]) -> list[str]:
    accs = [m for m in doc["models"] if m.get("accuracy")]
    if not accs:
        return []
    rows = [
        [
            m["name"],
            m["role"],
            m.get("method", "–"),
            str(m["accuracy"].get("split", "–")),
            _fmt(m["accuracy"].get("n_images"), 6),
            f"{m['accuracy']['top1_pct']:.2f}",
            _pct(m["accuracy"].get("top5_pct")),
        ]
        for m in accs
    ]
    header = ["model", "role", "method", "split", "images", "top-1 %", "top-5 %"]
    return ["## Accuracy", "", *_table(header, rows)]


def _latency_section(doc: dict[str, Any]) -> list[str]:
    lat = doc.get("latency", [])
    if not lat:
        return []
    base_name = _reference(doc, "baseline")
    rows = []
    for e, s, b in zip(lat, speedups(doc), speedups(doc, "baseline"), strict=True):
        mean = f"{_fmt(e['mean_ms'])} ± {_fmt(e.get('std_ms'))}" if e.get("mean_ms") is not None else "–"
        row = [
            e["model"],
            e["target"] + (" (emulated)" if e.get("emulated") else ""),
            str(e["threads"]),
            str(e.get("batch", 1)),
            _fmt(e["median_ms"]),
            f"{_fmt(e['p10_ms'])}–{_fmt(e['p90_ms'])}",
            mean,
            _fmt(e.get("min_ms")),
            f"{e['runs']}" + (f" (+{e['warmup_runs']} warm-up)" if e.get("warmup_runs") else ""),
            _ratio(s),
        ]
        rows.append(row + ([_ratio(b)] if base_name is not None else []))
    header = ["model", "target", "threads", "batch", "median ms", "p10–p90 ms", "mean ± std ms", "min ms", "runs"]
    header.append("speed-up vs teacher")
    if base_name is not None:
        header.append(f"speed-up vs {base_name} (int8)")
    lines = ["## Latency", "", *_table(header, rows)]
    if any(e.get("emulated") for e in lat):
        lines += [
            "Emulated targets run under qemu user mode: their times show that the code runs and "
            "matches, not how fast a real board is.",
            "",
        ]
    return lines


def _size_section(doc: dict[str, Any]) -> list[str]:
    sized = [m for m in doc["models"] if m.get("size")]
    if not sized:
        return []
    base_name = _reference(doc, "baseline")
    unit, div = byte_unit(max(_weight_bytes(m) or 0 for m in sized))
    comp, comp_base = compressions(doc), compressions(doc, "baseline")
    rows = []
    for m in sized:
        sz = m["size"]
        row = [
            m["name"],
            *(f"{sz[k] / div:,.2f}" for k in SIZE_BYTES[:2]),
            f"{sz.get('weights_16bit_bytes', 0) / div:,.2f}",
            f"{sz['weights_32bit_bytes'] / div:,.2f}",
            f"{(_weight_bytes(m) or 0) / div:,.2f}",
            f"{sz['artifact_bytes']:,}" if sz.get("artifact_bytes") is not None else "–",
            _ratio(comp[m["name"]], 1),
        ]
        rows.append(row + ([_ratio(comp_base[m["name"]], 1)] if base_name is not None else []))
    header = ["model", *(f"{b}-bit {unit}" for b in (1, 8, 16, 32)), f"weights {unit}", "bytes on disk"]
    header.append("compression vs teacher")
    if base_name is not None:
        header.append(f"vs {base_name} (int8)")
    return ["## Size", "", *_table(header, rows)]


def _fidelity_section(doc: dict[str, Any]) -> list[str]:
    fids = [m for m in doc["models"] if m.get("fidelity")]
    if not fids:
        return []
    rows = [
        [
            m["name"],
            f"{m['fidelity'].get('reference', '?')} → {m['fidelity'].get('compared', '?')}",
            f"{m['fidelity']['max_abs_diff']:.3g}",
            _pct(m["fidelity"].get("top1_agreement_pct")),
        ]
        for m in fids
    ]
    return ["## Fidelity", "", *_table(["model", "reference → compared", "max abs diff", "top-1 agreement %"], rows)]
