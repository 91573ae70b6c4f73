"""The on-device runtime's library entry: what ``bvit-edge-device`` runs on the board itself.

Needs numpy, Pillow and the TVM runtime only (bvit_edge.runtime.tvm_runtime: tvm_ffi + libtvm_runtime.so);
no torch, onnx, TVM compiler or RPC. Every function first loads the artifact with all its checks
(bvit_edge.runtime.artifact: manifest schema, this machine's architecture and CPU features, sha256 of lib.so
and params.npz), so a bad artifact fails before any input is read or anything is written.

* :func:`classify`: image files and folders -> top-k classes (softmax probabilities, class names from the
  manifest) per image, the same preprocessing as ``bvit-edge run`` on the host (bvit_edge.runtime.image_input).
* :func:`classify_frames`: raw frames from a stream (a camera pipe) -> one result per frame, as they come.
* :func:`bench_on_device`: the benchmark protocol of ``bvit-edge bench`` (bvit_edge.runtime.bench_record: same
  input, same thread resolution; load / first run / warm-up / timed runs with bvit_edge.runtime.timing) for the
  artifact and optionally a teacher artifact compiled for the same target, run here; the result is a
  :class:`~bvit_edge.runtime.bench_record.BenchRecord` (the JSON schema of ``bvit-edge bench``) labelled
  ``board`` (``emulated`` under qemu user mode, ``host`` on x86), which ``bvit-edge report`` merges with the
  host's.
* :func:`check`: the checks alone, and what this machine is.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from bvit_edge.errors import UsageError
from bvit_edge.runtime.artifact import LoadedArtifact, load_artifact, required_features, topk
from bvit_edge.runtime.cpu_features import cpu_features, machine_arch
from bvit_edge.runtime.image_input import expand_inputs, frame_to_input, load_image, read_frames
from bvit_edge.runtime.timing import time_once, time_protocol
from bvit_edge.runtime.tool_versions import run_versions

__all__ = ["bench_on_device", "check", "classify", "classify_frames", "is_emulated", "versions"]


def _image_size(art: LoadedArtifact) -> int:
    shape = art.input_shape
    if len(shape) != 4 or shape[2] != shape[3]:
        raise UsageError(f"{art.folder} takes input {shape}; image inputs need a square [1, C, S, S] model.")
    return shape[-1]


def _prediction(
    name: str, logits: np.ndarray, art: LoadedArtifact, top_k: int, ms: float, with_logits: bool
) -> dict[str, Any]:
    top = topk(logits[None], top_k, art.classes)[0]
    out: dict[str, Any] = {"input": name, "top": [[c, p] for c, p in top], "ms": ms}
    if with_logits:
        out["logits"] = [float(v) for v in logits]
    return out


def _check_top_k(top_k: int) -> None:
    if int(top_k) < 1:
        raise UsageError(f"top_k must be >= 1 (got {top_k}).")


def classify(
    artifact: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    top_k: int = 5,
    threads: int | None = None,
    with_logits: bool = False,
) -> dict[str, Any]:
    """Top-k classes of each image of ``inputs`` (files and folders; see bvit_edge.runtime.image_input).

    Every image is decoded before the first runs, so an unreadable one fails (DataError naming it) before any
    result. Returns ``{"artifact", "target", "threads", "load_ms", "num_images", "predictions": [{"input",
    "top": [[class, probability], ...], "ms"[, "logits"]}]}``; ``ms`` is the model call alone."""
    _check_top_k(top_k)
    load_ms, art = time_once(lambda: load_artifact(artifact, threads=threads))
    files = expand_inputs(inputs)
    size = _image_size(art)
    images = [load_image(f, size) for f in files]
    preds = []
    for f, img in zip(files, images, strict=True):
        ms, logits = time_once(partial(art.run, img))
        preds.append(_prediction(str(f), logits[0], art, top_k, ms, with_logits))
    return {
        "artifact": str(art.folder),
        "target": art.manifest["target"].get("name"),
        "threads": threads,
        "load_ms": load_ms,
        "num_images": len(preds),
        "predictions": preds,
    }


def classify_frames(
    artifact: str | os.PathLike[str],
    stream: IO[bytes],
    width: int,
    height: int,
    pixel_format: str = "rgb24",
    top_k: int = 5,
    threads: int | None = None,
    limit: int | None = None,
    with_logits: bool = False,
) -> Iterator[dict[str, Any]]:
    """One prediction per raw frame of ``stream`` (``input`` is ``frame:N``), yielded as each frame arrives."""
    _check_top_k(top_k)
    art = load_artifact(artifact, threads=threads)
    size = _image_size(art)
    for i, frame in enumerate(read_frames(stream, width, height, pixel_format, limit=limit), 1):
        x = frame_to_input(frame, size)
        ms, logits = time_once(partial(art.run, x))
        yield _prediction(f"frame:{i}", logits[0], art, top_k, ms, with_logits)


def is_emulated() -> bool:
    """True under qemu user mode: an ARM Python whose /proc/cpuinfo describes an x86 CPU (qemu passes the host's
    through; a real ARM board's lists ``Features``, never x86 ``flags``)."""
    if machine_arch() not in ("aarch64", "armv7"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(line.split(":")[0].strip() == "flags" for line in text.splitlines()) and "vendor_id" in text


def versions() -> dict[str, str]:
    """Versions for run records: bvit-edge, numpy, Python, tvm_ffi, the apache-tvm distribution (read from its
    metadata, never imported: "runtime-only" when it is absent) and the runtime library in use."""
    from bvit_edge.runtime.tvm_runtime import runtime

    rt = runtime()
    try:
        tvm_version = importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:
        tvm_version = "runtime-only"
    return {
        **run_versions(),
        "tvm": tvm_version,
        **rt.versions,
        "onnxruntime": "not used",
    }


def _time_side(folder: Path, role: str, x_norm: np.ndarray, threads: int | None, warmup: int, runs: int) -> Any:
    """Load, first run and steady state of one artifact here (the host bench's local TVM protocol)."""
    from bvit_edge.runtime.bench_record import SideResult, compile_seconds, output_shape

    def call_of(art: LoadedArtifact) -> Any:
        arg, main, params = art.tensor(x_norm), art.vm["main"], art.params
        return lambda: main(arg, *params)

    times, art, y = time_protocol(lambda: load_artifact(folder, threads=threads), call_of, warmup, runs)
    return SideResult(
        role=role,
        runtime="tvm",
        path=str(folder),
        input_shape=art.input_shape,
        output_shape=output_shape(y),
        compile_s=compile_seconds(art.manifest),
        load_ms=times.load_ms,
        first_run_ms=times.first_run_ms,
        steady=times.steady,
        timer="time.perf_counter_ns",
        model_sha256=(art.manifest.get("model") or {}).get("sha256"),
    )


def bench_on_device(
    artifact: str | os.PathLike[str],
    teacher_artifact: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    warmup: int = 5,
    runs: int = 50,
    seed: int = 0,
    image: str | os.PathLike[str] | None = None,
    emulated: bool | None = None,
) -> Any:
    """``bvit-edge bench``'s protocol run on this machine (see the module docstring): a BenchRecord.

    The input is seeded uniform noise of the artifact's input shape (``seed``), or ``image`` (a file,
    preprocessed like :func:`classify`, or a .npy of images [N, C, H, W] whose first is used), normalised with
    the artifact's mean/std; a teacher artifact gets the same tensor. ``emulated`` overrides the qemu detection."""
    from bvit_edge.runtime import bench_record as protocol
    from bvit_edge.runtime.artifact import check_machine, read_manifest

    if int(warmup) < 0 or int(runs) < 1:
        raise UsageError(f"warmup must be >= 0 and runs >= 1 (got warmup={warmup}, runs={runs}).")
    s_folder = Path(artifact)
    s_man = read_manifest(s_folder)
    check_machine(s_folder, s_man)
    shape = [int(d) for d in s_man["input"]["shape"]]
    if shape[0] != 1:
        raise UsageError(f"{s_folder} is compiled for batch {shape[0]}; the benchmark protocol is batch 1.")
    t_folder = t_man = None
    if teacher_artifact is not None:
        t_folder = Path(teacher_artifact)
        t_man = read_manifest(t_folder)
        check_machine(t_folder, t_man)
        if not protocol.same_target(t_man["target"], s_man["target"]):
            raise UsageError(
                f"The teacher artifact {t_folder} was compiled for {t_man['target'].get('name')!r}, "
                f"the student for {s_man['target'].get('name')!r}: compile both for the same target."
            )
        if [int(d) for d in t_man["input"]["shape"]] != shape:
            raise UsageError(
                f"The teacher {t_folder} takes input {t_man['input']['shape']} but the student takes "
                f"{shape}: they must see the same image."
            )
    data: Any = None
    if image is not None:
        p = Path(image)
        data = p if p.suffix == ".npy" else load_image(p, shape[-1])
    affinity = protocol.affinity()  # before TVM's pool pins this thread
    n_threads = protocol.resolve_threads(threads, s_man, True)
    x_raw, input_info = protocol.input_image(data, shape, seed)
    if image is not None and Path(image).suffix != ".npy":
        input_info["source"] = str(image)
    x = protocol.normalized(x_raw, s_man, input_info)
    kind = "host" if machine_arch() == "x86_64" else "board"
    if is_emulated() if emulated is None else emulated:
        kind = "emulated"
    notes = [
        "Run on the device itself by bvit-edge-device (bvit_edge.runtime.device): TVM runtime only, no RPC; "
        "load times include the artifact checks (sha256 of lib.so and params.npz)."
    ]
    if kind == "emulated":
        notes.append(
            "Emulated timings (qemu user mode): they prove the code runs, not how fast a board is; "
            "never compare them with board timings."
        )
    with protocol.restored_affinity():
        student = _time_side(s_folder, "student", x, n_threads, warmup, runs)
    teacher = None
    if t_folder is not None:
        with protocol.restored_affinity():
            teacher = _time_side(t_folder, "teacher", x, n_threads, warmup, runs)
        if teacher.output_shape != student.output_shape:
            notes.append(
                f"Teacher output {teacher.output_shape} and student output {student.output_shape} differ "
                "in shape: check that they are the same task."
            )
    if protocol.compile_seconds(s_man) is None:
        notes.append("The artifact manifest records no compile time (compile_s is null).")
    sizes = protocol.measured_sizes(s_folder, s_man, None, None, t_folder, t_man, teacher)
    built = s_man["target"]
    return protocol.BenchRecord(
        date_utc=protocol.now_utc(),
        git_revision="unknown",
        versions=versions(),
        seed=int(seed),
        batch_size=1,
        target={k: built.get(k) for k in ("name", "arch", "family", "tvm_target", "word_bits")},
        timing_kind=kind,
        emulated=kind == "emulated",
        rpc=None,
        threads=n_threads,
        affinity=affinity,
        host=protocol.host_facts(),
        input=input_info,
        student=student,
        teacher=teacher,
        sizes=sizes,
        notes=notes,
    )


def check(artifact: str | os.PathLike[str], threads: int | None = None) -> dict[str, Any]:
    """Every check of the artifact on this machine, then a load (dlopen + VM + weights): what was checked."""
    art = load_artifact(artifact, threads=threads)
    m = art.manifest
    params = m.get("params") or {}
    return {
        "artifact": str(art.folder),
        "ok": True,
        "target": m["target"].get("name"),
        "arch": m["target"]["arch"],
        "machine": {
            "arch": machine_arch(),
            "uname_m": platform.machine(),
            "emulated": is_emulated(),
            "cpu_features": sorted(cpu_features()),
        },
        "required_cpu_features": required_features(m),
        "verified": {
            "manifest_schema": m["schema_version"],
            "lib_sha256": bool(m.get("lib_sha256")),
            "params_sha256": params.get("storage") == "file",
            "params_shapes_dtypes": bool(params.get("arrays")),
        },
        "input": m["input"],
        "classes": m.get("classes"),
        "params": len(art.params),
        "runtime": art.extra.get("runtime"),
    }
