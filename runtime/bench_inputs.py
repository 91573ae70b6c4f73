"""What a benchmark is given, checked before anything runs: the artifacts (their folders and manifests, their
target, batch 1), the teacher (.onnx and/or artifact) taking the student's input, the student's .onnx being the
file the artifact was compiled from, and whether this host can run the artifact itself. Each refusal is a
one-paragraph UsageError (exit 2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bvit_edge.digest import sha256_file
from bvit_edge.errors import UsageError
from bvit_edge.runtime.artifact import read_manifest
from bvit_edge.runtime.bench_record import same_target

__all__ = [
    "artifact",
    "check_runs_here",
    "check_shape",
    "check_student_onnx",
    "check_target",
    "check_teacher",
    "onnx_input_shape",
]


def artifact(path: str | os.PathLike[str], role: str) -> tuple[Path, dict[str, Any]]:
    """(folder, manifest) of the ``role`` artifact; UsageError for a missing folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(
            f"The {role} artifact folder {folder} does not exist; compile one with "
            "`bvit-edge compile MODEL.onnx --target T --out FOLDER`."
        )
    return folder, read_manifest(folder)


def check_target(manifest: dict[str, Any], target: Any, folder: Path) -> dict[str, Any]:
    """The target the run is for (the artifact's), refusing an artifact compiled for another one, and one
    compiled for another batch than 1."""
    built = manifest["target"]
    batch = int(manifest["input"]["shape"][0])
    if batch != 1:
        raise UsageError(f"{folder} is compiled for batch {batch}; the benchmark protocol is batch 1.")
    if target is None:
        return built
    from bvit_edge.targets import load_target

    spec = load_target(target)
    if not same_target(built, spec.to_dict()):
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
    for i, (t, s) in enumerate(zip(teacher_shape, student_shape, strict=True)):
        if isinstance(t, int) and t > 0:
            if t != s:
                return False
        elif i != 0:  # only the batch axis may be symbolic
            return False
    return True


def check_shape(model: str, shape: list[Any], s_shape: list[int]) -> None:
    """UsageError unless ``model`` (a teacher, with input ``shape``) takes the student's input ``s_shape``."""
    if not _shape_fits(shape, s_shape):
        raise UsageError(
            f"The teacher {model} takes input {shape} but the student takes {s_shape}: they must see the same "
            "image. Export the teacher at the student's image size (and batch 1 or a dynamic batch), then bench "
            "again."
        )


def onnx_input_shape(path: Path) -> list[Any]:
    """The image input's shape of an .onnx (ints, or the symbolic name of a dynamic dim)."""
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


def check_student_onnx(student_onnx: Any, s_man: dict[str, Any], s_folder: Path) -> Path | None:
    """The student's .onnx (for weight counts), refused unless it is the file the artifact was compiled from."""
    if student_onnx is None:
        return None
    path = Path(student_onnx)
    if not path.is_file():
        raise UsageError(f"student_onnx={path} does not exist; give the .onnx the artifact was compiled from.")
    want = (s_man.get("model") or {}).get("sha256")
    if want and sha256_file(path) != want:
        raise UsageError(
            f"student_onnx={path} is not the model {s_folder} was compiled from (its sha256 differs "
            "from the manifest's); give that file, or leave student_onnx out."
        )
    return path


def check_teacher(
    teacher_onnx: Any, teacher_artifact: Any, built: dict[str, Any], s_shape: list[int], local: bool
) -> tuple[Path | None, Path | None, dict[str, Any] | None]:
    """(teacher .onnx, teacher artifact folder, its manifest) after checking they take the student's input
    and, for the artifact, were compiled for the student's target."""
    t_folder = t_man = None
    if teacher_artifact is not None:
        t_folder, t_man = artifact(teacher_artifact, "teacher")
        if not same_target(t_man["target"], built):
            raise UsageError(
                f"The teacher artifact {t_folder} was compiled for {t_man['target'].get('name')!r}, "
                f"the student for {built.get('name')!r}: compile both for the same target."
            )
        check_shape(str(t_folder), list(t_man["input"]["shape"]), s_shape)
    t_onnx = Path(teacher_onnx) if teacher_onnx is not None else None
    if t_onnx is not None:
        check_shape(str(t_onnx), onnx_input_shape(t_onnx), s_shape)
    if not local and t_onnx is not None and t_folder is None:
        raise UsageError(
            "Over RPC the teacher runs on the board as a TVM artifact: compile the teacher .onnx for "
            f"the target {built.get('name')!r} (`bvit-edge compile`) and pass it as teacher_artifact."
        )
    return t_onnx, t_folder, t_man


def check_runs_here(s_man: dict[str, Any], s_folder: Path) -> None:
    """UsageError unless this host can run the artifact natively (same architecture, the CPU flags it needs)."""
    from bvit_edge.targets import load_target
    from bvit_edge.targets.registry import host_arch

    spec = load_target(s_man["target"])
    if spec.arch != host_arch() or not spec.runs_natively():
        raise UsageError(
            f"{s_folder} is compiled for {spec.name!r} ({spec.arch}), which this {host_arch()} host cannot run. "
            "Bench it on a board over RPC (rpc='HOST:PORT'), or on the emulated board (`bvit-edge board "
            "emulate`, then rpc='127.0.0.1:9090')."
        )
