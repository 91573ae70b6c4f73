"""CLI output that scripts can use: listings whole and tab-separated in a pipe, human tables never cut when
not on a terminal, and TVM's C++ log lines kept off stderr (in a log file) unless --verbose.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.table import Table

from bvit_edge.native_log import native_stderr_to_log
from bvit_edge.terminal import console, print_rows

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("host", "rpi3-armv7", "rpi4-aarch64", "rpi5-aarch64", "x86-64-avx2", "x86-64-avx512")
TVM_WARNING = "Fast mode segfaults when there are out-of-bounds indices"


def _cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bvit_edge", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------- listings
def test_targets_list_in_a_pipe_gives_whole_tab_separated_lines():
    r = _cli("targets", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split("\t") == ["name", "arch", "family", "word bits", "threads", "compiler", "runs natively"]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert set(PRESETS) <= set(rows)
    assert rows["rpi3-armv7"][1:4] == ["armv7", "armv7-neon", "32"]
    assert "…" not in r.stdout
    assert [line for line in lines if line.startswith("rpi3-armv7\t")]  # `| grep rpi3-armv7` finds it


def test_targets_list_json_is_unchanged_machine_output():
    r = _cli("targets", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert {row["name"] for row in json.loads(r.stdout)} >= set(PRESETS)


def test_print_rows_off_a_terminal_is_tab_separated_with_cells_kept_on_one_line():
    out = io.StringIO()
    print_rows(["name", "note"], [["a\tb", "two\nlines"], ["c", None]], title="ignored in a pipe", file=out)
    assert out.getvalue() == "name\tnote\na b\ttwo lines\nc\t\n"


def test_a_wide_table_is_never_cut_off_a_terminal():
    long_name = "rpi3-armv7-" + "x" * 180
    table = Table(title="wide")
    for col in ("name", "a long column header", "value"):
        table.add_column(col)
    table.add_row(long_name, "yes", "1" * 80)
    out = io.StringIO()
    con = console(file=out)
    con.print(table)
    con.print("a plain line " + "y" * 300)
    text = out.getvalue()
    assert long_name in text and "1" * 80 in text and "…" not in text
    assert ("a plain line " + "y" * 300) in text.replace("\n", "")
    assert "\x1b[" not in text  # no terminal codes in a file


# -------------------------------------------------------------------------------------- native logging
_NATIVE_SNIPPET = """
import sys
from bvit_edge.native_log import native_stderr_to_log
with native_stderr_to_log(sys.argv[1], note=lambda m: print("NOTE " + m, file=sys.stderr)):
    from tvm import te, topi
    a = te.placeholder((4,), name="a")
    i = te.placeholder((2,), dtype="int32", name="i")
    topi.take(a, i, mode="fast")        # TVM's C++ LOG(WARNING) on descriptor 2
    print("python line", file=sys.stderr)
print("after", file=sys.stderr)
"""


def test_tvm_cpp_warnings_go_to_the_log_and_python_stderr_still_reaches_the_terminal(tmp_path):
    pytest.importorskip("tvm")
    log = tmp_path / "native.log"
    r = subprocess.run(
        [sys.executable, "-c", _NATIVE_SNIPPET, str(log)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert TVM_WARNING not in r.stderr
    assert TVM_WARNING in log.read_text()
    assert "python line" in r.stderr and "after" in r.stderr
    assert f"NOTE 1 line of native (TVM) log went to {log}" in r.stderr


def test_an_empty_native_log_is_removed_and_descriptor_2_is_restored(tmp_path):
    log = tmp_path / "quiet.log"
    with native_stderr_to_log(log) as path:
        assert path == log and log.exists()
    assert not log.exists()
    before = os.fstat(2)
    with native_stderr_to_log(tmp_path / "x.log"):
        os.write(2, b"native\n")
    after = os.fstat(2)
    assert (before.st_ino, before.st_dev) == (after.st_ino, after.st_dev)
    assert (tmp_path / "x.log").read_text() == "native\n"


@pytest.fixture(scope="module")
def gather_onnx(tmp_path_factory) -> Path:
    """A one-node float model whose lowering makes TVM print its fast-mode take warning."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 4, 4])
    idx = numpy_helper.from_array(np.array([0, 2], np.int64), "idx")
    graph = helper.make_graph([helper.make_node("Gather", ["image", "idx"], ["logits"], axis=1)], "g", [x], [y], [idx])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path_factory.mktemp("gather") / "gather.onnx"
    onnx.save(model, str(path))
    return path


def test_compile_keeps_tvm_warnings_in_a_log_file(tmp_path, gather_onnx):
    pytest.importorskip("tvm")
    logs = tmp_path / "logs"
    r = _cli("compile", str(gather_onnx), "--out", str(tmp_path / "art"), env={"BVIT_EDGE_LOG_DIR": str(logs)})
    assert r.returncode == 0, r.stderr
    assert TVM_WARNING not in r.stderr and "compiled" in r.stderr
    (log,) = logs.glob("compile-*.log")
    assert TVM_WARNING in log.read_text()
    assert str(log) in r.stderr


@pytest.mark.slow
def test_compile_verbose_shows_tvm_warnings_and_writes_no_log(tmp_path, gather_onnx):
    pytest.importorskip("tvm")
    logs = tmp_path / "logs"
    r = _cli(
        "--verbose", "compile", str(gather_onnx), "--out", str(tmp_path / "art"), env={"BVIT_EDGE_LOG_DIR": str(logs)}
    )
    assert r.returncode == 0, r.stderr
    assert TVM_WARNING in r.stderr
    assert not logs.exists() or not list(logs.iterdir())


def test_an_error_still_reaches_stderr_with_its_exit_code_while_native_output_is_logged(tmp_path):
    r = _cli(
        "compile",
        str(tmp_path / "missing.onnx"),
        "--out",
        str(tmp_path / "art"),
        env={"BVIT_EDGE_LOG_DIR": str(tmp_path / "logs")},
    )
    assert r.returncode == 2
    assert "missing.onnx" in r.stderr


def test_an_exception_in_the_block_propagates_and_restores_descriptor_2(tmp_path):
    before = os.fstat(2)
    with pytest.raises(RuntimeError, match="boom"), native_stderr_to_log(tmp_path / "e.log"):
        raise RuntimeError("boom")
    after = os.fstat(2)
    assert (before.st_ino, before.st_dev) == (after.st_ino, after.st_dev)


def test_old_native_logs_are_pruned_and_other_files_kept(tmp_path, monkeypatch):
    from bvit_edge import native_log

    monkeypatch.setenv("BVIT_EDGE_LOG_DIR", str(tmp_path))
    for i in range(5):
        old = tmp_path / f"compile-2026010{i}T000000Z-{i}.log"
        old.write_text("x\n")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "notes.log").write_text("mine\n")
    monkeypatch.setattr(native_log, "KEEP_LOGS", 3)
    with native_stderr_to_log(command="compile"):
        os.write(2, b"native\n")
    ours = sorted(p.name for p in tmp_path.glob("compile-*.log"))
    assert len(ours) == 3 and "compile-20260104T000000Z-4.log" in ours
    assert (tmp_path / "notes.log").read_text() == "mine\n"
