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

Bad input is a one-paragraph error: a missing artifact folder or manifest, a teacher whose input shape
differs from the student's, an artifact for another target or architecture (UsageError, exit 2); an
unreachable board (ToolchainError, exit 4).
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.digest import sha256_file as _sha256
from bvit_edge.errors import BvitEdgeError, MissingDependencyError, ToolchainError, UsageError
from bvit_edge.provenance import git_revision  # re-exported: the report's environment.git_revision
from bvit_edge.runtime.artifact import read_manifest
from bvit_edge.runtime.bench_record import (  # noqa: F401 - the shared record, re-exported under its old names
    COMPILE_TIME_KEYS,
    KIND,
    SCHEMA_VERSION,
    TIMING_KINDS,
    BenchRecord,
    SideResult,
    artifact_sizes,
    compile_seconds,
    measured_sizes,
)
from bvit_edge.runtime.bench_record import (
    affinity as _affinity,
)
from bvit_edge.runtime.bench_record import (
    host_facts as _host_facts,
)
from bvit_edge.runtime.bench_record import (
    input_image as _input_image,
)
from bvit_edge.runtime.bench_record import (
    normalized as _normalized,
)
from bvit_edge.runtime.bench_record import (
    now_utc as _now_utc,
)
from bvit_edge.runtime.bench_record import (
    output_shape as _output_shape,
)
from bvit_edge.runtime.bench_record import (
    resolve_threads as _resolve_threads,
)
from bvit_edge.runtime.bench_record import (
    restored_affinity as _restored_affinity,
)
from bvit_edge.runtime.bench_record import (
    same_target as _same_target,
)
from bvit_edge.runtime.timing import Timing, measure, time_once

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
    "report_of",
]

# ----------------------------------------------------------------------------------------------------
# the result as a report


class BenchResult(BenchRecord):
    """One benchmark (:class:`~bvit_edge.runtime.bench_record.BenchRecord`: the JSON a board writes too), plus its
    report document."""

    def to_report(
        self,
        student_name: str | None = None,
        teacher_name: str | None = None,
        title: str | None = None,
        teacher_int8_name: str | None = None,
    ) -> dict[str, Any]:
        """This benchmark as a report document (bvit_edge.report schema "bvit-edge/report" v1) that
        ``bvit_edge.report.render_report`` draws: one model entry per side (with its size when the weight
        counts are known: 1-bit bytes = ceil(n/8), 8-bit = n, 32-bit = 4n) and one latency entry per side.
        The int8 teacher is the report's "baseline". Names default to the models' file stems."""
        sides = [
            ("student", self.student, student_name),
            ("teacher", self.teacher, teacher_name),
            ("teacher_int8", self.teacher_int8, teacher_int8_name),
        ]
        models: list[dict[str, Any]] = []
        latency: list[dict[str, Any]] = []
        for role, side, name in sides:
            if side is None:
                continue
            name = name or _model_name(side, role)
            if any(m["name"] == name for m in models):
                name = f"{name}-{role}"
            entry: dict[str, Any] = {"name": name, "role": "baseline" if role == "teacher_int8" else role}
            if role == "teacher_int8":
                entry["method"] = "fp, int8 by onnxruntime quantize_dynamic"
            size = _report_size((self.sizes or {}).get(role) or {}, side)
            if size:
                entry["size"] = size
            models.append(entry)
            st = side.steady
            latency.append(
                {
                    "model": name,
                    "target": str(self.target.get("name")),
                    "emulated": self.emulated,
                    "threads": self.threads if self.threads is not None else 0,
                    "batch": self.batch_size,
                    "warmup_runs": st.warmup,
                    "runs": st.runs,
                    "median_ms": st.median_ms,
                    "p10_ms": st.p10_ms,
                    "p90_ms": st.p90_ms,
                    "mean_ms": st.mean_ms,
                    "std_ms": st.std_ms,
                    "min_ms": st.min_ms,
                    "timing_kind": self.timing_kind,
                    "runtime": side.runtime,
                    "load_ms": side.load_ms,
                    "first_run_ms": side.first_run_ms,
                    "compile_s": side.compile_s,
                }
            )
        env: dict[str, Any] = {
            "git_revision": self.git_revision,
            "seed": self.seed,
            "timing_kind": self.timing_kind,
            "date_utc": self.date_utc,
            **self.versions,
        }
        if self.ratio is not None:
            env["ratio_teacher_over_student_median"] = self.ratio
        if self.ratio_int8 is not None:
            env["ratio_teacher_int8_over_student_median"] = self.ratio_int8
        doc: dict[str, Any] = {
            "schema": "bvit-edge/report",
            "schema_version": 1,
            "created_utc": self.date_utc,
            "environment": env,
            "models": models,
            "latency": latency,
        }
        if title:
            doc["title"] = title
        return doc


