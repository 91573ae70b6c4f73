"""The record of a benchmark (board side: numpy and the standard library only): what ``bvit-edge bench`` on the
host and ``bvit-edge-device bench`` on a board both measure and write, so their JSON is one schema.

* :class:`SideResult` / :class:`BenchRecord`: one model's times / one benchmark (``to_dict()`` is the JSON,
  ``save()`` writes it atomically, ``from_dict()`` reads it back); the host's
  ``bvit_edge.runtime.bench_result.BenchResult`` adds ``to_report()`` (the bvit_edge.report document, drawn on the
  host: the report package needs matplotlib);
* the protocol's shared parts: the input image (seeded uniform noise or given data) and its normalisation, the
  thread count, facts about the run (host, CPU affinity, date), artifact sizes, compile time;
* the timing itself is bvit_edge.runtime.timing (``time_protocol``, ``measure``).

The protocol is described in bvit_edge.runtime.bench (the host's bench, which adds onnxruntime, RPC and the
.onnx weight counts) and docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.atomic import write_json
from bvit_edge.errors import UsageError
from bvit_edge.runtime.timing import Timing

__all__ = [
    "COMPILE_TIME_KEYS",
    "KIND",
    "SCHEMA_VERSION",
    "TIMING_KINDS",
    "BenchRecord",
    "SideResult",
    "affinity",
    "artifact_sizes",
    "compile_seconds",
    "host_facts",
    "input_image",
    "measured_sizes",
    "normalized",
    "now_utc",
    "output_shape",
    "resolve_threads",
    "restored_affinity",
    "same_target",
]

SCHEMA_VERSION = 1
KIND = "bvit_edge.bench"
#: Manifest keys a compiler may record its wall time under (seconds); the first present one is used.
COMPILE_TIME_KEYS = ("compile_s", "compile_seconds", "compile_time_s")
TIMING_KINDS = ("host", "board", "emulated")


@dataclass
class SideResult:
    """What was measured for one model (the student or the teacher)."""

    role: str  # "student" | "teacher" | "teacher_int8"
    runtime: str  # "tvm" | "onnxruntime"
    path: str
    input_shape: list[int]
    output_shape: list[int]
    compile_s: float | None
    load_ms: float
    first_run_ms: float
    steady: Timing
    timer: str  # "time.perf_counter_ns" | "tvm.time_evaluator"
    model_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "runtime": self.runtime,
            "path": self.path,
            "model_sha256": self.model_sha256,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "compile_s": self.compile_s,
            "load_ms": self.load_ms,
            "first_run_ms": self.first_run_ms,
            "timer": self.timer,
            "steady": self.steady.to_dict(),
        }


@dataclass
class BenchRecord:
    """One benchmark: student vs teacher on one target (JSON via :meth:`to_dict`, units in field names)."""

    date_utc: str
    git_revision: str
    versions: dict[str, str]
    seed: int
    batch_size: int
    target: dict[str, Any]
    timing_kind: str
    emulated: bool
    rpc: str | None
    threads: int | None
    affinity: list[int] | None
    host: dict[str, str]
    input: dict[str, Any]
    student: SideResult
    teacher: SideResult | None
    sizes: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: the teacher quantized to int8 by onnxruntime's quantize_dynamic (the host's bench; None on a board)
    teacher_int8: SideResult | None = None
    #: how the int8 teacher was made (bvit_edge.export.int8_teacher.Int8Teacher.to_dict() + quantize_s)
    int8_teacher_info: dict[str, Any] | None = None
    #: alternating blocks the steady state was measured in (1: one block per model)
    rounds: int = 1

    def _over_student(self, side: SideResult | None) -> float | None:
        if side is None or self.student.steady.median_ms <= 0:
            return None
        return side.steady.median_ms / self.student.steady.median_ms

    @property
    def ratio(self) -> float | None:
        """teacher median / student median (None without a teacher)."""
        return self._over_student(self.teacher)

    @property
    def ratio_int8(self) -> float | None:
        """int8 teacher median / student median (None without an int8 teacher)."""
        return self._over_student(self.teacher_int8)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "date_utc": self.date_utc,
            "git_revision": self.git_revision,
            "versions": dict(self.versions),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "target": dict(self.target),
            "timing_kind": self.timing_kind,
            "emulated": self.emulated,
            "rpc": self.rpc,
            "threads": self.threads,
            "affinity": self.affinity,
            "host": dict(self.host),
            "input": dict(self.input),
            "student": self.student.to_dict(),
            "teacher": self.teacher.to_dict() if self.teacher else None,
            "teacher_int8": self.teacher_int8.to_dict() if self.teacher_int8 else None,
            "int8_teacher": self.int8_teacher_info,
            "ratio_teacher_over_student_median": self.ratio,
            "ratio_teacher_int8_over_student_median": self.ratio_int8,
            "protocol": {"order": "alternating_blocks", "rounds": self.rounds},
            "sizes": self.sizes,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """The result :meth:`to_dict` wrote (fields a later schema adds with defaults are ignored)."""

        def side(x: dict[str, Any] | None) -> SideResult | None:
            if x is None:
                return None
            steady = {**x["steady"], "samples_ms": tuple(x["steady"].get("samples_ms") or ())}
            return _build(SideResult, x, steady=_build(Timing, steady))

        return _build(
            cls,
            d,
            student=side(d["student"]),
            teacher=side(d.get("teacher")),
            teacher_int8=side(d.get("teacher_int8")),
            int8_teacher_info=d.get("int8_teacher"),
            rounds=int((d.get("protocol") or {}).get("rounds", 1)),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` atomically."""
        return write_json(path, self.to_dict())


