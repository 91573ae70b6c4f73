"""``bvit-edge demo`` (what ``make demo`` runs): the pipeline on the built-in digits data, step by step.

Each step writes its outputs under the demo folder and is recorded as finished in ``steps.json``; a re-run
skips finished steps (resume), a failed step is named with its reason and what finished is kept.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bvit_edge.atomic import write_json
from bvit_edge.errors import BvitEdgeError


@dataclass
class Step:
    name: str
    title: str
    run: Callable[[], dict[str, Any]]


class DemoStepFailed(BvitEdgeError):
    """A demo step failed; the message names the step and the reason. Finished steps are kept."""

    exit_code = 1


def _console():
    from rich.console import Console

    return Console(stderr=True)


def run_steps(out: Path, steps: list[Step]) -> dict[str, Any]:
    """Run ``steps`` in order, skipping those already recorded as finished in OUT/steps.json."""
    state_path = out / "steps.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    con = _console()
    for i, step in enumerate(steps, 1):
        head = f"[{i}/{len(steps)}] {step.title}"
        if state.get(step.name, {}).get("status") == "done":
            con.print(f"[dim]{head}: already done, skipped[/]")
            continue
        con.rule(head)
        t0 = time.time()
        try:
            result = step.run()
        except BvitEdgeError as exc:
            raise DemoStepFailed(f"Demo step '{step.title}' failed: {exc} Finished steps are kept in {out}; re-run to resume.") from exc
        except Exception as exc:  # noqa: BLE001 - report any failure with the step's name, keep what finished
            tb = traceback.format_exc(limit=3)
            raise DemoStepFailed(
                f"Demo step '{step.title}' failed: {type(exc).__name__}: {exc}. Finished steps are kept in {out}; "
                f"re-run to resume.\n{tb}"
            ) from exc
        state[step.name] = {"status": "done", "seconds": round(time.time() - t0, 1), "result": result}
        write_json(state_path, state)
    return state


def run_demo(out: Path = Path("bvit-edge-demo"), quick: bool = False, threads: int | None = None) -> dict[str, Any]:
    """The demo pipeline on digits. ``quick`` trains fewer epochs."""
    import torch

    from bvit_edge.evaluation import evaluate
    from bvit_edge.training import train

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = out / "teacher"
    epochs = 15 if quick else 60

    def teacher_step() -> dict[str, Any]:
        res = train(method="fp", model="demo", data="digits", epochs=epochs, out=str(teacher_dir), seed=0, threads=threads)
        ev = evaluate(teacher_dir)
        return {"checkpoint": str(teacher_dir / "best"), "val_top1": ev.top1, "val_top5": ev.top5, "train_seconds": res.seconds}

    steps = [Step("teacher", f"train the full-precision teacher on digits ({epochs} epochs)", teacher_step)]
    state = run_steps(out, steps)
    _summary(state)
    return state


def _summary(state: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="bvit-edge demo")
    table.add_column("step")
    table.add_column("result")
    table.add_column("time", justify="right")
    for name, s in state.items():
        r = s.get("result", {})
        shown = ", ".join(f"{k}={v * 100:.2f}%" if k.endswith("top1") or k.endswith("top5") else f"{k}={v}" for k, v in r.items())
        table.add_row(name, shown, f"{s.get('seconds', 0):.0f}s")
    _console().print(table)
