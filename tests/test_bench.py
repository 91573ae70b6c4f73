"""The benchmark protocol (bvit_edge.runtime.bench, bvit_edge.runtime.timing).

Timing statistics are checked on an injected fake clock against numpy percentiles and the formulas written
out here; warm-up calls are made, counted and kept out of the sample; the JSON report has the schema fields
with units in their names; bad input gives bvit_edge errors with their exit codes. End to end: a tiny
compiled student against a tiny ONNX teacher on the host (hand-built graphs, seconds), over TVM RPC to a
host RPC server, and (slow) a frozen gsb_test_patch4_16 against its deit_test_patch4_16 teacher. No test
asserts on real speeds.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bvit_edge.errors import BvitEdgeError, ToolchainError, UsageError
from bvit_edge.runtime.timing import Timing, measure, time_once


# ====================================================================================== timing core
class FakeClock:
    """A nanosecond clock that only moves when the code under test 'runs' (``advance``)."""

    def __init__(self) -> None:
        self.now = 1_000_000_000
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now

    def advance(self, ns: int) -> None:
        self.now += int(ns)


def _scripted(durations_ns):
    """A fake clock and a fn whose k-th call takes durations_ns[k] on it; fn records its call count."""
    clock = FakeClock()
    calls = {"n": 0}

    def fn():
        clock.advance(durations_ns[calls["n"]])
        calls["n"] += 1

    return clock, fn, calls


def test_timing_statistics_match_numpy_percentiles_on_a_fake_clock():
    rng = np.random.default_rng(7)
    durations = rng.integers(200_000, 9_000_000, size=37)  # ns, no warm-up
    clock, fn, _ = _scripted(list(durations))
    t = measure(fn, warmup=0, runs=37, clock=clock)
    ms = durations / 1e6
    assert t.runs == 37 and t.warmup == 0
    assert t.median_ms == pytest.approx(np.percentile(ms, 50), rel=1e-12)
    assert t.p10_ms == pytest.approx(np.percentile(ms, 10), rel=1e-12)
    assert t.p90_ms == pytest.approx(np.percentile(ms, 90), rel=1e-12)
    assert t.mean_ms == pytest.approx(ms.sum() / ms.size, rel=1e-12)
    assert t.std_ms == pytest.approx(math.sqrt(((ms - ms.sum() / ms.size) ** 2).sum() / ms.size), rel=1e-12)
    assert t.min_ms == pytest.approx(ms.min()) and t.max_ms == pytest.approx(ms.max())
    assert list(t.samples_ms) == pytest.approx(list(ms))


def test_percentiles_interpolate_linearly_between_order_statistics():
    # Written out: sorted s = 1..10 ms; the q-th percentile is s_j + (h - j)(s_{j+1} - s_j), h = 9q/100.
    t = Timing.from_samples_ms([7, 3, 1, 10, 2, 9, 4, 8, 6, 5])
    assert t.p10_ms == pytest.approx(1 + 0.9 * 1)
    assert t.median_ms == pytest.approx(5.5)
    assert t.p90_ms == pytest.approx(9 + 0.1 * 1)


def test_warmup_calls_are_made_counted_and_kept_out_of_the_sample():
    # Call k takes (k + 1) ms: with 3 warm-up calls the timed ones must be 4..10 ms.
    clock, fn, calls = _scripted([(k + 1) * 1_000_000 for k in range(10)])
    t = measure(fn, warmup=3, runs=7, clock=clock)
    assert calls["n"] == 10
    assert t.warmup == 3 and t.runs == 7
    assert list(t.samples_ms) == pytest.approx([4, 5, 6, 7, 8, 9, 10])
    assert clock.reads == 2 * 7  # warm-up calls are not timed at all
    assert t.min_ms == pytest.approx(4)


def test_min_seconds_times_until_the_budget_is_spent():
    clock, fn, calls = _scripted([10_000_000] * 100)  # 10 ms a call
    t = measure(fn, warmup=2, min_seconds=0.095, clock=clock)
    assert t.runs == 10 and calls["n"] == 12  # 10 x 10 ms >= 95 ms
    clock, fn, _ = _scripted([10_000_000] * 100)
    assert measure(fn, warmup=0, runs=20, min_seconds=0.05, clock=clock).runs == 20  # runs is a floor


def test_default_is_fifty_runs_and_one_run_has_zero_spread():
    clock, fn, _ = _scripted([1_000] * 60)
    assert measure(fn, warmup=0, clock=clock).runs == 50
    one = Timing.from_samples_ms([2.5], warmup=1)
    assert one.std_ms == 0.0 and one.median_ms == one.p10_ms == one.p90_ms == 2.5


@pytest.mark.parametrize("kwargs", [{"warmup": -1}, {"runs": 0}, {"min_seconds": 0.0}])
def test_bad_counts_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        measure(lambda: None, **kwargs)


def test_an_empty_or_negative_sample_is_refused():
    with pytest.raises(UsageError):
        Timing.from_samples_ms([])
    with pytest.raises(UsageError):
        Timing.from_samples_ms([1.0, -0.5])


def test_time_once_returns_milliseconds_and_the_result():
    clock = FakeClock()

    def fn():
        clock.advance(2_500_000)
        return "done"

    ms, out = time_once(fn, clock=clock)
    assert ms == pytest.approx(2.5) and out == "done"


def test_timing_json_has_units_in_field_names():
    d = Timing.from_samples_ms([1.0, 2.0, 3.0], warmup=4).to_dict()
    assert set(d) == {
        "median_ms",
        "p10_ms",
        "p90_ms",
        "mean_ms",
        "std_ms",
        "min_ms",
        "max_ms",
        "runs",
        "warmup",
        "samples_ms",
    }
    assert "samples_ms" not in Timing.from_samples_ms([1.0]).to_dict(samples=False)
    json.dumps(d)


# ====================================================================================== result schema
from bvit_edge.runtime.bench import (
    SCHEMA_VERSION,
    BenchResult,
    SideResult,
    artifact_sizes,
    bench,
    compile_seconds,
    git_revision,
    is_emulated_board,
)


def _side(role, median_samples):
    return SideResult(
        role=role,
        runtime="tvm",
        path=f"/x/{role}",
        input_shape=[1, 3, 16, 16],
        output_shape=[1, 10],
        compile_s=None,
        load_ms=1.0,
        first_run_ms=2.0,
        steady=Timing.from_samples_ms(median_samples, 5),
        timer="time.perf_counter_ns",
    )


def _result(teacher=True):
    return BenchResult(
        date_utc="2026-01-01T00:00:00Z",
        git_revision="unknown",
        versions={"tvm": "0"},
        seed=0,
        batch_size=1,
        target={"name": "host"},
        timing_kind="host",
        emulated=False,
        rpc=None,
        threads=1,
        affinity=[0],
        host={},
        input={},
        student=_side("student", [1.0, 2.0, 3.0]),
        teacher=_side("teacher", [7.0, 8.0, 9.0]) if teacher else None,
        sizes={},
    )


def test_report_json_schema_fields(tmp_path):
    d = _result().to_dict()
    for key in (
        "schema_version",
        "kind",
        "date_utc",
        "git_revision",
        "versions",
        "seed",
        "batch_size",
        "target",
        "timing_kind",
        "emulated",
        "threads",
        "affinity",
        "student",
        "teacher",
        "sizes",
        "ratio_teacher_over_student_median",
        "notes",
    ):
        assert key in d, key
    assert d["schema_version"] == SCHEMA_VERSION == 1
    for side in ("student", "teacher"):
        for key in ("compile_s", "load_ms", "first_run_ms", "steady", "runtime", "timer", "input_shape"):
            assert key in d[side], (side, key)
    assert d["ratio_teacher_over_student_median"] == pytest.approx(8.0 / 2.0)
    out = _result().save(tmp_path / "bench.json")
    assert json.loads(out.read_text()) == json.loads(json.dumps(d))
    assert _result(teacher=False).to_dict()["ratio_teacher_over_student_median"] is None


def test_compile_time_and_sizes_are_read_from_the_artifact(tmp_path):
    (tmp_path / "lib.so").write_bytes(b"x" * 1234)
    (tmp_path / "params.bin").write_bytes(b"y" * 100)
    sizes = artifact_sizes(tmp_path, {"lib": "lib.so", "params": {"file": "params.bin"}})
    assert sizes == {"lib_bytes": 1234, "params_bytes": 100, "params_storage": "file", "total_bytes": 1334}
    assert artifact_sizes(tmp_path, {"params": {"storage": "embedded"}})["total_bytes"] == 1234
    assert compile_seconds({"compile_s": 12.5}) == 12.5
    assert compile_seconds({"params": {}}) is None


def test_git_revision_is_a_hash_or_unknown():
    rev = git_revision()
    assert rev == "unknown" or re.fullmatch(r"[0-9a-f]{40}", rev)


def test_the_emulated_board_is_recognised_by_its_address(monkeypatch):
    from bvit_edge.targets import board

    info = board.BoardInfo(arch="aarch64", root=Path("/nowhere"), built=True, running=True, port=9099, pid=1)
    monkeypatch.setattr(board, "status", lambda arch="aarch64", cache_dir=None: info)
    assert is_emulated_board("127.0.0.1:9099", "aarch64")
    assert not is_emulated_board("127.0.0.1:9100", "aarch64")
    assert not is_emulated_board("192.168.1.20:9099", "aarch64")
    assert not is_emulated_board(None, "aarch64")


# ====================================================================================== bad input
def _fake_artifact(folder: Path, target="host", shape=(1, 3, 16, 16)) -> Path:
    """An artifact folder with a manifest (the library is never loaded: the checks come first)."""
    pytest.importorskip("tvm")
    from bvit_edge.targets import load_target

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lib.so").write_bytes(b"\x7fELF not really")
    manifest = {
        "schema_version": 1,
        "target": load_target(target).to_dict(),
        "model": {"file": "m.onnx", "sha256": "0" * 64},
        "input": {"name": "image", "shape": list(shape)},
        "normalization": {"mean": None, "std": None},
        "lib": "lib.so",
        "params": {"storage": "embedded"},
        "threads": 1,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _onnx_linear(path: Path, shape, classes=10, seed=0) -> Path:
    """A float 'teacher': image -> Flatten -> MatMul -> Add (standard ops, IR version 10)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(seed)
    k = int(np.prod(shape[1:]))
    w = (rng.standard_normal((k, classes)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    nodes = [
        oh.make_node("Flatten", ["image"], ["f"], axis=1),
        oh.make_node("MatMul", ["f", "w"], ["z"]),
        oh.make_node("Add", ["z", "b"], ["logits"]),
    ]
    g = oh.make_graph(
        nodes,
        "teacher",
        [oh.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], classes])],
        [nh.from_array(w, "w"), nh.from_array(b, "b")],
    )
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(path))
    return path