def affinity() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


@contextlib.contextmanager
def restored_affinity() -> Iterator[None]:
    """Put back this thread's CPU affinity afterwards: TVM's thread pool pins the calling thread to one core
    when it is configured, and threads onnxruntime creates later would inherit that single core."""
    saved = affinity()
    try:
        yield
    finally:
        if saved:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, saved)


def host_facts() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "system": platform.system(), "cpu": cpu, "node": platform.node()}


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def compile_seconds(manifest: dict[str, Any]) -> float | None:
    """The compile wall time the manifest recorded (seconds), or None."""
    for key in COMPILE_TIME_KEYS:
        value = manifest.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    timing = manifest.get("timing")
    if isinstance(timing, dict) and isinstance(timing.get("compile_s"), (int, float)):
        return float(timing["compile_s"])
    return None


def artifact_sizes(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Bytes on disk of lib.so and of the parameters (0 when embedded in lib.so)."""
    lib = folder / manifest.get("lib", "lib.so")
    params = manifest.get("params") or {}
    storage = params.get("storage", "file" if params.get("file") else "embedded")
    params_bytes = 0
    pfile = params.get("file")
    if pfile:
        ppath = folder / pfile
        if not ppath.is_file():
            raise UsageError(
                f"{folder}: the manifest names the parameter file {pfile!r}, which is missing; recompile the artifact."
            )
        params_bytes = ppath.stat().st_size
    lib_bytes = lib.stat().st_size
    return {
        "lib_bytes": lib_bytes,
        "params_bytes": params_bytes,
        "params_storage": storage,
        "total_bytes": lib_bytes + params_bytes,
    }


def same_target(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("mtriple", "mcpu", "mattr")
    ta, tb = a.get("tvm_target", {}), b.get("tvm_target", {})
    return a.get("arch") == b.get("arch") and all(ta.get(k) == tb.get(k) for k in keys)


def input_image(data: Any, shape: list[int], seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One image [1, C, H, W] float32 in [0, 1] (before normalisation) and a description of it."""
    if data is None:
        rng = np.random.default_rng(seed)
        x = rng.random([1, *shape[1:]], dtype=np.float32)
        return x, {"source": "random_uniform_0_1", "seed": seed, "shape": list(x.shape)}
    source = "array"
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.suffix != ".npy" or not path.is_file():
            raise UsageError(f"data={path}: give an existing .npy file of images [N, C, H, W] (or a numpy array).")
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"Cannot read {path} as a .npy array ({exc}); save the images with np.save.") from None
        source = str(path)
    x = np.asarray(data, dtype=np.float32)
    if x.ndim == len(shape):
        x = x[:1]
    elif x.ndim == len(shape) - 1:
        x = x[None]
    if x.ndim != len(shape) or list(x.shape[1:]) != list(shape[1:]) or x.shape[0] != 1:
        raise UsageError(
            f"data of shape {list(np.shape(data))} does not fit the artifact's input {shape}; give "
            f"images [N, {', '.join(map(str, shape[1:]))}] (the first one is used)."
        )
    return np.ascontiguousarray(x), {"source": source, "shape": list(x.shape)}


