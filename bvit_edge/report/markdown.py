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
    lines = [f"# {doc.get('title', 'bvit-edge report')}", ""]
    meta = [f"schema {doc.get('schema', 'bvit-edge/report')} v{doc['schema_version']}"]
    if doc.get("created_utc"):
        meta.append(f"created {doc['created_utc']}")
    lines += ["_" + ", ".join(meta) + "_", ""]
    env = doc.get("environment") or {}
    if env:
        lines += ["## Environment", "", *_table(["key", "value"], [[str(k), f"`{v}`"] for k, v in env.items()])]

    accs = [m for m in doc["models"] if m.get("accuracy")]
    if accs:
        lines += ["## Accuracy", ""]
        lines += _table(
            ["model", "role", "method", "split", "images", "top-1 %", "top-5 %"],
            [
                [
                    m["name"],
                    m["role"],
                    m.get("method", "–"),
                    str(m["accuracy"].get("split", "–")),
                    _fmt(m["accuracy"].get("n_images"), 6),
                    f"{m['accuracy']['top1_pct']:.2f}",
                    f"{m['accuracy']['top5_pct']:.2f}" if m["accuracy"].get("top5_pct") is not None else "–",
                ]
                for m in accs
            ],
        )

    has_base = _reference(doc, "baseline") is not None
    base_name = _reference(doc, "baseline")
    lat = doc.get("latency", [])
    if lat:
        lines += ["## Latency", ""]
        rows = []
        base_speed = speedups(doc, "baseline")
        for e, s, b in zip(lat, speedups(doc), base_speed, strict=True):
            target = e["target"] + (" (emulated)" if e.get("emulated") else "")
            spread = f"{_fmt(e['p10_ms'])}–{_fmt(e['p90_ms'])}"
            mean = f"{_fmt(e['mean_ms'])} ± {_fmt(e.get('std_ms'))}" if e.get("mean_ms") is not None else "–"
            runs = f"{e['runs']}" + (f" (+{e['warmup_runs']} warm-up)" if e.get("warmup_runs") else "")
            row = [
                e["model"],
                target,
                str(e["threads"]),
                str(e.get("batch", 1)),
                _fmt(e["median_ms"]),
                spread,
                mean,
                _fmt(e.get("min_ms")),
                runs,
                f"{s:.2f}×" if s is not None else "–",
            ]
            if has_base:
                row.append(f"{b:.2f}×" if b is not None else "–")
            rows.append(row)
        lines += _table(
            [
                "model",
                "target",
                "threads",
                "batch",
                "median ms",
                "p10–p90 ms",
                "mean ± std ms",
                "min ms",
                "runs",
                "speed-up vs teacher",
            ]
            + ([f"speed-up vs {base_name} (int8)"] if has_base else []),
            rows,
        )
        if any(e.get("emulated") for e in lat):
            lines += [
                "Emulated targets run under qemu user mode: their times show that the code runs and "
                "matches, not how fast a real board is.",
                "",
            ]

    sized = [m for m in doc["models"] if m.get("size")]
    if sized:
        unit, div = byte_unit(max(_weight_bytes(m) or 0 for m in sized))
        comp = compressions(doc)
        comp_base = compressions(doc, "baseline")
        lines += ["## Size", ""]
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
                f"{comp[m['name']]:.1f}×" if comp[m["name"]] is not None else "–",
            ]
            if has_base:
                row.append(f"{comp_base[m['name']]:.1f}×" if comp_base[m["name"]] is not None else "–")
            rows.append(row)
        lines += _table(
            [
                "model",
                f"1-bit {unit}",
                f"8-bit {unit}",
                f"16-bit {unit}",
                f"32-bit {unit}",
                f"weights {unit}",
                "bytes on disk",
                "compression vs teacher",
            ]
            + ([f"vs {base_name} (int8)"] if has_base else []),
            rows,
        )

    fids = [m for m in doc["models"] if m.get("fidelity")]
    if fids:
        lines += ["## Fidelity", ""]
        lines += _table(
            ["model", "reference → compared", "max abs diff", "top-1 agreement %"],
            [
                [
                    m["name"],
                    f"{m['fidelity'].get('reference', '?')} → {m['fidelity'].get('compared', '?')}",
                    f"{m['fidelity']['max_abs_diff']:.3g}",
                    f"{m['fidelity']['top1_agreement_pct']:.2f}"
                    if m["fidelity"].get("top1_agreement_pct") is not None
                    else "–",
                ]
                for m in fids
            ],
        )

    if plots:
        lines += ["## Plots", ""]
        for title, path in plots.items():
            lines += [f"![{title}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"
