"""Checkpoint-level steps the CLI and the demo share: export a trained checkpoint (student and teacher) with
its data description, validate it on real images, and gather accuracy / fidelity along
torch -> ONNX reference -> compiled artifact.

The low-level pieces live in bvit_edge.export (ONNX), bvit_edge.runtime (onnxruntime, TVM) and
bvit_edge.training.checkpoint; this module only wires them to checkpoints and data sets.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.atomic import write_json
from bvit_edge.errors import CheckpointError, UsageError
from bvit_edge.metrics import fidelity


@dataclass
class ExportSummary:
    out_dir: str
    student: dict[str, Any] = field(default_factory=dict)  # flavour -> ExportResult dict
    teacher: dict[str, Any] | None = None
    validation: dict[str, Any] = field(default_factory=dict)  # flavour -> ValidationReport dict
    size: dict[str, Any] = field(default_factory=dict)  # flavour -> SizeReport dict
    #: how the float parameters are stored: the choice, per flavour the file bytes of every choice, and (with
    #: validation) the fidelity of every choice against float32 storage on the val images
    storage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def val_inputs(
    cfg: dict[str, Any], limit: int | None = None, data: str | None = None, data_root: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised val images [N, 3, S, S] float32 and labels of the data set a checkpoint was trained on."""
    from bvit_edge.runtime.run import val_images

    dcfg = cfg.get("data") or {}
    name = data or dcfg.get("name") or "digits"
    root = data_root if data_root is not None else dcfg.get("root")
    xs, ys = val_images(name, root, int(cfg["image_size"]), limit)
    mean = np.asarray(cfg["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(cfg["std"], np.float32).reshape(1, -1, 1, 1)
    return ((xs - mean) / std).astype(np.float32), ys


def load_frozen(checkpoint: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The model of a checkpoint in eval mode, frozen into its deployment form when it is binary, and its
    config."""
    from bvit_edge.training.checkpoint import load_model

    model: Any
    model, cfg = load_model(checkpoint)
    if hasattr(model, "freeze") and cfg.get("method", "fp") != "fp":
        model.freeze()
    model.eval()
    return model, cfg


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    ops: tuple[str, ...] = ("packed", "standard"),
    teacher: str | os.PathLike[str] | None = None,
    validate: bool = True,
    rtol: float = 1e-5,
    atol: float = 0.0,
    limit: int | None = None,
    max_outliers: int = 0,
    att_bias: str | None = None,
    float_params: str | None = None,
    overwrite: bool = False,
) -> ExportSummary:
    """Export a checkpoint to OUT/student.<ops>.onnx (binary models are frozen first) and its teacher to
    OUT/teacher.onnx (plain ONNX), validate each against torch on the val split, report sizes.

    ``teacher`` defaults to the teacher recorded in the checkpoint's training config (if any).
    ``max_outliers``: how many images may differ beyond the tolerance (top-1 must still agree on all): a
    binarizer input within float rounding of its threshold can flip one bit between runtimes.
    ``att_bias`` / ``float_params``: the storage of GSB's attention bias and of the other float parameters
    (bvit_edge.export.storage; defaults DEFAULT_ATT_BIAS / DEFAULT_FLOAT_PARAMS). Each file is validated
    against the model it computes (its tensors decoded from their storage), and ``storage["fidelity"]``
    gives, for every storage choice, max |logit difference| and top-1 agreement against float32 storage.
    ``out_dir`` follows bvit_edge.output_folder's rule (new, empty or an export folder written before;
    ``overwrite`` replaces anything else) and is written as a whole, atomically."""
    from bvit_edge.export.storage import DEFAULT_ATT_BIAS, DEFAULT_FLOAT_PARAMS, check_choice
    from bvit_edge.output_folder import check_output_folder, output_folder

    att_bias = att_bias or DEFAULT_ATT_BIAS
    float_params = float_params or DEFAULT_FLOAT_PARAMS
    check_choice(att_bias, float_params)
    out = Path(out_dir)
    inputs = (checkpoint, teacher)
    check_output_folder(out, "export", overwrite, inputs=inputs)
    for flavour in ops:
        if flavour not in ("packed", "standard"):
            raise UsageError(f"Unknown --ops {flavour!r}: use packed or standard.")
    model, cfg = load_frozen(checkpoint)
    is_fp = cfg.get("method", "fp") == "fp"
    tmodel, tcfg = (None, None) if is_fp else _recorded_teacher(teacher, cfg)
    x = val_inputs(cfg, limit)[0] if validate else None
    check = _Validation(x, rtol, atol, max_outliers) if x is not None else None
    summary = ExportSummary(out_dir=str(out))
    with output_folder(out, "export", overwrite, inputs=inputs) as tmp:
        teacher_path = None
        if tmodel is not None:
            teacher_path = tmp / "teacher.onnx"
            _export_teacher(tmodel, tcfg, teacher_path, summary, check)
        protos = {}
        for flavour in ("standard",) if is_fp else ops:
            path = tmp / ("model.onnx" if is_fp else f"student.{flavour}.onnx")
            res = _export_student(model, cfg, path, flavour, att_bias, float_params, teacher_path, summary, check)
            protos[flavour] = res.proto
        summary.storage = _storage_summary(model, summary, protos, att_bias, float_params, x, is_fp)
        _rebase_summary(summary, tmp, out)
        write_json(tmp / "export.json", summary.to_dict())
    return summary


@dataclass
class _Validation:
    """What validating an export compares on: the val images ``x`` and the tolerances."""

    x: np.ndarray
    rtol: float
    atol: float
    max_outliers: int

    def run(self, model: Any, path: Path, proto: Any) -> dict[str, Any]:
        """validate_onnx of the export at ``path`` (in memory: ``proto``) against ``model``."""
        from bvit_edge.export import validate_onnx

        report = validate_onnx(
            model, path, self.x, rtol=self.rtol, atol=self.atol, max_outliers=self.max_outliers, proto=proto
        )
        return report.to_dict()


def _image_shape(cfg: dict[str, Any]) -> tuple[int, int, int, int]:
    return (1, 3, int(cfg["image_size"]), int(cfg["image_size"]))


def _recorded_teacher(teacher: Any, cfg: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """The teacher to export beside a student: ``teacher``, else the one its training config records."""
    source = teacher if teacher is not None else (cfg.get("train_config") or {}).get("teacher")
    if not source:
        return None, None
    try:
        return load_frozen(source)
    except CheckpointError as exc:
        raise CheckpointError(f"The teacher {source} recorded for this student cannot be loaded: {exc}") from exc


def _export_teacher(tmodel: Any, tcfg: Any, path: Path, summary: ExportSummary, check: _Validation | None) -> None:
    """The teacher as plain ONNX (its data description included), validated when ``check`` is given."""
    from bvit_edge.export import export_teacher_onnx

    res = export_teacher_onnx(tmodel, path, input_shape=_image_shape(tcfg), data=tcfg)
    summary.teacher = res.to_dict()
    if check is not None:
        summary.validation["teacher"] = check.run(tmodel, path, res.proto)


def _export_student(
    model: Any,
    cfg: dict[str, Any],
    path: Path,
    flavour: str,
    att_bias: str,
    float_params: str,
    teacher_path: Path | None,
    summary: ExportSummary,
    check: _Validation | None,
) -> Any:
    """One flavour of the student (its data description included), validated against the model the file
    computes (its tensors decoded from their storage) and measured (size report), from the model in memory."""
    from bvit_edge.export import export_onnx, size_report
    from bvit_edge.export.storage import apply_to_model, state_names

    res = export_onnx(
        model,
        path,
        ops=flavour,
        input_shape=_image_shape(cfg),
        att_bias=att_bias,
        float_params=float_params,
        data=cfg,
    )
    summary.student[flavour] = res.to_dict()
    if check is not None:
        summary.validation[flavour] = check.run(apply_to_model(model, res.encoded), path, res.proto)
    summary.size[flavour] = size_report(path, teacher_path, state_names(model), proto=res.proto).to_dict()
    return res


def _rebase_summary(summary: ExportSummary, tmp: Path, out: Path) -> None:
    """Every path in ``summary`` under the temporary folder ``tmp`` pointing into ``out`` instead."""
    for part in (summary.student, summary.validation, summary.size, summary.storage):
        part.update(_rebased(part, tmp, out))
    if summary.teacher:
        summary.teacher = _rebased(summary.teacher, tmp, out)


def _rebased(obj: Any, tmp: Path, final: Path) -> Any:
    """``obj`` with every path string under the temporary folder ``tmp`` pointing into ``final`` instead."""
    if isinstance(obj, dict):
        return {k: _rebased(v, tmp, final) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebased(v, tmp, final) for v in obj]
    if isinstance(obj, str) and (obj == str(tmp) or obj.startswith(str(tmp) + os.sep)):
        return str(final) + obj[len(str(tmp)) :]
    return obj


def storage_choices() -> list[tuple[str, str]]:
    """The (att_bias, float_params) choices the export measures: every att_bias with float32 float params,
    and every att_bias with float16 float params."""
    from bvit_edge.export.storage import ATT_BIAS_CHOICES, FLOAT_PARAMS_CHOICES

    return [(a, f) for f in FLOAT_PARAMS_CHOICES for a in ATT_BIAS_CHOICES]


def storage_fidelity(
    onnx_path: str | os.PathLike[str],
    x: np.ndarray,
    tensors: dict[str, np.ndarray],
    choices: list[tuple[str, str]] | None = None,
    threads: int | None = None,
    batch_size: int = 120,
    proto: Any = None,
) -> dict[str, dict[str, Any]]:
    """For each (att_bias, float_params) storage choice: the exported file re-encoded that way, run by
    onnxruntime on images ``x``, against the same file with every tensor in float32 (its compact tensors
    decoded and replaced by the model's own float32 values, ``tensors``: name -> array, the model's state):
    max |logit difference|, top-1 agreement, and the file's bytes. (A standard export runs in onnxruntime at
    full speed; a packed one through the numpy reference ops.) ``proto``: the exported model already in
    memory, used instead of reading ``onnx_path``."""
    import tempfile

    import onnx

    from bvit_edge.export.onnxruntime_session import load_model as load_onnx
    from bvit_edge.export.onnxruntime_session import ort_session, run_session
    from bvit_edge.export.storage import compact_proto, decompacted, restore_float32

    base = restore_float32(decompacted(proto if proto is not None else load_onnx(Path(onnx_path))), tensors)
    state_names = list(tensors)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bvit-edge-storage-") as tmp:

        def logits(proto: onnx.ModelProto, name: str) -> tuple[np.ndarray, int]:
            path = Path(tmp) / f"{name}.onnx"
            data = proto.SerializeToString()
            path.write_bytes(data)
            return run_session(ort_session(path, threads=threads), x, batch_size)[0], len(data)

        ref, _ = logits(base, "float32")
        for att_bias, float_params in choices or storage_choices():
            work = onnx.ModelProto()
            work.CopyFrom(base)
            report, _ = compact_proto(work, att_bias, float_params, state_names)
            got, nbytes = logits(work, f"{att_bias}_{float_params}") if report.tensors else (ref, base.ByteSize())
            diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
            agree = got.argmax(1) == ref.argmax(1)
            out[f"att_bias={att_bias},float_params={float_params}"] = {
                "att_bias": att_bias,
                "float_params": float_params,
                "n_images": int(x.shape[0]),
                "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
                "top1_agreement": float(agree.mean()),
                "top1_mismatches": int((~agree).sum()),
                "file_bytes": nbytes,
            }
    return out


def _storage_summary(
    model: Any,
    summary: ExportSummary,
    protos: dict[str, Any],
    att_bias: str,
    float_params: str,
    x: np.ndarray | None,
    is_fp: bool,
) -> dict[str, Any]:
    """The storage section of export.json: the choice, bytes of each file under every choice, fidelity."""
    doc: dict[str, Any] = {"att_bias": att_bias, "float_params": float_params, "bytes": {}}
    for flavour in summary.student:
        if summary.size.get(flavour, {}).get("storage_bytes"):
            doc["bytes"][flavour] = summary.size[flavour]["storage_bytes"]
    if x is not None and not is_fp and summary.student:
        flavour = "standard" if "standard" in summary.student else next(iter(summary.student))
        tensors = {
            n: t.detach().cpu().numpy()
            for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t is not None and t.is_floating_point()
        }
        doc["fidelity"] = storage_fidelity(summary.student[flavour]["path"], x, tensors, proto=protos.get(flavour))
        doc["fidelity_reference"] = (
            f"the {flavour} export with every tensor stored as float32, in onnxruntime, on the val images"
        )
    return doc


def bench_report(
    result: Any,
    out_dir: str | os.PathLike[str],
    student_artifact: str | os.PathLike[str],
    teacher_onnx: str | os.PathLike[str] | None = None,
    student_onnx: str | os.PathLike[str] | None = None,
    data: str | None = None,
    data_root: str | None = None,
    limit: int | None = None,
    rpc: str | None = None,
    session: Any = None,
    teacher_int8_onnx: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Render a bench result as a report (JSON + Markdown + PNG) in ``out_dir``; with ``data``, add each
    model's accuracy on the val split (the int8 teacher's too, from ``teacher_int8_onnx``, else quantized
    again from ``teacher_onnx`` as the bench did) and the fidelity ONNX reference -> compiled artifact.
    ``out_dir`` follows bvit_edge.output_folder's rule (``overwrite`` replaces a folder that is not a
    report's)."""
    from bvit_edge.output_folder import check_output_folder, output_folder
    from bvit_edge.report import load_report, write_report
    from bvit_edge.report.quality import accuracy_entry, fidelity_entry
    from bvit_edge.report.render import render_into
    from bvit_edge.runtime.run import predict

    out = Path(out_dir)
    check_output_folder(out, "report", overwrite, option="--report")
    doc = result.to_report()
    if data:
        kw: dict[str, Any] = dict(data=data, data_root=data_root, limit=limit, top_k=1, return_logits=True)
        student = predict(student_artifact, rpc=rpc, session=session, **kw)
        teacher = predict(teacher_onnx, **kw) if teacher_onnx else None
        reference = predict(student_onnx, **kw) if student_onnx else None
        baseline = None
        if any(m["role"] == "baseline" for m in doc["models"]):
            baseline = _int8_teacher_predictions(teacher_int8_onnx, teacher_onnx, kw)
        for m in doc["models"]:
            res = {"student": student, "teacher": teacher, "baseline": baseline}[m["role"]]
            if res is None:
                continue
            m["accuracy"] = accuracy_entry(res["accuracy"], res["num_images"])
            if m["role"] == "student" and reference is not None:
                m["fidelity"] = fidelity_entry(fidelity(reference["logits"], student["logits"]))
    with output_folder(out, "report", overwrite, option="--report") as tmp:
        write_report(tmp / "report.json", doc)
        render_into(load_report(tmp / "report.json"), tmp)
    return doc


def _int8_teacher_predictions(int8_onnx: Any, teacher_onnx: Any, kw: dict[str, Any]) -> dict[str, Any] | None:
    """predict() of the int8 teacher: the given file, else ``teacher_onnx`` quantized again (deterministic)."""
    import tempfile

    from bvit_edge.export.int8_teacher import quantize_teacher
    from bvit_edge.runtime.run import predict

    if int8_onnx:
        return predict(int8_onnx, **kw)
    if not teacher_onnx:
        return None
    with tempfile.TemporaryDirectory(prefix="bvit-edge-report-") as tmp:
        path = quantize_teacher(teacher_onnx, Path(tmp) / "teacher.int8.onnx").path
        return predict(path, **kw)
