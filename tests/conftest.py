"""Suite-wide checks and helpers.

Nothing the tests start may outlive the suite: a TVM RPC server's popen worker, an emulated board (qemu),
a training run. Every process started during the session inherits the environment variable
``BVIT_EDGE_TEST_SESSION`` (a token unique to this session); at the end of the session, processes that still
run and carry the token, or are still children of pytest, are listed, stopped, and fail the run.

:func:`stop_process_tree` stops a process and everything it started (children first), for fixtures that
start servers: a TVM RPC server (``python -m tvm.exec.rpc_server``) runs in a popen worker child that
killing the server alone leaves orphaned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

SESSION_VAR = "BVIT_EDGE_TEST_SESSION"
GRACE_S = 10.0  # processes being stopped when the last test ends get this long to go


def pytest_configure(config: pytest.Config) -> None:
    os.environ[SESSION_VAR] = uuid.uuid4().hex


def _ours(token: str) -> list[psutil.Process]:
    """Live processes (not zombies) started during this session: children of pytest, or carrying the token."""
    me = psutil.Process()
    found: dict[int, psutil.Process] = {}
    try:
        for child in me.children(recursive=True):
            found[child.pid] = child
    except psutil.Error:
        pass
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in (me.pid, *found):
            continue
        try:
            if proc.environ().get(SESSION_VAR) == token:
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    alive = []
    for proc in found.values():
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} (parent {proc.ppid()}): {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}"


def stop_process_tree(proc: subprocess.Popen | psutil.Process | int, timeout_s: float = 10.0) -> None:
    """Stop ``proc`` and every process it started: SIGTERM to the children and then to it, SIGKILL to
    whatever is left after ``timeout_s``; waits for all of them."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, left = psutil.wait_procs(tree, timeout=timeout_s)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=timeout_s)
    if isinstance(proc, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    token = os.environ.get(SESSION_VAR)
    if not token:
        return
    deadline = time.monotonic() + GRACE_S
    left = _ours(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _ours(token)
    if not left:
        return
    lines = [_describe(p) for p in left]
    for p in left:
        stop_process_tree(p, timeout_s=5)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    text = (
        "Processes started by the tests outlived the suite (now stopped); the test or fixture that started "
        "them must stop them:\n  " + "\n  ".join(lines)
    )
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(text, red=True, bold=True)
    else:
        print(text)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def tvm_rpc_server():
    """Factory fixture: ``start(port)`` launches ``python -m tvm.exec.rpc_server`` on 127.0.0.1 (in its own
    session) and returns the Popen; every server started is stopped with its popen worker at teardown."""
    started: list[subprocess.Popen] = []

    def start(port: int) -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tvm.exec.rpc_server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--port-end",
                str(port + 1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process_tree(proc)


# ---------------------------------------------------------------------------------------------------------
# the bad-input suite (tests/test_bad_input_*.py): tiny real inputs, and running the CLI as a user does


class CliRunner:
    """Runs ``bvit-edge`` in a subprocess (so an abort or a hang shows as such) and checks how it failed."""

    @property
    def env(self) -> dict[str, str]:
        """The environment of every run (read now: it carries the session token set at configure time)."""
        return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "2000"}

    def run(self, *args: object, timeout: float = 600, cwd: object = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bvit_edge", *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )

    @staticmethod
    def refused(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
        """Exit ``code``, a message holding every one of ``words`` (case-insensitive), no traceback, no abort."""
        detail = f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
        assert proc.returncode == code, detail
        assert "Traceback (most recent call last)" not in proc.stderr, detail
        text = " ".join(proc.stderr.split()).lower()
        for word in words:
            assert word.lower() in text, f"{word!r} not in the message\n{detail}"

    @staticmethod
    def snapshot(*paths: object) -> dict[str, bytes]:
        """Every file under ``paths`` (and what each path is), to compare before and after a command."""
        from pathlib import Path

        out: dict[str, bytes] = {}
        for path in map(Path, paths):
            out[f"{path}:kind"] = (
                b"dir"
                if path.is_dir()
                else b"file"
                if path.is_file()
                else b"missing"
                if not path.exists()
                else b"other"
            )
            if path.is_file():
                out[str(path)] = path.read_bytes()
            elif path.is_dir():
                for f in sorted(path.rglob("*")):
                    out[str(f)] = f.read_bytes() if f.is_file() else b"<dir>"
        return out

    @staticmethod
    def leftovers(folder: object) -> list[str]:
        """Temporary files and folders an atomic writer leaves when it is killed or fails half-way."""
        from pathlib import Path

        return sorted(str(p) for p in Path(folder).rglob("*") if p.name.endswith(".tmp") or ".old-" in p.name)


@pytest.fixture(scope="session")
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Real inputs at the smallest size (built once, ~1-2 minutes on 2 cores; treat them as read-only):
    a teacher run, a GSB run (stage1/, stage2/), its packed / standard / teacher ONNX, a host artifact, a
    report JSON and a 16x16 PNG."""
    from pathlib import Path

    from PIL import Image

    from bvit_edge.pipeline import export_checkpoint
    from bvit_edge.report import write_report
    from bvit_edge.runtime.bench import bench
    from bvit_edge.runtime.compile import compile_model
    from bvit_edge.training import train

    root = Path(tmp_path_factory.mktemp("tiny_pipeline"))
    tiny = dict(
        data="digits",
        per_class=2,
        epochs=1,
        batch_size=16,
        threads=1,
        image_size=16,
        progress=False,
        log=lambda msg: None,
    )
    train(method="fp", model="deit_test_patch4_16", out=str(root / "teacher"), **tiny)
    train(
        method="gsb",
        stage="all",
        model="gsb_test_patch4_16",
        teacher=str(root / "teacher" / "best"),
        out=str(root / "student"),
        **tiny,
    )
    export_checkpoint(root / "student" / "stage2", root / "export", validate=False)
    compile_model(root / "export" / "student.packed.onnx", "host", root / "art")
    doc = bench(root / "art", teacher_onnx=root / "export" / "teacher.onnx", threads=1, warmup=0, runs=2).to_report()
    write_report(root / "report.json", doc)
    Image.new("RGB", (16, 16), (120, 30, 200)).save(root / "img.png")
    return {
        "root": root,
        "teacher": root / "teacher",
        "student": root / "student" / "stage2",
        "packed": root / "export" / "student.packed.onnx",
        "standard": root / "export" / "student.standard.onnx",
        "teacher_onnx": root / "export" / "teacher.onnx",
        "art": root / "art",
        "report": root / "report.json",
        "image": root / "img.png",
    }


@pytest.fixture
def stalled_board():
    """A fake board (tests/stalled_rpc_server.py) that completes TVM's RPC handshake and then never answers.
    Yields (port, events): ``events()`` returns its log lines so far ("handshake N", "closed N")."""
    from pathlib import Path

    script = Path(__file__).with_name("stalled_rpc_server.py")
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"stalled-board-{uuid.uuid4().hex}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        port = int(proc.stdout.readline())
        yield port, lambda: log.read_text().splitlines()
    finally:
        stop_process_tree(proc)
        proc.stdout.close()
        log.unlink(missing_ok=True)
