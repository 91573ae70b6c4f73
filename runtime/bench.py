"""The benchmark protocol behind ``bvit-edge bench``: a compiled student against its full-precision teacher.

``bench(student_artifact, teacher_onnx=..., target=..., rpc=...)`` measures both models in the same process
run, on the same target, at batch 1, and returns a :class:`BenchResult` (``to_dict()`` is the JSON report,
``save(path)`` writes it atomically, ``to_report()`` gives the bvit_edge.report document that
``render_report`` draws). The protocol (docs/benchmarks.md):

* Where things run. Locally (``rpc=None``) the student runs as a TVM artifact (bvit_edge.runtime.artifact)
  and the teacher in onnxruntime from its .onnx (bvit_edge.runtime.ort); a teacher given only as an artifact
  runs in TVM. Over RPC (a session, ``"host:port"`` or ``(host, port)``) both run on the board as TVM
  artifacts, so the teacher must be an artifact compiled for the same target (``teacher_artifact``).
* What is timed, separately: compile time (read from the artifact manifest when the compiler recorded it,
  else ``null``), load time (locally: load the library + read params.npz + copy the weights to the device +
  create the VM, or create the onnxruntime session; over RPC: upload + remote load + weights sent to the
  board + VM creation), the first run (one call, timed on its own), then the steady state: ``warmup`` calls
  discarded and counted, then ``runs`` timed calls.
* Beside the float teacher stands what a user would pick instead: the teacher quantized by onnxruntime
  (``quantize_dynamic``, int8 weights; bvit_edge.export.int8_teacher). Locally, given ``teacher_onnx``, it
  is made in a temporary folder (``int8_teacher=True``, the default; its quantization time is recorded) or
  read from ``teacher_int8_onnx``, and measured like the teacher, in onnxruntime (role "teacher_int8").
* How. Locally all models are loaded first, then measured in alternating blocks: ``rounds`` rounds, and in
  each round every model in turn makes ``warmup`` untimed calls and then its share of the ``runs`` timed
  calls (drift on a shared machine hits every model alike, and each block starts after its own warm-up: a
  runtime's threads keep spinning for a while after its last call). Each timed call is timed on its own
  with ``time.perf_counter_ns`` (bvit_edge.runtime.timing.measure); ``warmup`` in the result counts every
  discarded call (warmup x rounds). The timed call is the model alone on a prepared input (the TVM VM's
  ``main`` on a device tensor, the weights already on the device passed after it; ``InferenceSession.run`` on
  a numpy feed), preprocessing excluded for both. Over RPC the board times itself with TVM's
  ``time_evaluator`` (number=1, repeat=warmup+runs on the stateful ``invoke_stateful("main")``, its inputs
  set once by ``set_input("main", image, *params)``): the first ``warmup`` repeats are discarded, and the
  evaluator makes one more untimed call of its own, which is counted in ``warmup`` (so over RPC ``warmup``
  reads requested + 1). Host-side RPC times (load, first run) include the network round trips.
* The input is one image, seeded uniform [0, 1) noise of the artifact's input shape (``seed``), or the first
  image of ``data`` (an array or a .npy file), normalised with the artifact's mean/std; the teacher gets
  the very same normalised tensor.
* Threads: ``threads`` (default: the artifact's recorded thread count, capped to the CPUs this process may
  use) for both TVM's thread pool and onnxruntime's intra-op pool; the affinity (os.sched_getaffinity, taken
  before anything runs) is recorded for local runs. TVM's thread pool pins the calling thread to one core
  when configured; the affinity is put back after each model so the teacher's onnxruntime threads get the
  same CPUs the student had.
* Labels: ``timing_kind`` is "host" (local), "board" (over RPC) or "emulated" (the qemu board of
  bvit_edge.targets.board, detected by its address, or ``emulated=True``); ``emulated`` says the same as a
  bool. Emulated timings prove the ARM code runs; they are never comparable with board timings.
* The ratios are teacher median / student median and int8 teacher median / student median (> 1: the
  student is faster).

The jobs live in their own modules: what bench is given (bvit_edge.runtime.bench_inputs), the board over RPC
(bvit_edge.runtime.board_session), loading and first run (bvit_edge.runtime.bench_models), alternating blocks
(bvit_edge.runtime.alternating_blocks), sizes and the int8 teacher (bvit_edge.runtime.bench_sizes), the record
and its report (bvit_edge.runtime.bench_record, bvit_edge.runtime.bench_result); this module runs the protocol.

Bad input is a one-paragraph error: a missing artifact folder or manifest, a teacher whose input shape
differs from the student's, an artifact for another target or architecture (UsageError, exit 2); an
unreachable board (ToolchainError, exit 4).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bvit_edge.errors import MissingDependencyError, UsageError
from bvit_edge.provenance import git_revision  # re-exported: the report's environment.git_revision
from bvit_edge.runtime.alternating_blocks import blocks, measure_alternating
from bvit_edge.runtime.bench_inputs import (
    artifact,
    check_runs_here,
    check_shape,
    check_student_onnx,
    check_target,
    check_teacher,
    onnx_input_shape,
)
from bvit_edge.runtime.bench_models import LoadedModel, load_ort, load_tvm
from bvit_edge.runtime.bench_record import (
    SCHEMA_VERSION,
    SideResult,
    affinity,
    artifact_sizes,
    compile_seconds,
    host_facts,
    input_image,
    measured_sizes,
    normalized,
    now_utc,
    resolve_threads,
    restored_affinity,
)
from bvit_edge.runtime.bench_result import BenchResult, is_bench_file, report_of
from bvit_edge.runtime.bench_sizes import add_int8_teacher, quantized_teacher, weight_counts
from bvit_edge.runtime.board_session import is_emulated_board, rpc_session
from bvit_edge.runtime.tool_versions import module_versions, run_versions

__all__ = [
    "SCHEMA_VERSION",
    "BenchResult",
    "SideResult",
    "artifact_sizes",
    "bench",
    "compile_seconds",
    "git_revision",
    "is_bench_file",
    "is_emulated_board",
    "measure_alternating",
    "report_of",
]


def bench(
    student_artifact: str | os.PathLike[str],
    teacher_onnx: str | os.PathLike[str] | None = None,
    teacher_artifact: str | os.PathLike[str] | None = None,
    target: Any = None,
    threads: int | None = None,
    rpc: Any = None,
    warmup: int = 5,
    runs: int = 50,
    seed: int = 0,
    data: Any = None,
    emulated: bool | None = None,
    rpc_timeout_s: float = 10.0,
    student_onnx: str | os.PathLike[str] | None = None,
    teacher_int8_onnx: str | os.PathLike[str] | None = None,
    int8_teacher: bool = True,
    rounds: int = 5,
) -> BenchResult:
    """Measure ``student_artifact`` against its teacher on one target (see the module docstring).

    ``teacher_onnx``: the teacher's .onnx (run in onnxruntime locally; its size is reported either way).
    ``teacher_artifact``: the teacher compiled for the same target (needed over RPC). Without a teacher only
    the student is measured and the ratio is None. ``target``: a preset name / dict / spec the artifacts must
    have been compiled for (default: the student's own). ``emulated``: force the label when the RPC address
    alone cannot tell (e.g. a session handed in). ``student_onnx``: the .onnx the student was compiled from,
    for its weight counts (1/8/32-bit) in ``sizes``; it must be the file the manifest's sha256 names.
    ``teacher_int8_onnx``: the teacher quantized by onnxruntime (bvit_edge.export.int8_teacher); without it,
    ``int8_teacher=True`` quantizes ``teacher_onnx`` into a temporary folder (locally only: onnxruntime runs
    it). ``rounds``: alternating blocks (locally).
    """
    if int(warmup) < 0 or int(runs) < 1 or int(rounds) < 1:
        raise UsageError(
            f"warmup must be >= 0, runs >= 1 and rounds >= 1 (got warmup={warmup}, runs={runs}, rounds={rounds})."
        )
    plan = _Plan.checked(student_artifact, teacher_onnx, teacher_artifact, target, rpc, student_onnx, teacher_int8_onnx)
    cpus = affinity() if plan.local else None  # before TVM's pool pins this thread
    n_threads = resolve_threads(threads, plan.s_man, plan.local)
    x_raw, input_info = input_image(data, plan.s_shape, seed)
    x = normalized(x_raw, plan.s_man, input_info)
    session, address = (None, None) if plan.local else rpc_session(rpc, rpc_timeout_s)
    kind = _timing_kind(plan.local, emulated, address, plan.built.get("arch"))
    notes = _where_notes(kind, plan.local)
    with contextlib.ExitStack() as stack:
        i8_path, i8_info = _int8_teacher(plan, int8_teacher, stack)
        if not plan.local and i8_path is not None:
            notes.append("The int8 teacher runs in onnxruntime on this host: over RPC it was not measured.")
        loaded = _load_models(plan, x, session, n_threads, i8_path, notes)
        sides = _time_models(loaded, plan.local, warmup, runs, rounds)
    student, teacher, teacher_i8 = sides["student"], sides.get("teacher"), sides.get("teacher_int8")
    notes += _result_notes(student, teacher, plan.s_man)
    sizes = measured_sizes(
        plan.s_folder, plan.s_man, plan.s_onnx, plan.t_onnx, plan.t_folder, plan.t_man, teacher, weight_counts
    )
    if i8_info is not None and teacher_i8 is not None:
        add_int8_teacher(sizes, i8_info, i8_path)
    return BenchResult(
        date_utc=now_utc(),
        git_revision=git_revision(),
        versions={**run_versions(), **module_versions(("tvm", "onnxruntime"))},
        seed=int(seed),
        batch_size=1,
        target={k: plan.built.get(k) for k in ("name", "arch", "family", "tvm_target", "word_bits")},
        timing_kind=kind,
        emulated=kind == "emulated",
        rpc=None if plan.local else (address or "session"),
        threads=n_threads,
        affinity=cpus,
        host=host_facts(),
        input=input_info,
        student=student,
        teacher=teacher,
        sizes=sizes,
        notes=notes,
        teacher_int8=teacher_i8,
        int8_teacher_info=i8_info if teacher_i8 is not None else None,
        rounds=len(blocks(runs, rounds)) if plan.local else 1,
    )


@dataclass
class _Plan:
    """What the bench runs, checked (bvit_edge.runtime.bench_inputs): the student artifact and its target and
    input shape, where it runs, and the teacher's forms."""

    s_folder: Path
    s_man: dict[str, Any]
    built: dict[str, Any]
    s_shape: list[int]
    local: bool
    s_onnx: Path | None
    t_onnx: Path | None
    t_folder: Path | None
    t_man: dict[str, Any] | None
    i8_path: Path | None

    @classmethod
    def checked(
        cls,
        student_artifact: Any,
        teacher_onnx: Any,
        teacher_artifact: Any,
        target: Any,
        rpc: Any,
        student_onnx: Any,
        teacher_int8_onnx: Any,
    ) -> _Plan:
        s_folder, s_man = artifact(student_artifact, "student")  # before importing TVM: bad paths fail at once
        try:
            import tvm  # noqa: F401
        except ImportError:
            raise MissingDependencyError("bench needs the TVM runtime: pip install 'apache-tvm==0.27.*'.") from None
        built = check_target(s_man, target, s_folder)
        s_shape = [int(d) for d in s_man["input"]["shape"]]
        local = rpc is None
        s_onnx = check_student_onnx(student_onnx, s_man, s_folder)
        t_onnx, t_folder, t_man = check_teacher(teacher_onnx, teacher_artifact, built, s_shape, local)
        if local:
            check_runs_here(s_man, s_folder)
        i8_path = Path(teacher_int8_onnx) if teacher_int8_onnx is not None else None
        if i8_path is not None:
            check_shape(str(i8_path), onnx_input_shape(i8_path), s_shape)
        return cls(s_folder, s_man, built, s_shape, local, s_onnx, t_onnx, t_folder, t_man, i8_path)


def _timing_kind(local: bool, emulated: bool | None, address: str | None, arch: str | None) -> str:
    """ "host" (local), "emulated" (the qemu board, or ``emulated=True``) or "board"."""
    if local:
        return "host"
    return "emulated" if (emulated if emulated is not None else is_emulated_board(address, arch)) else "board"


def _where_notes(kind: str, local: bool) -> list[str]:
    """The notes that say how to read times taken where this bench runs."""
    notes = []
    if kind == "emulated":
        notes.append(
            "Emulated timings (qemu user mode): they prove the code runs, not how fast a board is; "
            "never compare them with board timings."
        )
    if not local:
        notes.append(
            "Steady state timed on the board by tvm.time_evaluator; load and first-run times are taken "
            "on the host and include RPC transfers."
        )
    return notes


def _int8_teacher(
    plan: _Plan, int8_teacher: bool, stack: contextlib.ExitStack
) -> tuple[Path | None, dict[str, Any] | None]:
    """The int8 teacher's .onnx and how it was made: the given file, or (locally, with ``int8_teacher``) the
    teacher quantized into a temporary folder that ``stack`` removes."""
    if plan.i8_path is not None:
        return plan.i8_path, {"path": str(plan.i8_path), "bytes": plan.i8_path.stat().st_size, "made_by": "given"}
    if plan.local and int8_teacher and plan.t_onnx is not None:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bvit-edge-bench-")))
        return quantized_teacher(plan.t_onnx, folder)
    return None, None


def _load_models(
    plan: _Plan, x: Any, session: Any, threads: int | None, i8_path: Path | None, notes: list[str]
) -> list[LoadedModel]:
    """Every model loaded and run once: the student, then the teacher (onnxruntime locally, else its artifact)
    and, locally, the int8 teacher; this thread's CPU affinity put back after each."""
    loaded: list[LoadedModel] = []
    with restored_affinity():
        loaded.append(load_tvm(plan.s_folder, plan.s_man, "student", x, session, threads))
    with restored_affinity():
        if plan.local and plan.t_onnx is not None:
            loaded.append(load_ort(plan.t_onnx, "teacher", x, threads))
            if plan.t_folder is not None:
                notes.append(
                    "Locally the teacher runs in onnxruntime from its .onnx; the teacher artifact was not run."
                )
        elif plan.t_folder is not None and plan.t_man is not None:
            loaded.append(load_tvm(plan.t_folder, plan.t_man, "teacher", x, session, threads))
        if plan.local and i8_path is not None:
            loaded.append(load_ort(i8_path, "teacher_int8", x, threads))
    return loaded


def _time_models(loaded: list[LoadedModel], local: bool, warmup: int, runs: int, rounds: int) -> dict[str, SideResult]:
    """Role -> result: locally in alternating blocks timed here, over RPC by the board's time_evaluator."""
    if local:
        calls = [m.call for m in loaded if m.call is not None]
        timings = measure_alternating(calls, warmup, runs, rounds, around=restored_affinity)
        return {m.role: m.result(t, "time.perf_counter_ns") for m, t in zip(loaded, timings, strict=True)}
    return {m.role: m.result(m.evaluate(warmup, runs), "tvm.time_evaluator") for m in loaded if m.evaluate}


def _result_notes(student: SideResult, teacher: SideResult | None, s_man: dict[str, Any]) -> list[str]:
    notes = []
    if teacher is not None and teacher.output_shape != student.output_shape:
        notes.append(
            f"Teacher output {teacher.output_shape} and student output {student.output_shape} differ in "
            "shape: check that they are the same task."
        )
    if compile_seconds(s_man) is None:
        notes.append("The artifact manifest records no compile time (compile_s is null).")
    return notes
