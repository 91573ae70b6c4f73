"""Ctrl-C or SIGTERM during the demo stops it at the current step with exit code 128 + the signal's number
(130 for SIGINT, 143 for SIGTERM) and a message naming the step; the next stage never starts and what finished
is kept. During training the trainer saves its checkpoint first, and the demo stops after it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bvit_edge.demo import DemoInterrupted, Step, run_steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_inside_a_step_stops_the_demo_there(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    ran: list[str] = []

    def first() -> dict:
        ran.append("first")
        return {}

    def signalled() -> dict:
        ran.append("signalled")
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler interrupts the sleep
        ran.append("after the signal")
        return {}

    def third() -> dict:
        ran.append("third")
        return {}

    steps = [Step("first", "the first step", first), Step("two", "the signalled step", signalled)]
    steps.append(Step("third", "the third step", third))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(DemoInterrupted, match=f"stopped by {sig.name} during step 'the signalled step'") as err:
        run_steps(tmp_path, steps)
    assert err.value.exit_code == code == 128 + int(sig)
    assert ran == ["first", "signalled"]
    assert set(json.loads((tmp_path / "steps.json").read_text())) == {"first"}
    assert signal.getsignal(signal.SIGTERM) == before  # the demo's SIGTERM handler is put back


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"the demo ended (exit {proc.returncode}) before {text!r}:\n{path.read_text()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no {text!r} within {timeout_s} s:\n{path.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_make_demo_stops_when_signalled_during_training(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    out, log = tmp_path / "demo", tmp_path / "demo.log"
    cmd = [sys.executable, "-m", "bvit_edge", "demo", "--quick", "--no-board", "--no-deit-s", "--threads", "1"]
    with log.open("w") as sink:
        proc = subprocess.Popen([*cmd, "--out", str(out)], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:
            _wait_for(log, "training demo (fp)", proc, timeout_s=120)  # the trainer's handlers are in place
            proc.send_signal(sig)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert rc == code, text[-3000:]
    assert f"stopped by {sig.name}" in text and "train the full-precision teacher" in text, text[-3000:]
    assert "[2/" not in text  # the next stage (GSB training) never started
    assert (out / "teacher" / "last").is_dir()  # the trainer saved its checkpoint before the demo stopped
    state = out / "steps.json"
    assert not state.exists() or "teacher" not in json.loads(state.read_text())