def _onnx_binary(path: Path, shape, classes=10, seed=1) -> Path:
    """A binary 'student': image -> Flatten -> bvit_edge BinaryLinear (signed, packed weights)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    from bvit_edge.packing import pack_bits

    rng = np.random.default_rng(seed)
    k = int(np.prod(shape[1:]))
    w = rng.standard_normal((classes, k))
    inits = [
        nh.from_array(np.full(k, -0.5, np.float32), "shift"),
        nh.from_array(np.array(0.1, np.float32), "alpha"),
        nh.from_array(pack_bits(w < 0), "w_bits"),
        nh.from_array(np.full(classes, 0.02, np.float32), "w_scale"),
        nh.from_array(np.zeros(classes, np.float32), "bias"),
    ]
    nodes = [
        oh.make_node("Flatten", ["image"], ["f"], axis=1),
        oh.make_node(
            "BinaryLinear",
            ["f", "shift", "alpha", "w_bits", "w_scale", "bias"],
            ["logits"],
            domain="bvit_edge",
            mode="signed",
            in_features=k,
        ),
    ]
    g = oh.make_graph(
        nodes,
        "student",
        [oh.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], classes])],
        inits,
    )
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("bvit_edge", 1)], ir_version=10)
    onnx.save(model, str(path))
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_artifact_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist") as e:
        bench(tmp_path / "nope")
    assert e.value.exit_code == 2


def test_a_folder_without_a_manifest_is_a_usage_error(tmp_path):
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "lib.so").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"manifest\.json"):
        bench(tmp_path / "art")


def test_a_teacher_of_another_input_shape_is_a_usage_error(tmp_path):
    art = _fake_artifact(tmp_path / "art", shape=(1, 3, 16, 16))
    teacher = _onnx_linear(tmp_path / "t.onnx", ("batch", 3, 32, 32))
    with pytest.raises(UsageError, match=r"takes input \['batch', 3, 32, 32\] but the student takes \[1, 3, 16, 16\]"):
        bench(art, teacher_onnx=teacher)
    t_art = _fake_artifact(tmp_path / "t_art", shape=(1, 3, 32, 32))
    with pytest.raises(UsageError, match="same image"):
        bench(art, teacher_artifact=t_art)


def test_an_artifact_for_another_architecture_is_refused_locally(tmp_path):
    art = _fake_artifact(tmp_path / "art", target="rpi4-aarch64")
    with pytest.raises(UsageError, match="rpc="):
        bench(art)


def test_an_artifact_for_another_target_than_asked_is_refused(tmp_path):
    art = _fake_artifact(tmp_path / "art", target="host")
    with pytest.raises(UsageError, match="Recompile"):
        bench(art, target="rpi4-aarch64")


def test_data_of_the_wrong_shape_is_a_usage_error(tmp_path):
    art = _fake_artifact(tmp_path / "art")
    with pytest.raises(UsageError, match="does not fit"):
        bench(art, data=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match=r"\.npy"):
        bench(art, data=tmp_path / "missing.npy")


def test_an_unreachable_board_is_a_toolchain_error(tmp_path):
    art = _fake_artifact(tmp_path / "art")
    t0 = time.monotonic()
    with pytest.raises(ToolchainError) as e:
        bench(art, rpc=f"127.0.0.1:{_closed_port()}", rpc_timeout_s=2.0)
    assert e.value.exit_code == 4 and time.monotonic() - t0 < 30


def test_bad_rpc_arguments_are_usage_errors(tmp_path):
    art = _fake_artifact(tmp_path / "art")
    with pytest.raises(UsageError, match="HOST:PORT"):
        bench(art, rpc="no-port-here")
    teacher = _onnx_linear(tmp_path / "t.onnx", (1, 3, 16, 16))
    with pytest.raises(UsageError, match="teacher_artifact"):
        bench(art, teacher_onnx=teacher, rpc="127.0.0.1:1")


# ====================================================================================== end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A compiled binary student and a float teacher (.onnx and compiled), hand-built, 16x16 images."""
    pytest.importorskip("tvm")
    from bvit_edge.runtime.compile import compile_model

    root = tmp_path_factory.mktemp("bench_tiny")
    shape = (1, 3, 16, 16)
    s_onnx = _onnx_binary(root / "student.onnx", shape)
    t_onnx = _onnx_linear(root / "teacher.onnx", ("batch", 3, 16, 16))
    return {
        "student_onnx": s_onnx,
        "teacher_onnx": t_onnx,
        "student": compile_model(s_onnx, "host", root / "student_art"),
        "teacher": compile_model(t_onnx, "host", root / "teacher_art"),
    }