def resolve_threads(threads: int | None, manifest: dict[str, Any], local: bool) -> int | None:
    if threads is not None:
        if int(threads) < 1:
            raise UsageError(f"threads must be >= 1, got {threads}.")
        return int(threads)
    n = int(manifest.get("threads") or manifest["target"].get("threads") or 1)
    if local:
        aff = affinity()
        n = min(n, len(aff)) if aff else n
    return max(1, n)


def output_shape(y: Any) -> list[int]:
    if isinstance(y, (list, tuple)):
        y = y[0]
    if not hasattr(y, "shape"):  # a TVM tuple of outputs: the first is the logits
        y = y[0]
    return [int(d) for d in y.shape]


def normalized(x: np.ndarray, manifest: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
    """(x - mean) / std per channel with the manifest's normalisation, when it has one (noted in ``info``)."""
    norm = manifest.get("normalization") or {}
    info["normalized"] = norm.get("mean") is not None and norm.get("std") is not None
    if info["normalized"]:
        c = (-1,) + (1,) * (x.ndim - 2)
        x = (x - np.asarray(norm["mean"], np.float32).reshape(c)) / np.asarray(norm["std"], np.float32).reshape(c)
    return np.ascontiguousarray(x, dtype=np.float32)


def measured_sizes(
    s_folder: Path,
    s_man: dict[str, Any],
    s_onnx: Path | None,
    t_onnx: Path | None,
    t_folder: Path | None,
    t_man: dict[str, Any] | None,
    teacher: SideResult | None,
    count_weights: Callable[[Path], dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Bytes on disk of the student artifact (lib.so + params) and of the teacher's .onnx and/or artifact;
    1/8/32-bit weight counts of the .onnx files given (``count_weights``, needs onnx: the host's bench passes
    it); teacher/student bytes of the forms that were run (the teacher's .onnx when it ran in onnxruntime, else
    its artifact; the student's artifact)."""
    student: dict[str, Any] = {"artifact": artifact_sizes(s_folder, s_man)}
    if s_onnx is not None:
        student["onnx_bytes"] = s_onnx.stat().st_size
        if count_weights is not None:
            student["weights"] = count_weights(s_onnx)
    t_sizes: dict[str, Any] = {}
    if t_onnx is not None:
        t_sizes["onnx_bytes"] = t_onnx.stat().st_size
        if count_weights is not None:
            t_sizes["weights"] = count_weights(t_onnx)
    if t_folder is not None and t_man is not None:
        t_sizes["artifact"] = artifact_sizes(t_folder, t_man)
    s_bytes = student["artifact"]["total_bytes"]
    t_bytes = None
    if teacher is not None:
        t_bytes = t_sizes["onnx_bytes"] if teacher.runtime == "onnxruntime" else t_sizes["artifact"]["total_bytes"]
    return {
        "student": student,
        "teacher": t_sizes or None,
        "teacher_measured_bytes": t_bytes,
        "student_measured_bytes": s_bytes,
        "teacher_over_student_bytes": (t_bytes / s_bytes) if t_bytes and s_bytes else None,
    }


def _build(cls: Any, data: dict[str, Any], **override: Any) -> Any:
    """``cls(**data)`` with the dataclass's own fields only."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in {**data, **override}.items() if k in names})
