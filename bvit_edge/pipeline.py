"""Checkpoint-level steps the CLI and the demo share: export a trained checkpoint (student and teacher) with
its data description, validate it on real images, and gather accuracy / fidelity along
torch -> ONNX reference -> compiled artifact.

The low-level pieces live in bvit_edge.export (ONNX), bvit_edge.runtime (onnxruntime, TVM) and
bvit_edge.training.checkpoint; this module only wires them to checkpoints and data sets.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.atomic import write_bytes, write_json
from bvit_edge.contract import DATA_METADATA as META  # ONNX metadata keys the compiler copies into the manifest
from bvit_edge.errors import CheckpointError, UsageError


@dataclass
class ExportSummary:
    out_dir: str
    student: dict[str, Any] = field(default_factory=dict)  # flavour -> ExportResult dict
    teacher: dict[str, Any] | None = None
    validation: dict[str, Any] = field(default_factory=dict)  # flavour -> ValidationReport dict
    size: dict[str, Any] = field(default_factory=dict)  # flavour -> SizeReport dict

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_metadata(onnx_path: str | os.PathLike[str], cfg: dict[str, Any]) -> None:
    """Record the checkpoint's normalisation, classes and input size in the ONNX file (atomically)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    values = {k: cfg.get(k) for k in META}
    keep = [p for p in proto.metadata_props if p.key not in META.values()]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in values.items():
        if v is not None:
            proto.metadata_props.add(key=META[k], value=json.dumps(v))
    write_bytes(onnx_path, proto.SerializeToString())