def _check_side(side: dict, warmup: int, runs: int) -> None:
    st = side["steady"]
    assert st["runs"] == runs and len(st["samples_ms"]) == runs and st["warmup"] == warmup
    assert 0 < st["min_ms"] <= st["p10_ms"] <= st["median_ms"] <= st["p90_ms"] <= st["max_ms"]
    assert st["median_ms"] == pytest.approx(float(np.percentile(st["samples_ms"], 50)))
    assert side["load_ms"] > 0 and side["first_run_ms"] > 0


def test_local_bench_of_a_compiled_student_against_an_onnx_teacher(tiny, tmp_path):
    before = os.sched_getaffinity(0)
    r = bench(
        tiny["student"],
        teacher_onnx=tiny["teacher_onnx"],
        threads=1,
        warmup=2,
        runs=7,
        seed=3,
        student_onnx=tiny["student_onnx"],
        rounds=3,
    )
    d = json.loads(json.dumps(r.to_dict()))
    assert os.sched_getaffinity(0) == before  # TVM's pinning of this thread was undone
    assert d["timing_kind"] == "host" and d["emulated"] is False and d["rpc"] is None
    assert d["threads"] == 1 and d["affinity"] == sorted(before) and d["seed"] == 3 and d["batch_size"] == 1
    assert d["target"]["name"] == "host"
    assert d["protocol"] == {"order": "alternating_blocks", "rounds": 3}
    assert d["student"]["runtime"] == "tvm" and d["teacher"]["runtime"] == "onnxruntime"
    for side in ("student", "teacher", "teacher_int8"):
        _check_side(d[side], 2 * 3, 7)  # 2 warm-up calls before each of the 3 blocks
    assert d["student"]["output_shape"] == d["teacher"]["output_shape"] == d["teacher_int8"]["output_shape"] == [1, 10]
    assert d["ratio_teacher_over_student_median"] == pytest.approx(
        d["teacher"]["steady"]["median_ms"] / d["student"]["steady"]["median_ms"]
    )
    # the int8 teacher: onnxruntime's quantize_dynamic of the teacher, made for the run, measured beside it
    assert d["teacher_int8"]["runtime"] == "onnxruntime"
    assert d["int8_teacher"]["method"] == "onnxruntime.quantization.quantize_dynamic"
    assert d["int8_teacher"]["integer_nodes"] >= 1 and d["int8_teacher"]["quantize_s"] > 0
    assert d["ratio_teacher_int8_over_student_median"] == pytest.approx(
        d["teacher_int8"]["steady"]["median_ms"] / d["student"]["steady"]["median_ms"]
    )
    assert d["sizes"]["teacher_int8"]["weights"]["weights_8bit"] >= 768 * 10
    assert d["sizes"]["teacher_int8"]["onnx_bytes"] < d["sizes"]["teacher"]["onnx_bytes"]
    sizes = d["sizes"]
    lib = Path(tiny["student"]) / "lib.so"
    assert sizes["student"]["artifact"]["lib_bytes"] == lib.stat().st_size
    params = Path(tiny["student"]) / "params.npz"
    assert sizes["student"]["artifact"]["params_storage"] == "file"
    assert sizes["student"]["artifact"]["params_bytes"] == params.stat().st_size > 10 * 768 // 8
    assert sizes["student"]["artifact"]["total_bytes"] == lib.stat().st_size + params.stat().st_size
    assert sizes["teacher"]["onnx_bytes"] == Path(tiny["teacher_onnx"]).stat().st_size
    assert sizes["student"]["weights"]["weights_1bit"] == 10 * 768
    assert sizes["teacher"]["weights"]["weights_32bit"] == 768 * 10 + 10
    for key in ("tvm", "onnxruntime", "numpy", "bvit_edge"):
        assert d["versions"][key]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["date_utc"])
    assert d["student"]["compile_s"] is None or d["student"]["compile_s"] > 0


