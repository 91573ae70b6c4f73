"""The report's plots, drawn from a validated report document only (matplotlib, Agg backend).

- :func:`latency_figure`: per model (rows) and target (colours), a bar at the median latency with a
  whisker from p10 to p90; emulated targets hatched.
- :func:`size_figure`: per model a stacked bar of weight bytes by precision (1-bit, 8-bit, 16-bit when any,
  32-bit).
- :func:`accuracy_latency_figure`: top-1 accuracy against median latency, one point per model and
  target; the teacher a star, the baseline (int8 teacher) a diamond, students circles, emulated targets
  hollow; log latency axis.

Each returns the ``matplotlib.figure.Figure`` (tests read the drawn values back from it).
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported anywhere in this process
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

__all__ = ["accuracy_latency_figure", "byte_unit", "latency_figure", "size_figure"]

_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def byte_unit(max_bytes: float) -> tuple[str, float]:
    """(unit name, divisor) so the largest value reads between 1 and 1024: B, KiB, MiB or GiB."""
    for name, div in (("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0)):
        if max_bytes >= div:
            return name, div
    return "B", 1.0


def _targets(doc: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for e in doc.get("latency", []):
        if e["target"] not in seen:
            seen.append(e["target"])
    return seen


def latency_figure(doc: dict[str, Any]) -> Figure:
    """Median latency bars with p10-p90 whiskers, models as rows, one bar per target."""
    models = [m["name"] for m in doc["models"] if any(e["model"] == m["name"] for e in doc.get("latency", []))]
    targets = _targets(doc)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * max(1, len(models)) * max(1, len(targets))))
    height = 0.8 / max(1, len(targets))
    for j, target in enumerate(targets):
        rows = [
            (i, e)
            for i, name in enumerate(models)
            for e in doc["latency"]
            if e["model"] == name and e["target"] == target
        ]
        if not rows:
            continue
        ys = [i + (j - (len(targets) - 1) / 2) * height for i, _ in rows]
        med = [e["median_ms"] for _, e in rows]
        err = [[e["median_ms"] - e["p10_ms"] for _, e in rows], [e["p90_ms"] - e["median_ms"] for _, e in rows]]
        emulated = any(e.get("emulated") for _, e in rows)
        label = f"{target} (emulated)" if emulated else target
        ax.barh(
            ys,
            med,
            height=height * 0.9,
            xerr=err,
            capsize=3,
            color=_COLORS[j % len(_COLORS)],
            label=label,
            hatch="//" if emulated else None,
            error_kw={"elinewidth": 1},
        )
    ax.set_yticks(range(len(models)), models)
    ax.invert_yaxis()
    ax.set_xlabel("latency per batch, ms (bar: median; whisker: p10-p90)")
    ax.set_title("Latency by model and target")
    if targets:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def size_figure(doc: dict[str, Any]) -> Figure:
    """Stacked weight bytes by precision per model (models without a size record are left out)."""
    models = [m for m in doc["models"] if m.get("size")]
    keys = ("weights_1bit_bytes", "weights_8bit_bytes", "weights_16bit_bytes", "weights_32bit_bytes")
    top = max([sum(m["size"].get(k, 0) for k in keys) for m in models] + [1])
    unit, div = byte_unit(top)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * max(1, len(models))))
    left = [0.0] * len(models)
    layers = [
        ("weights_1bit_bytes", "1-bit"),
        ("weights_8bit_bytes", "8-bit"),
        ("weights_16bit_bytes", "16-bit"),
        ("weights_32bit_bytes", "32-bit"),
    ]
    if not any(m["size"].get("weights_16bit_bytes") for m in models):
        layers.pop(2)
    for j, (key, label) in enumerate(layers):
        widths = [m["size"].get(key, 0) / div for m in models]
        ax.barh(range(len(models)), widths, left=left, color=_COLORS[j], label=label)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(models)), [m["name"] for m in models])
    ax.invert_yaxis()
    ax.set_xlabel(f"weight bytes by precision, {unit}")
    ax.set_title("Model size by precision")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def accuracy_latency_figure(doc: dict[str, Any]) -> Figure:
    """Top-1 accuracy (%) against median latency (ms, log axis): a point per model and target."""
    acc = {m["name"]: m for m in doc["models"] if m.get("accuracy")}
    targets = _targets(doc)
    fig, ax = plt.subplots(figsize=(7, 5))
    for e in doc.get("latency", []):
        m = acc.get(e["model"])
        if m is None:
            continue
        color = _COLORS[targets.index(e["target"]) % len(_COLORS)]
        marker = {"teacher": "*", "baseline": "D"}.get(m["role"], "o")
        face = "none" if e.get("emulated") else color
        ax.scatter(
            [e["median_ms"]],
            [m["accuracy"]["top1_pct"]],
            marker=marker,
            s=140 if marker == "*" else 60,
            facecolors=face,
            edgecolors=color,
            label=f"{e['target']}{' (emulated)' if e.get('emulated') else ''}",
        )
        ax.annotate(
            e["model"],
            (e["median_ms"], m["accuracy"]["top1_pct"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize="small",
        )
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    if uniq:
        ax.legend(
            uniq.values(), uniq.keys(), loc="best", fontsize="small", title="star: teacher, diamond: int8 teacher"
        )
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")  # 2, 5, 10, 40 rather than 2x10^0
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("median latency, ms (log)")
    ax.set_ylabel("top-1 accuracy, %")
    ax.set_title("Accuracy vs latency")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
