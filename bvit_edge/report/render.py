"""``render_report(json_path, out_dir)``: the report JSON -> ``report.md`` and PNG plots, all written
atomically; nothing but the JSON is read (no model, no TVM, no torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bvit_edge.atomic import write_json, write_text, write_with
from bvit_edge.errors import DataError
from bvit_edge.report.schema import SCHEMA, SCHEMA_VERSION, validate_report

__all__ = ["load_report", "render_into", "render_report", "write_report"]


def load_report(json_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a report file (DataError naming the file and the problem)."""
    path = Path(json_path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"Report file {path} does not exist; run the benchmark that writes it first.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"Report file {path} is not readable JSON ({exc}). Re-create it.") from None
    return validate_report(doc, source=str(path))


def write_report(json_path: str | os.PathLike[str], doc: dict[str, Any]) -> Path:
    """Fill in ``schema``/``schema_version``, validate, and write ``doc`` atomically."""
    doc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **doc}
    validate_report(doc, source=str(json_path))
    return write_json(json_path, doc)


def render_report(
    json_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], overwrite: bool = False, keep_json: bool = False
) -> dict[str, Path]:
    """Write ``out_dir/report.md`` and the plots that have data; return {"markdown"|plot name: path}.

    ``out_dir`` follows bvit_edge.output_folder's rule (new, empty, or a report folder written before;
    ``overwrite`` replaces anything else) and is written as a whole, atomically. A ``json_path`` inside
    ``out_dir`` is carried over into the new folder unchanged; ``keep_json`` puts a copy of it there as
    ``report.json`` wherever it is (e.g. a report merged from several files).

    Plots: ``latency.png`` (needs latency records), ``size.png`` (needs size records),
    ``accuracy_latency.png`` (needs accuracy and latency of the same model).
    """
    from bvit_edge.output_folder import output_folder

    src = Path(json_path)
    doc = load_report(src)
    out = Path(out_dir)
    inside = out.absolute() in src.absolute().parents
    raw = src.read_bytes() if inside or keep_json else b""
    with output_folder(out, "report", overwrite, option="--out") as tmp:
        if inside or keep_json:
            keep = tmp / (src.absolute().relative_to(out.absolute()) if inside else "report.json")
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_bytes(raw)
        written = render_into(doc, tmp)
    return {k: out / p.relative_to(tmp) for k, p in written.items()}


def render_into(doc: dict[str, Any], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Render a validated report document into an existing ``folder`` (see :func:`render_report`)."""
    import matplotlib.pyplot as plt

    from bvit_edge.report.markdown import render_markdown
    from bvit_edge.report.plots import accuracy_latency_figure, latency_figure, size_figure

    out = Path(folder)
    lat_models = {e["model"] for e in doc.get("latency", [])}
    wanted = [
        ("latency", "Latency by model and target", latency_figure, bool(lat_models)),
        ("size", "Model size by precision", size_figure, any(m.get("size") for m in doc["models"])),
        (
            "accuracy_latency",
            "Accuracy vs latency",
            accuracy_latency_figure,
            any(m.get("accuracy") and m["name"] in lat_models for m in doc["models"]),
        ),
    ]
    written: dict[str, Path] = {}
    titles: dict[str, str] = {}
    for name, title, draw, has_data in wanted:
        if not has_data:
            continue
        fig = draw(doc)

        def save_png(path: Path, fig: Any = fig) -> None:
            fig.savefig(path, format="png", dpi=120)

        try:
            written[name] = write_with(out / f"{name}.png", save_png, suffix=".png")
        finally:
            plt.close(fig)
        titles[title] = f"{name}.png"
    written["markdown"] = write_text(out / "report.md", render_markdown(doc, titles))
    return written