def test_alternating_blocks_interleave_the_models_and_split_the_runs():
    from bvit_edge.runtime.bench import measure_alternating

    order: list[str] = []
    t = measure_alternating([lambda: order.append("s"), lambda: order.append("t")], warmup=1, runs=5, rounds=2)
    # round 1: s warm-up + 3 timed, t warm-up + 3 timed; round 2: s warm-up + 2, t warm-up + 2
    assert "".join(order) == "ssss" + "tttt" + "sss" + "ttt"
    assert [x.runs for x in t] == [5, 5] and [x.warmup for x in t] == [2, 2]
    one = measure_alternating([lambda: None], warmup=0, runs=2, rounds=9)
    assert one[0].runs == 2 and one[0].warmup == 0


def test_a_given_int8_teacher_is_measured_and_none_without_a_teacher(tiny, tmp_path):
    from bvit_edge.export.int8_teacher import quantize_teacher

    i8 = quantize_teacher(tiny["teacher_onnx"], tmp_path / "t.int8.onnx")
    assert i8.bytes == (tmp_path / "t.int8.onnx").stat().st_size < Path(tiny["teacher_onnx"]).stat().st_size
    d = bench(
        tiny["student"], teacher_onnx=tiny["teacher_onnx"], teacher_int8_onnx=i8.path, threads=1, warmup=0, runs=2
    ).to_dict()
    assert d["int8_teacher"]["made_by"] == "given" and d["teacher_int8"]["path"] == i8.path
    off = bench(
        tiny["student"], teacher_onnx=tiny["teacher_onnx"], int8_teacher=False, threads=1, warmup=0, runs=1
    ).to_dict()
    assert off["teacher_int8"] is None and off["ratio_teacher_int8_over_student_median"] is None
    alone = bench(tiny["student"], threads=1, warmup=0, runs=1).to_dict()
    assert alone["teacher_int8"] is None and alone["int8_teacher"] is None


