"""Reports: latency statistics equal numpy's percentiles; size bytes follow the packing arithmetic; the
schema refuses bad documents naming the field; render_report writes Markdown and PNG plots whose drawn
values are the JSON's (bars at the medians, whiskers p10-p90, stacked bytes), from the JSON alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bvit_edge.errors import DataError
from bvit_edge.report import (
    latency_entry,
    load_report,
    render_report,
    size_entry,
    summarize_latency,
    validate_report,
    write_report,
)


def test_summarize_latency_matches_numpy_written_out():
    rng = np.random.default_rng(1)
    t = rng.gamma(4.0, 0.5, 101)
    s = summarize_latency(t.tolist())
    ts = np.sort(t)
    # n = 101: the 10th/50th/90th percentiles fall exactly on order statistics 10, 50, 90 (0-based).
    assert s["p10_ms"] == pytest.approx(ts[10]) and s["median_ms"] == pytest.approx(ts[50])
    assert s["p90_ms"] == pytest.approx(ts[90]) and s["min_ms"] == ts[0]
    assert s["mean_ms"] == pytest.approx(sum(t) / len(t))
    assert s["std_ms"] == pytest.approx(np.sqrt(((t - t.mean()) ** 2).mean()))
    e = latency_entry("m", "host", t, threads=2, warmup_runs=5, affinity="0-1")
    assert (e["runs"], e["warmup_runs"], e["threads"], e["batch"], e["affinity"]) == (101, 5, 2, 1, "0-1")
    with pytest.raises(DataError):
        summarize_latency([])
    with pytest.raises(DataError):
        summarize_latency([1.0, float("nan")])


def test_size_entry_bytes_by_precision():
    s = size_entry(weights_1bit=1001, weights_8bit=10, weights_32bit=7, artifact_bytes=4096)
    assert s["weights_1bit_bytes"] == 126  # ceil(1001 / 8)
    assert s["weights_8bit_bytes"] == 10 and s["weights_32bit_bytes"] == 28 and s["artifact_bytes"] == 4096
    assert size_entry(64, 0, 0, weights_1bit_bytes=16)["weights_1bit_bytes"] == 16
    with pytest.raises(DataError):
        size_entry(-1, 0, 0)


def _doc():
    return {
        "title": "unit report",
        "created_utc": "2026-11-22T05:00:00Z",
        "environment": {"git_revision": "abc123", "seed": 0},
        "models": [
            {
                "name": "teacher",
                "role": "teacher",
                "method": "fp",
                "accuracy": {"split": "val", "n_images": 360, "top1_pct": 97.5, "top5_pct": 100.0},
                "size": size_entry(0, 0, 1_000_000, artifact_bytes=4_100_000),
            },
            {
                "name": "gsb",
                "role": "student",
                "method": "gsb",
                "accuracy": {"split": "val", "n_images": 360, "top1_pct": 91.25, "top5_pct": 99.0},
                "size": size_entry(950_000, 0, 50_000, artifact_bytes=400_000),
                "fidelity": {"reference": "onnx", "compared": "tvm", "max_abs_diff": 2e-6, "top1_agreement_pct": 100.0},
            },
        ],
        "latency": [
            {
                "model": "teacher",
                "target": "host",
                "threads": 1,
                "batch": 1,
                "runs": 50,
                "warmup_runs": 5,
                "median_ms": 8.0,
                "p10_ms": 7.5,
                "p90_ms": 9.0,
                "mean_ms": 8.1,
                "std_ms": 0.4,
                "min_ms": 7.2,
            },
            {
                "model": "gsb",
                "target": "host",
                "threads": 1,
                "batch": 1,
                "runs": 50,
                "warmup_runs": 5,
                "median_ms": 2.0,
                "p10_ms": 1.8,
                "p90_ms": 2.5,
                "mean_ms": 2.1,
                "std_ms": 0.2,
                "min_ms": 1.7,
            },
            {
                "model": "gsb",
                "target": "rpi4-aarch64",
                "emulated": True,
                "threads": 1,
                "batch": 1,
                "runs": 10,
                "median_ms": 40.0,
                "p10_ms": 38.0,
                "p90_ms": 45.0,
            },
        ],
    }


def test_render_report_writes_markdown_and_three_pngs(tmp_path):
    path = write_report(tmp_path / "report.json", _doc())
    assert json.loads(path.read_text())["schema_version"] == 1
    out = render_report(path, tmp_path / "out")
    assert set(out) == {"markdown", "latency", "size", "accuracy_latency"}
    from PIL import Image

    for name in ("latency", "size", "accuracy_latency"):
        assert out[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out[name]) as im:
            assert im.size[0] > 300 and im.size[1] > 100
    md = out["markdown"].read_text()
    assert "# unit report" in md and "97.50" in md and "91.25" in md
    assert "4.00×" in md  # speed-up = teacher 8.0 ms / gsb 2.0 ms on host
    # compression = teacher 4,000,000 B / (118,750 + 200,000) B
    assert f"{4_000_000 / (118_750 + 200_000):.1f}×" in md
    assert "rpi4-aarch64 (emulated)" in md and "qemu" in md
    assert "![Latency by model and target](latency.png)" in md
    assert "onnx → tvm" in md


def test_a_baseline_gets_its_own_speed_up_and_compression_columns(tmp_path):
    doc = _doc()
    doc["models"].append(
        {
            "name": "teacher-int8",
            "role": "baseline",
            "method": "fp, int8 by onnxruntime",
            "accuracy": {"split": "val", "n_images": 360, "top1_pct": 97.0},
            "size": size_entry(0, 1_000_000, 2_000, artifact_bytes=1_100_000),
        }
    )
    doc["latency"].append(
        {
            "model": "teacher-int8",
            "target": "host",
            "threads": 1,
            "batch": 1,
            "runs": 50,
            "median_ms": 5.0,
            "p10_ms": 4.5,
            "p90_ms": 6.0,
        }
    )
    out = render_report(write_report(tmp_path / "r.json", doc), tmp_path / "out")
    md = out["markdown"].read_text()
    assert "speed-up vs teacher-int8 (int8)" in md and "vs teacher-int8 (int8)" in md
    gsb_host = next(line for line in md.splitlines() if line.startswith("| gsb | host |"))
    assert gsb_host.endswith("| 4.00× | 2.50× |")  # teacher 8.0 / 2.0 ms, int8 teacher 5.0 / 2.0 ms
    gsb_size = next(line for line in md.splitlines() if line.startswith("| gsb |") and "400,000" in line)
    assert gsb_size.endswith(f"| {4_000_000 / 318_750:.1f}× | {1_008_000 / 318_750:.1f}× |")
    base_row = next(line for line in md.splitlines() if line.startswith("| teacher-int8 | host |"))
    assert base_row.endswith("| 1.60× | 1.00× |")


def test_latency_plot_draws_medians_with_p10_p90_whiskers():
    from bvit_edge.report.plots import latency_figure

    doc = validate_report({"schema_version": 1, **_doc()})
    fig = latency_figure(doc)
    ax = fig.axes[0]
    widths = sorted(round(p.get_width(), 9) for p in ax.patches)
    assert widths == sorted(e["median_ms"] for e in doc["latency"])
    spans = set()
    for c in ax.containers:
        if getattr(c, "errorbar", None) is not None:
            for seg in c.errorbar.lines[2][0].get_segments():
                spans.add((round(seg[0][0], 9), round(seg[1][0], 9)))
    assert spans == {(e["p10_ms"], e["p90_ms"]) for e in doc["latency"]}


def test_size_plot_stacks_bytes_by_precision():
    from bvit_edge.report.plots import size_figure

    doc = validate_report({"schema_version": 1, **_doc()})
    ax = size_figure(doc).axes[0]
    assert "MiB" in ax.get_xlabel()  # the teacher has 4,000,000 B
    # 2 models x 3 precisions; the gsb row's 32-bit segment starts where its 1-bit + 8-bit end.
    rects = ax.patches
    assert len(rects) == 6
    gsb_32 = [r for r in rects if abs(r.get_y() + r.get_height() / 2 - 1) < 1e-9][-1]
    assert gsb_32.get_x() == pytest.approx(118_750 / 2**20) and gsb_32.get_width() == pytest.approx(200_000 / 2**20)


def test_plots_need_only_the_json(tmp_path):
    """Rendering imports neither torch nor tvm (a board-side or CI report step needs neither)."""
    path = write_report(tmp_path / "r.json", _doc())
    code = (
        "import sys; from bvit_edge.report import render_report; "
        f"render_report({str(path)!r}, {str(tmp_path / 'o')!r}); "
        "print(sorted(m for m in ('torch', 'tvm', 'onnx') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_partial_reports_render_what_they_have(tmp_path):
    doc = _doc()
    for m in doc["models"]:
        m.pop("size")
        m.pop("accuracy")
    out = render_report(write_report(tmp_path / "r.json", doc), tmp_path / "o")
    assert set(out) == {"markdown", "latency"}


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d["latency"][1].update(p90_ms=1.0), "latency[1]"),
        (lambda d: d["latency"][0].update(model="nobody"), "latency[0].model"),
        (lambda d: d["models"][1].update(role="pupil"), "models[1].role"),
        (lambda d: d["models"][0]["accuracy"].update(top1_pct=101), "models[0].accuracy.top1_pct"),
        (lambda d: d["models"][1]["size"].pop("weights_1bit_bytes"), "models[1].size.weights_1bit_bytes"),
        (lambda d: d["models"].append(dict(d["models"][0])), "duplicate"),
        (lambda d: d["latency"][2].update(median_ms="fast"), "latency[2].median_ms"),
    ],
)
def test_bad_documents_are_data_errors_naming_the_field(tmp_path, mutate, field):
    doc = {"schema_version": 1, **_doc()}
    mutate(doc)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        load_report(p)
    assert field in str(err.value) and err.value.exit_code == 2


def test_missing_or_broken_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        render_report(tmp_path / "none.json", tmp_path / "o")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        load_report(tmp_path / "broken.json")
    assert not (tmp_path / "o" / "report.md").exists()