def _model_name(side: SideResult, role: str) -> str:
    stem = Path(side.path).stem if side.runtime == "onnxruntime" else Path(side.path).name
    return stem or role


def _report_size(sizes: dict[str, Any], side: SideResult) -> dict[str, Any]:
    """The report's size record of one side (bvit_edge.report.size_entry), empty when the weight counts are
    unknown; artifact_bytes is the file that was run (the .onnx in onnxruntime, else the artifact)."""
    counts = sizes.get("weights")
    if not counts:
        return {}
    from bvit_edge.report.size import size_entry

    on_disk: int | None
    if side.runtime == "onnxruntime" and "onnx_bytes" in sizes:
        on_disk = int(sizes["onnx_bytes"])
    else:
        on_disk = int(sizes["artifact"]["total_bytes"]) if "artifact" in sizes else None
    return size_entry(
        int(counts["weights_1bit"]),
        int(counts["weights_8bit"]),
        int(counts["weights_32bit"]),
        artifact_bytes=on_disk,
        weights_16bit=int(counts.get("weights_16bit", 0)),
    )


def report_of(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A report document from a file: a report (validated) or a bench JSON (``BenchResult.to_report()``, labelled
    with where it ran). DataError naming the file otherwise."""
    import json

    from bvit_edge.errors import DataError
    from bvit_edge.report.schema import validate_report

    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p} does not exist; give a report or bench JSON file.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{p} is not readable JSON ({exc}). Re-create it.") from None
    if not (isinstance(doc, dict) and doc.get("kind") == KIND):
        return validate_report(doc, source=str(p))
    try:
        result = BenchResult.from_dict(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{p} is not a complete bench result ({type(exc).__name__}: {exc}); re-run the bench that wrote it."
        ) from None
    return validate_report(result.to_report(), source=str(p))


def is_bench_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds a bench JSON (False for anything else, unreadable files included)."""
    import json

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("kind") == KIND


# ----------------------------------------------------------------------------------------------------
# facts about the run (the result and the shared parts of the protocol: bvit_edge.runtime.bench_record)


def _versions() -> dict[str, str]:
    import bvit_edge

    out = {
        "bvit_edge": getattr(bvit_edge, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for name in ("tvm", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


# ----------------------------------------------------------------------------------------------------
# inputs and checks


def _artifact(path: str | os.PathLike[str], role: str) -> tuple[Path, dict[str, Any]]:
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(
            f"The {role} artifact folder {folder} does not exist; compile one with "
            "`bvit-edge compile MODEL.onnx --target T --out FOLDER`."
        )
    return folder, read_manifest(folder)


def _spec_of(manifest: dict[str, Any]) -> Any:
    from bvit_edge.targets import load_target

    return load_target(manifest["target"])


def _check_target(manifest: dict[str, Any], target: Any, folder: Path) -> dict[str, Any]:
    """The target the run is for (the artifact's), refusing an artifact compiled for another one."""
    built = manifest["target"]
    if target is None:
        return built
    from bvit_edge.targets import load_target

    spec = load_target(target)
    wanted = spec.to_dict()
    if not _same_target(built, wanted):
        raise UsageError(
            f"{folder} was compiled for target {built.get('name')!r} ({built.get('arch')}, "
            f"{built.get('tvm_target')}), not for {spec.name!r} ({spec.arch}, {spec.tvm_target}). Recompile it "
            f"with `--target {spec.name}` or bench it on its own target."
        )
    return built


def _shape_fits(teacher_shape: list[Any], student_shape: list[int]) -> bool:
    """True when the teacher takes the student's input: equal dims, a symbolic batch allowed."""
    if len(teacher_shape) != len(student_shape):
        return False
    for i, (t, s) in enumerate(zip(teacher_shape, student_shape)):
        if isinstance(t, int) and t > 0:
            if t != s:
                return False
        elif i != 0:  # only the batch axis may be symbolic
            return False
    return True


def _shape_error(teacher: str, t_shape: list[Any], s_shape: list[int]) -> UsageError:
    return UsageError(
        f"The teacher {teacher} takes input {t_shape} but the student takes {s_shape}: they must see the same "
        "image. Export the teacher at the student's image size (and batch 1 or a dynamic batch), then bench "
        "again."
    )


# ----------------------------------------------------------------------------------------------------
# RPC


def _parse_address(rpc: Any) -> tuple[str, int]:
    if isinstance(rpc, (tuple, list)) and len(rpc) == 2:
        host, port = rpc
    elif isinstance(rpc, str) and ":" in rpc:
        host, _, port = rpc.rpartition(":")
    else:
        raise UsageError(f"rpc={rpc!r}: give an RPC session, 'HOST:PORT' or (host, port).")
    try:
        return str(host) or "127.0.0.1", int(port)
    except (TypeError, ValueError):
        raise UsageError(f"rpc={rpc!r}: the port must be an integer ('HOST:PORT').") from None


def _rpc_session(rpc: Any, timeout_s: float) -> tuple[Any, str | None]:
    """(session, "host:port" or None for a session handed in)."""
    if hasattr(rpc, "upload") and hasattr(rpc, "load_module"):
        return rpc, None
    host, port = _parse_address(rpc)
    from bvit_edge.targets import rpc as rpc_client

    return rpc_client.connect(host, port, timeout_s=timeout_s), f"{host}:{port}"


def is_emulated_board(address: str | None, arch: str | None) -> bool:
    """True when ``address`` is where bvit-edge's emulated (qemu) board for ``arch`` is serving."""
    if not address or not arch:
        return False
    from bvit_edge.targets import board

    try:
        info = board.status(arch)
    except BvitEdgeError:  # no emulated board for this architecture
        return False
    host, _, port = address.rpartition(":")
    local = {"127.0.0.1", "localhost", "::1", info.host}
    return bool(info.running and info.port is not None and int(port) == int(info.port) and host in local)


def _remote_threads(session: Any, threads: int | None) -> None:
    if threads:
        try:
            session.get_function("runtime.config_threadpool")(0, int(threads))
        except Exception as exc:  # noqa: BLE001 - a TVM error from the board
            raise ToolchainError(f"Setting {threads} threads on the board failed: {exc}".splitlines()[0]) from None


# ----------------------------------------------------------------------------------------------------
# the two ways a model is run


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _load_remote(folder: Path, manifest: dict[str, Any], session: Any, role: str) -> tuple[Any, Any, list[Any]]:
    """Upload lib.so under a name unique to the model and role, load it on the board, make its VM and copy
    the weights of params.npz to the board: (vm, remote device, parameter tensors).

    Not ``load_artifact(folder, session=...)``: that uploads every artifact as "lib.so" into the session's
    one folder, so a second artifact (the teacher) would be dlopen-ed under the path of the first, and the
    loader hands back the already-loaded library of the student."""
    from tvm import relax

    from bvit_edge.runtime.artifact import params_to_device, read_params

    arrays = read_params(folder, manifest)  # a missing or damaged params.npz fails before the upload
    lib = folder / manifest.get("lib", "lib.so")
    digest = str((manifest.get("model") or {}).get("sha256") or "")[:12] or "model"
    remote_name = f"bvit_bench_{role}_{digest}.so"
    session.upload(str(lib), target=remote_name)
    module = session.load_module(remote_name)
    device = session.cpu()
    return relax.VirtualMachine(module, device), device, params_to_device(arrays, device)


@dataclass
class _Loaded:
    """A model loaded and run once, ready to be timed: ``call`` runs it on the prepared input (local), or
    ``evaluate(warmup, runs)`` times it on the board (RPC)."""

    role: str
    runtime: str
    path: str
    input_shape: list[int]
    output_shape: list[int]
    compile_s: float | None
    load_ms: float
    first_run_ms: float
    model_sha256: str | None
    call: Callable[[], Any] | None = None
    evaluate: Callable[[int, int], Timing] | None = None

    def result(self, steady: Timing, timer: str) -> SideResult:
        return SideResult(
            role=self.role,
            runtime=self.runtime,
            path=self.path,
            input_shape=self.input_shape,
            output_shape=self.output_shape,
            compile_s=self.compile_s,
            load_ms=self.load_ms,
            first_run_ms=self.first_run_ms,
            steady=steady,
            timer=timer,
            model_sha256=self.model_sha256,
        )


def _load_tvm(
    folder: Path, manifest: dict[str, Any], role: str, x_norm: np.ndarray, session: Any, threads: int | None
) -> _Loaded:
    """Load and first run of a TVM artifact, locally or on the RPC ``session``'s board."""
    import tvm

    from bvit_edge.runtime.artifact import load_artifact

    if session is not None:
        from bvit_edge.targets import rpc as rpc_client

        rpc_client.check_arch(session, manifest["target"]["arch"], what=f"the {role} artifact {folder}")
        _remote_threads(session, threads)
    where = "on the board" if session is not None else "on this host"
    try:
        if session is None:
            load_ms, art = time_once(lambda: load_artifact(folder, threads=threads))
            vm, device, params = art.vm, art.device, art.params
        else:
            load_ms, (vm, device, params) = time_once(lambda: _load_remote(folder, manifest, session, role))
    except BvitEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
        raise ToolchainError(f"Loading the {role} artifact {folder} {where} failed: {_last_line(exc)}") from None

    def failed(exc: BaseException) -> ToolchainError:
        return ToolchainError(f"Running the {role} artifact {folder} {where} failed: {_last_line(exc)}")

    try:
        arg = tvm.runtime.tensor(x_norm, device=device)
        main = vm["main"]
        first_ms, y = time_once(lambda: main(arg, *params))
        out_shape = _output_shape(y)
    except BvitEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
        raise failed(exc) from None

    def call() -> Any:
        return main(arg, *params)

    def evaluate(warmup: int, runs: int) -> Timing:
        try:
            vm.set_input("main", arg, *params)
            evaluator = vm.time_evaluator("invoke_stateful", device, number=1, repeat=warmup + runs)
            seconds = list(evaluator("main").results)
        except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
            raise failed(exc) from None
        return Timing.from_samples_ms([t * 1e3 for t in seconds[warmup:]], warmup=warmup + 1)

    return _Loaded(
        role=role,
        runtime="tvm",
        path=str(folder),
        input_shape=list(manifest["input"]["shape"]),
        output_shape=out_shape,
        compile_s=compile_seconds(manifest),
        load_ms=load_ms,
        first_run_ms=first_ms,
        model_sha256=(manifest.get("model") or {}).get("sha256"),
        call=call if session is None else None,
        evaluate=evaluate if session is not None else None,
    )


def _onnx_input_shape(path: Path) -> list[Any]:
    from bvit_edge.runtime.ort import load_model

    proto = load_model(path)  # DataError (exit 2) for a missing or corrupt file
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UsageError(
            f"The teacher {path} has {len(inputs)} graph inputs; bvit-edge benches models with one image input."
        )
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
        for d in inputs[0].type.tensor_type.shape.dim
    ]


def _load_ort(path: Path, role: str, x_norm: np.ndarray, threads: int | None) -> _Loaded:
    """Load (session creation) and first run of an ONNX model in onnxruntime."""
    from bvit_edge.runtime.ort import ort_session

    load_ms, sess = time_once(lambda: ort_session(path, threads=threads))
    inp = sess.get_inputs()[0]
    feed = {inp.name: x_norm}
    run: Callable[[], Any] = lambda: sess.run(None, feed)  # noqa: E731
    first_ms, y = time_once(run)
    return _Loaded(
        role=role,
        runtime="onnxruntime",
        path=str(path),
        input_shape=[int(d) if isinstance(d, int) else 1 for d in inp.shape],
        output_shape=_output_shape(y),
        compile_s=None,
        load_ms=load_ms,
        first_run_ms=first_ms,
        model_sha256=_sha256(path),
        call=run,
    )


def _blocks(runs: int, rounds: int) -> list[int]:
    """``runs`` timed calls split over ``rounds`` blocks as evenly as possible (no empty block)."""
    rounds = max(1, min(int(rounds), int(runs)))
    return [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]


def measure_alternating(
    calls: list[Callable[[], Any]], warmup: int, runs: int, rounds: int, around: Callable[[], Any] | None = None
) -> list[Timing]:
    """Time every function of ``calls`` in alternating blocks (see the module docstring): per round, each in
    turn makes ``warmup`` untimed calls then its share of ``runs`` timed ones. ``around`` (a context manager
    factory) wraps each block. One Timing per function; its ``warmup`` counts every discarded call."""
    samples: list[list[float]] = [[] for _ in calls]
    blocks = _blocks(runs, rounds)
    for per in blocks:
        for i, fn in enumerate(calls):
            with around() if around is not None else contextlib.nullcontext():
                t = measure(fn, warmup=warmup, runs=per)
            samples[i].extend(t.samples_ms)
    return [Timing.from_samples_ms(s, warmup=warmup * len(blocks)) for s in samples]


def _check_student_onnx(student_onnx: Any, s_man: dict[str, Any], s_folder: Path) -> Path | None:
    """The student's .onnx (for weight counts), refused unless it is the file the artifact was compiled from."""
    if student_onnx is None:
        return None
    path = Path(student_onnx)
    if not path.is_file():
        raise UsageError(f"student_onnx={path} does not exist; give the .onnx the artifact was compiled from.")
    want = (s_man.get("model") or {}).get("sha256")
    if want and _sha256(path) != want:
        raise UsageError(
            f"student_onnx={path} is not the model {s_folder} was compiled from (its sha256 differs "
            "from the manifest's); give that file, or leave student_onnx out."
        )
    return path


def _check_teacher(
    teacher_onnx: Any, teacher_artifact: Any, built: dict[str, Any], s_shape: list[int], local: bool
) -> tuple[Path | None, Path | None, dict[str, Any] | None]:
    """(teacher .onnx, teacher artifact folder, its manifest) after checking they take the student's input
    and, for the artifact, were compiled for the student's target."""
    t_folder = t_man = None
    if teacher_artifact is not None:
        t_folder, t_man = _artifact(teacher_artifact, "teacher")
        if not _same_target(t_man["target"], built):
            raise UsageError(
                f"The teacher artifact {t_folder} was compiled for {t_man['target'].get('name')!r}, "
                f"the student for {built.get('name')!r}: compile both for the same target."
            )
        if list(t_man["input"]["shape"]) != s_shape:
            raise _shape_error(str(t_folder), list(t_man["input"]["shape"]), s_shape)
    t_onnx = Path(teacher_onnx) if teacher_onnx is not None else None
    if t_onnx is not None:
        t_shape = _onnx_input_shape(t_onnx)
        if not _shape_fits(t_shape, s_shape):
            raise _shape_error(str(t_onnx), t_shape, s_shape)
    if not local and t_onnx is not None and t_folder is None:
        raise UsageError(
            "Over RPC the teacher runs on the board as a TVM artifact: compile the teacher .onnx for "
            f"the target {built.get('name')!r} (`bvit-edge compile`) and pass it as teacher_artifact."
        )
    return t_onnx, t_folder, t_man


def _check_runs_here(s_man: dict[str, Any], s_folder: Path) -> None:
    """UsageError unless this host can run the artifact natively (same architecture, the CPU flags it needs)."""
    from bvit_edge.targets.registry import host_arch

    spec = _spec_of(s_man)
    if spec.arch != host_arch() or not spec.runs_natively():
        raise UsageError(
            f"{s_folder} is compiled for {spec.name!r} ({spec.arch}), which this {host_arch()} host cannot run. "
            "Bench it on a board over RPC (rpc='HOST:PORT'), or on the emulated board (`bvit-edge board "
            "emulate`, then rpc='127.0.0.1:9090')."
        )


# ----------------------------------------------------------------------------------------------------
# the protocol


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
    notes: list[str] = []
    s_folder, s_man = _artifact(student_artifact, "student")  # before importing TVM: bad paths fail at once
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise MissingDependencyError("bench needs the TVM runtime: pip install 'apache-tvm==0.27.*'.") from None
    built = _check_target(s_man, target, s_folder)
    s_shape = [int(d) for d in s_man["input"]["shape"]]
    if s_shape[0] != 1:
        raise UsageError(f"{s_folder} is compiled for batch {s_shape[0]}; the benchmark protocol is batch 1.")
    local = rpc is None
    s_onnx = _check_student_onnx(student_onnx, s_man, s_folder)
    t_onnx, t_folder, t_man = _check_teacher(teacher_onnx, teacher_artifact, built, s_shape, local)
    if local:
        _check_runs_here(s_man, s_folder)
    affinity = _affinity() if local else None  # before TVM's pool pins this thread
    n_threads = _resolve_threads(threads, s_man, local)
    x_raw, input_info = _input_image(data, s_shape, seed)
    x = _normalized(x_raw, s_man, input_info)

    session, address = (None, None) if local else _rpc_session(rpc, rpc_timeout_s)
    kind = (
        "host"
        if local
        else (
            "emulated"
            if (emulated if emulated is not None else is_emulated_board(address, built.get("arch")))
            else "board"
        )
    )
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

    i8_path = Path(teacher_int8_onnx) if teacher_int8_onnx is not None else None
    if i8_path is not None:
        i8_shape = _onnx_input_shape(i8_path)
        if not _shape_fits(i8_shape, s_shape):
            raise _shape_error(str(i8_path), i8_shape, s_shape)
    with contextlib.ExitStack() as stack:
        i8_info: dict[str, Any] | None = None
        if local and i8_path is None and int8_teacher and t_onnx is not None:
            i8_path, i8_info = _quantized_teacher(
                t_onnx, Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bvit-edge-bench-")))
            )
        elif i8_path is not None:
            i8_info = {"path": str(i8_path), "bytes": i8_path.stat().st_size, "made_by": "given"}
        if not local and i8_path is not None:
            notes.append("The int8 teacher runs in onnxruntime on this host: over RPC it was not measured.")

        loaded: list[_Loaded] = []
        with _restored_affinity():
            loaded.append(_load_tvm(s_folder, s_man, "student", x, session, n_threads))
        with _restored_affinity():
            if local and t_onnx is not None:
                loaded.append(_load_ort(t_onnx, "teacher", x, n_threads))
                if t_folder is not None:
                    notes.append(
                        "Locally the teacher runs in onnxruntime from its .onnx; the teacher artifact was not run."
                    )
            elif t_folder is not None and t_man is not None:
                loaded.append(_load_tvm(t_folder, t_man, "teacher", x, session, n_threads))
            if local and i8_path is not None:
                loaded.append(_load_ort(i8_path, "teacher_int8", x, n_threads))
        if local:
            timings = measure_alternating(
                [m.call for m in loaded if m.call is not None], warmup, runs, rounds, around=_restored_affinity
            )
            sides = {m.role: m.result(t, "time.perf_counter_ns") for m, t in zip(loaded, timings)}
        else:
            sides = {
                m.role: m.result(m.evaluate(warmup, runs), "tvm.time_evaluator")
                for m in loaded
                if m.evaluate is not None
            }
    student = sides["student"]
    teacher, teacher_i8 = sides.get("teacher"), sides.get("teacher_int8")
    if teacher is not None and teacher.output_shape != student.output_shape:
        notes.append(
            f"Teacher output {teacher.output_shape} and student output {student.output_shape} differ in "
            "shape: check that they are the same task."
        )
    if compile_seconds(s_man) is None:
        notes.append("The artifact manifest records no compile time (compile_s is null).")

    sizes = _sizes(s_folder, s_man, s_onnx, t_onnx, t_folder, t_man, teacher)
    if i8_info is not None and teacher_i8 is not None:
        i8 = {"onnx_bytes": int(i8_info["bytes"]), "weights": i8_info.pop("weights", None)}
        if i8["weights"] is None and i8_path is not None and i8_path.is_file():
            i8["weights"] = _weight_counts(i8_path)
        sizes["teacher_int8"] = i8
        s_bytes = sizes["student_measured_bytes"]
        sizes["teacher_int8_over_student_bytes"] = i8["onnx_bytes"] / s_bytes if s_bytes else None
    spec_d = {k: built.get(k) for k in ("name", "arch", "family", "tvm_target", "word_bits")}
    return BenchResult(
        date_utc=_now_utc(),
        git_revision=git_revision(),
        versions=_versions(),
        seed=int(seed),
        batch_size=1,
        target=spec_d,
        timing_kind=kind,
        emulated=kind == "emulated",
        rpc=None if local else (address or "session"),
        threads=n_threads,
        affinity=affinity,
        host=_host_facts(),
        input=input_info,
        student=student,
        teacher=teacher,
        sizes=sizes,
        notes=notes,
        teacher_int8=teacher_i8,
        int8_teacher_info=i8_info if teacher_i8 is not None else None,
        rounds=len(_blocks(runs, rounds)) if local else 1,
    )


def _quantized_teacher(t_onnx: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The teacher quantized by onnxruntime into ``folder`` (bvit_edge.export.int8_teacher), with what it took."""
    from bvit_edge.export.int8_teacher import quantize_teacher

    path = folder / f"{t_onnx.stem}.int8.onnx"
    ms, made = time_once(lambda: quantize_teacher(t_onnx, path))
    info = made.to_dict()
    info.update(
        {
            "made_by": "bench",
            "quantize_s": ms / 1e3,
            "weights": _weight_counts(path),
            "path": f"(temporary) {path.name}",
        }
    )
    return path, info


def _weight_counts(path: Path) -> dict[str, int]:
    from bvit_edge.export.size import weight_counts
    from bvit_edge.runtime.ort import load_model

    return weight_counts(load_model(path))


def _sizes(
    s_folder: Path,
    s_man: dict[str, Any],
    s_onnx: Path | None,
    t_onnx: Path | None,
    t_folder: Path | None,
    t_man: dict[str, Any] | None,
    teacher: SideResult | None,
) -> dict[str, Any]:
    """:func:`bvit_edge.runtime.bench_record.measured_sizes` with the .onnx files' 1/8/32-bit weight counts."""
    return measured_sizes(s_folder, s_man, s_onnx, t_onnx, t_folder, t_man, teacher, count_weights=_weight_counts)