def test_the_same_seed_gives_the_same_input_and_data_replaces_it(tiny):
    a = bench(tiny["student"], threads=1, warmup=0, runs=1, seed=5).to_dict()
    assert a["teacher"] is None and a["ratio_teacher_over_student_median"] is None
    assert a["input"] == {"source": "random_uniform_0_1", "seed": 5, "shape": [1, 3, 16, 16], "normalized": False}
    b = bench(tiny["student"], threads=1, warmup=0, runs=1, data=np.zeros((4, 3, 16, 16), np.float32)).to_dict()
    assert b["input"]["source"] == "array" and b["input"]["shape"] == [1, 3, 16, 16]


def test_images_can_come_from_a_npy_file(tiny, tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32))
    d = bench(tiny["student"], threads=1, warmup=0, runs=2, data=path).to_dict()
    assert d["input"]["source"] == str(path) and d["input"]["shape"] == [1, 3, 16, 16]


@pytest.fixture()
def host_rpc_server():
    """A TVM RPC server on this host (a 'board' of the host's architecture), stopped by its PID."""
    pytest.importorskip("tvm")
    port = _closed_port()
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
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                pytest.fail("the TVM RPC server exited at start")
            time.sleep(0.2)
        else:
            pytest.fail("the TVM RPC server did not listen within 60 s")
        yield f"127.0.0.1:{port}"
    finally:  # the whole process group: the server runs in a popen worker that outlives a killed parent
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def test_rpc_bench_runs_both_artifacts_on_the_board_with_time_evaluator(tiny, host_rpc_server):
    r = bench(
        tiny["student"],
        teacher_artifact=tiny["teacher"],
        teacher_onnx=tiny["teacher_onnx"],
        rpc=host_rpc_server,
        threads=1,
        warmup=2,
        runs=5,
    )
    d = r.to_dict()
    assert d["timing_kind"] == "board" and d["emulated"] is False and d["rpc"] == host_rpc_server
    assert d["affinity"] is None  # the board's affinity is not known from here
    for side in ("student", "teacher"):
        assert d[side]["runtime"] == "tvm" and d[side]["timer"] == "tvm.time_evaluator"
        _check_side(d[side], 2 + 1, 5)  # the evaluator's own untimed call is counted
    # Distinct models really ran (not the student's library twice): the teacher's model hash is its own.
    assert d["student"]["model_sha256"] != d["teacher"]["model_sha256"]
    assert d["sizes"]["teacher_measured_bytes"] == d["sizes"]["teacher"]["artifact"]["total_bytes"]
    forced = bench(tiny["student"], rpc=host_rpc_server, threads=1, warmup=0, runs=2, emulated=True).to_dict()
    assert forced["timing_kind"] == "emulated" and forced["emulated"] is True
    assert any("Emulated" in n for n in forced["notes"])


