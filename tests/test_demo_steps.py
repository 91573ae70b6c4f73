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
    with pytest.raises(DemoStepFailed, match="the second step.*compiler exploded"):
        run_steps(tmp_path, steps)
    state = json.loads((tmp_path / "steps.json").read_text())
    assert state["first"]["status"] == "done" and "second" not in state
    fail["second"] = False
    state = run_steps(tmp_path, steps)
    assert calls == ["first", "second", "second"]  # the finished first step was not run again
    assert state["second"]["result"] == {"value": 2}
