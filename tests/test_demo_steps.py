"""The demo's step runner: finished steps are recorded and skipped on a re-run; a failure names its step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bvit_edge.demo import DemoStepFailed, Step, run_steps


def test_failed_step_is_named_finished_steps_are_kept_and_a_rerun_resumes(tmp_path: Path) -> None:
    calls: list[str] = []
    fail = {"second": True}

    def first() -> dict:
        calls.append("first")
        return {"value": 1}

    def second() -> dict:
        calls.append("second")
        if fail["second"]:
            raise RuntimeError("compiler exploded")
        return {"value": 2}

    steps = [Step("first", "the first step", first), Step("second", "the second step", second)]
    with pytest.raises(DemoStepFailed, match=r"the second step.*compiler exploded"):
        run_steps(tmp_path, steps)
    state = json.loads((tmp_path / "steps.json").read_text())
    assert state["first"]["status"] == "done" and "second" not in state
    fail["second"] = False
    state = run_steps(tmp_path, steps)
    assert calls == ["first", "second", "second"]  # the finished first step was not run again
    assert state["second"]["result"] == {"value": 2}


def _state() -> dict:
    fid = {
        "n_images": 360,
        "teacher_onnx": {"top1": 0.975, "top5": 1.0},
        "teacher_int8_onnx": {"top1": 0.972, "top5": 1.0},
        "student_torch": {"top1": 0.9, "top5": 0.99},
        "student_onnx": {"top1": 0.9, "top5": 0.99},
        "student_tvm_host": {"top1": 0.9, "top5": 0.99},
        "torch_vs_onnx": {"max_abs_diff": 1e-6, "max_rel_diff": 1e-7, "top1_agreement": 1.0},
        "onnx_vs_tvm": {"max_abs_diff": 2e-6, "max_rel_diff": 1e-7, "top1_agreement": 1.0},
    }
    bench = {
        "by_threads": {
            "1": {
                "student_median_ms": 0.5,
                "teacher_median_ms": 1.1,
                "teacher_int8_median_ms": 0.8,
                "teacher_over_student": 2.2,
                "teacher_int8_over_student": 1.6,
                "threads": 1,
            },
            "2": {
                "student_median_ms": 0.4,
                "teacher_median_ms": 0.7,
                "teacher_int8_median_ms": 0.6,
                "teacher_over_student": 1.75,
                "teacher_int8_over_student": 1.5,
                "threads": 2,
            },
        }
    }
    export = {
        "packed_bytes": 200_000,
        "teacher_bytes": 1_800_000,
        "teacher_int8_bytes": 500_000,
        "storage": {
            "att_bias": "int8",
            "float_params": "float32",
            "fidelity": {
                "att_bias=int8,float_params=float32": {
                    "max_abs_logit_diff": 0.01,
                    "top1_agreement": 1.0,
                    "n_images": 360,
                }
            },
        },
    }
    deit_s = {
        "label": "random non-zero frozen weights: compile + bench + size only",
        "student_onnx_bytes": 7_400_000,
        "student_artifact_bytes": 7_900_000,
        "teacher_onnx_bytes": 89_700_000,
        "teacher_int8_onnx_bytes": 22_800_000,
        "student_median_ms": 10.0,
        "teacher_median_ms": 100.0,
        "teacher_int8_median_ms": 44.0,
        "teacher_over_student": 10.0,
        "teacher_int8_over_student": 4.4,
    }
    return {
        k: {"status": "done", "result": v}
        for k, v in (
            ("teacher", {"val_top1": 0.975}),
            ("gsb", {"per_class": 30, "stage1_val_top1": 0.8, "val_top1": 0.9}),
            ("export", export),
            ("fidelity", fid),
            ("bench", bench),
            ("deit_s", deit_s),
        )
    }


def test_the_summary_shows_the_int8_teacher_the_1_thread_ratio_and_the_deit_s_row() -> None:
    import io

    from rich.console import Console

    from bvit_edge import demo

    con = Console(record=True, width=240, file=io.StringIO())
    original = demo._console
    demo._console = lambda: con
    try:
        demo._summary(_state())
    finally:
        demo._console = original
    text = con.export_text()
    assert "int8 by onnxruntime quantize_dynamic" in text and "97.20%" in text
    assert "0.80 / 0.60 ms" in text  # the int8 teacher at 1 / 2 threads
    assert "at 1 thread: 2.20x faster than fp32, 1.60x than int8" in text
    assert "GSB DeiT-S geometry, random non-zero frozen weights (compile + bench + size only" in text
    assert "10.0x GSB" in text and "4.4x GSB" in text
    assert "9.0x smaller than fp32, 2.5x than int8" in text  # 1.8 MB / 200 kB, 500 kB / 200 kB
    assert "int8: max |d logit| 0.01, top-1 360/360" in text