@pytest.mark.slow
def test_bench_on_the_emulated_board_is_labelled_emulated(tmp_path):
    """Cross-compiled for rpi4-aarch64 and run under qemu: the address of bvit-edge's emulated board makes the
    timings "emulated" (never comparable with a board's)."""
    import shutil

    pytest.importorskip("tvm")
    from bvit_edge.runtime.compile import compile_model
    from bvit_edge.targets import board

    for tool in ("qemu-aarch64", "debootstrap", "aarch64-linux-gnu-gcc"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make setup installs it)")
    shape = (1, 3, 16, 16)
    s_art = compile_model(_onnx_binary(tmp_path / "s.onnx", shape), "rpi4-aarch64", tmp_path / "s_art")
    t_onnx = _onnx_linear(tmp_path / "t.onnx", shape)
    t_art = compile_model(t_onnx, "rpi4-aarch64", tmp_path / "t_art")
    with pytest.raises(UsageError, match="rpc="):  # an aarch64 artifact does not run on this host
        bench(s_art, teacher_onnx=t_onnx)
    was_running = board.status("aarch64").running
    board.build("aarch64")
    info = board.start("aarch64")
    try:
        d = bench(
            s_art,
            teacher_artifact=t_art,
            rpc=f"127.0.0.1:{info.port}",
            threads=1,
            warmup=1,
            runs=3,
            target="rpi4-aarch64",
            rpc_timeout_s=60,
        ).to_dict()
    finally:
        if not was_running:
            board.stop("aarch64")
    assert d["timing_kind"] == "emulated" and d["emulated"] is True
    assert d["target"]["name"] == "rpi4-aarch64" and d["target"]["arch"] == "aarch64"
    _check_side(d["student"], 1 + 1, 3)
    _check_side(d["teacher"], 1 + 1, 3)
    assert d["student"]["output_shape"] == d["teacher"]["output_shape"] == [1, 10]
    print(
        f"\nemulated: student {d['student']['steady']['median_ms']:.3f} ms, teacher "
        f"{d['teacher']['steady']['median_ms']:.3f} ms (emulated, not a board timing)"
    )