def val_inputs(cfg: dict[str, Any], limit: int | None = None, data: str | None = None, data_root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised val images [N, 3, S, S] float32 and labels of the data set a checkpoint was trained on."""
    import torch

    from bvit_edge.data import load_dataset

    dcfg = cfg.get("data") or {}
    name = data or dcfg.get("name") or "digits"
    root = data_root if data_root is not None else dcfg.get("root")
    splits = load_dataset(name, root=root, image_size=int(cfg["image_size"]))
    n = len(splits.val) if limit is None else min(limit, len(splits.val))
    xs = torch.stack([splits.val[i][0] for i in range(n)])
    ys = np.array([int(splits.val[i][1]) for i in range(n)])
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    return ((xs - mean) / std).numpy().astype(np.float32), ys


def _load_frozen(checkpoint: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    from bvit_edge.training.checkpoint import load_model

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
    overwrite: bool = False,
) -> ExportSummary:
    """Export a checkpoint to OUT/student.<ops>.onnx (binary models are frozen first) and its teacher to
    OUT/teacher.onnx (plain ONNX), validate each against torch on the val split, report sizes.

    ``teacher`` defaults to the teacher recorded in the checkpoint's training config (if any).
    ``max_outliers``: how many images may differ beyond the tolerance (top-1 must still agree on all): a
    binarizer input within float rounding of its threshold can flip one bit between runtimes.
    ``out_dir`` follows bvit_edge.output_folder's rule (new, empty or an export folder written before;
    ``overwrite`` replaces anything else) and is written as a whole, atomically."""
    from bvit_edge.export import export_onnx, export_teacher_onnx, size_report, validate_onnx
    from bvit_edge.output_folder import check_output_folder, output_folder

    out = Path(out_dir)
    inputs = (checkpoint, teacher)
    check_output_folder(out, "export", overwrite, inputs=inputs)
    for flavour in ops:
        if flavour not in ("packed", "standard"):
            raise UsageError(f"Unknown --ops {flavour!r}: use packed or standard.")
    model, cfg = _load_frozen(checkpoint)
    is_fp = cfg.get("method", "fp") == "fp"
    shape = (1, 3, int(cfg["image_size"]), int(cfg["image_size"]))
    summary = ExportSummary(out_dir=str(out))
    x = y = None
    if validate:
        x, y = val_inputs(cfg, limit)

    tsrc = teacher if teacher is not None else (cfg.get("train_config") or {}).get("teacher")
    tmodel = tcfg = None
    if tsrc and not is_fp:
        try:
            tmodel, tcfg = _load_frozen(tsrc)
        except CheckpointError as exc:
            raise CheckpointError(f"The teacher {tsrc} recorded for this student cannot be loaded: {exc}") from exc
    with output_folder(out, "export", overwrite, inputs=inputs) as tmp:
        teacher_path = None
        if tmodel is not None:
            teacher_path = tmp / "teacher.onnx"
            res = export_teacher_onnx(tmodel, teacher_path, input_shape=shape)
            add_metadata(teacher_path, tcfg)
            summary.teacher = res.to_dict()
            if validate:
                summary.validation["teacher"] = validate_onnx(tmodel, teacher_path, x, rtol=rtol, atol=atol,
                                                              max_outliers=max_outliers).to_dict()

        flavours = ("standard",) if is_fp else ops
        for flavour in flavours:
            path = tmp / ("model.onnx" if is_fp else f"student.{flavour}.onnx")
            res = export_onnx(model, path, ops=flavour, input_shape=shape)
            add_metadata(path, cfg)
            summary.student[flavour] = res.to_dict()
            if validate:
                summary.validation[flavour] = validate_onnx(model, path, x, rtol=rtol, atol=atol,
                                                            max_outliers=max_outliers).to_dict()
            summary.size[flavour] = size_report(path, teacher_path).to_dict()
        for part in (summary.student, summary.validation, summary.size):
            part.update(_rebased(part, tmp, out))
        if summary.teacher:
            summary.teacher = _rebased(summary.teacher, tmp, out)
        write_json(tmp / "export.json", summary.to_dict())
    return summary


def _rebased(obj: Any, tmp: Path, final: Path) -> Any:
    """``obj`` with every path string under the temporary folder ``tmp`` pointing into ``final`` instead."""
    if isinstance(obj, dict):
        return {k: _rebased(v, tmp, final) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebased(v, tmp, final) for v in obj]
    if isinstance(obj, str) and (obj == str(tmp) or obj.startswith(str(tmp) + os.sep)):
        return str(final) + obj[len(str(tmp)):]
    return obj


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    top = np.argsort(-logits, axis=1)[:, :5]
    return {"top1": float((top[:, 0] == labels).mean()), "top5": float((top == labels[:, None]).any(1).mean())}


def fidelity(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    scale = np.maximum(np.abs(reference).astype(np.float64), 1e-12)
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / scale).max()),
        "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
    }


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
    overwrite: bool = False,
) -> dict[str, Any]:
    """Render a bench result as a report (JSON + Markdown + PNG) in ``out_dir``; with ``data``, add each
    model's accuracy on the val split and the fidelity ONNX reference -> compiled artifact. ``out_dir``
    follows bvit_edge.output_folder's rule (``overwrite`` replaces a folder that is not a report's)."""
    from bvit_edge.output_folder import check_output_folder, output_folder
    from bvit_edge.report import load_report, write_report
    from bvit_edge.report.render import render_into
    from bvit_edge.runtime.run import predict

    out = Path(out_dir)
    check_output_folder(out, "report", overwrite, option="--report")
    doc = result.to_report()
    if data:
        kw = dict(data=data, data_root=data_root, limit=limit, top_k=1, return_logits=True)
        student = predict(student_artifact, rpc=rpc, session=session, **kw)
        teacher = predict(teacher_onnx, **kw) if teacher_onnx else None
        reference = predict(student_onnx, **kw) if student_onnx else None
        for m in doc["models"]:
            res = student if m["role"] == "student" else teacher
            if res is None:
                continue
            m["accuracy"] = {"split": "val", "n_images": res["num_images"], "top1_pct": res["accuracy"]["top1"] * 100,
                             "top5_pct": res["accuracy"]["top5"] * 100}
            if m["role"] == "student" and reference is not None:
                fid = fidelity(reference["logits"], student["logits"])
                m["fidelity"] = {"reference": "onnx", "compared": "tvm", "max_abs_diff": fid["max_abs_diff"],
                                 "top1_agreement_pct": fid["top1_agreement"] * 100}
    with output_folder(out, "report", overwrite, option="--report") as tmp:
        write_report(tmp / "report.json", doc)
        render_into(load_report(tmp / "report.json"), tmp)
    return doc