# ====================================================================================== benchmark models
def test_benchmark_models_have_every_parameter_non_zero():
    torch = pytest.importorskip("torch")
    from bvit_edge.bench_models import fill_zero_parameters, random_frozen_student, zero_parameters
    from bvit_edge.models.registry import create_model

    fresh = create_model("gsb_test_patch4_16")
    assert "blocks.0.attn.move_att.bias" in zero_parameters(fresh)  # B starts at exactly zero
    m = random_frozen_student("gsb_test_patch4_16", seed=1)
    assert zero_parameters(m) == []
    b = dict(m.named_buffers())["blocks.0.attn.att_bias"]
    assert 0 < float(b.abs().max()) < 0.1  # small: a fraction of an attention probability
    t = torch.zeros(3, 4)
    holder = torch.nn.Module()
    holder.register_buffer("x", t)
    assert fill_zero_parameters(holder) == 12 and not bool((holder.x == 0).any())


# ====================================================================================== real models (slow)
@pytest.mark.slow
def test_bench_of_a_frozen_gsb_student_against_its_deit_teacher(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("tvm")
    from bvit_edge.export import export_onnx, export_teacher_onnx
    from bvit_edge.models.registry import create_model
    from bvit_edge.runtime.compile import compile_model

    torch.manual_seed(0)
    student = create_model("gsb_test_patch4_16")
    student.train()
    with torch.no_grad():
        student(torch.rand(2, 3, 16, 16))  # initialises the activation scales
    student.eval().freeze()
    export_onnx(student, tmp_path / "student.onnx")
    export_teacher_onnx(create_model("deit_test_patch4_16").eval(), tmp_path / "teacher.onnx")
    art = compile_model(tmp_path / "student.onnx", "host", tmp_path / "student_art")
    d = bench(
        art,
        teacher_onnx=tmp_path / "teacher.onnx",
        threads=1,
        warmup=2,
        runs=5,
        student_onnx=tmp_path / "student.onnx",
        rounds=2,
    ).to_dict()
    _check_side(d["student"], 2 * 2, 5)  # 2 warm-up calls before each of the 2 alternating blocks
    _check_side(d["teacher"], 2 * 2, 5)
    assert d["student"]["output_shape"] == d["teacher"]["output_shape"]
    assert d["sizes"]["student"]["weights"]["weights_1bit"] > 0
    assert d["ratio_teacher_over_student_median"] > 0


def test_errors_are_bvit_edge_errors_with_one_paragraph(tmp_path):
    with pytest.raises(BvitEdgeError) as e:
        bench(tmp_path / "missing")
    assert "\n" not in str(e.value)


def test_the_result_converts_to_a_valid_report_document(tiny):
    from bvit_edge.report.schema import validate_report

    r = bench(
        tiny["student"],
        teacher_onnx=tiny["teacher_onnx"],
        threads=1,
        warmup=1,
        runs=4,
        student_onnx=tiny["student_onnx"],
    )
    doc = validate_report(json.loads(json.dumps(r.to_report(title="tiny"))))
    assert [m["role"] for m in doc["models"]] == ["student", "teacher", "baseline"]
    assert doc["models"][2]["size"]["weights_8bit_count"] >= 768 * 10
    assert doc["models"][0]["size"]["weights_1bit_count"] == 10 * 768
    assert doc["models"][0]["size"]["weights_1bit_bytes"] == 10 * 768 // 8
    assert doc["models"][1]["size"]["artifact_bytes"] == Path(tiny["teacher_onnx"]).stat().st_size
    lat = {e["model"]: e for e in doc["latency"]}
    student = lat[doc["models"][0]["name"]]
    assert student["median_ms"] == r.student.steady.median_ms and student["warmup_runs"] == 1 * 4  # 4 blocks
    assert student["runs"] == 4 and student["threads"] == 1 and student["emulated"] is False
