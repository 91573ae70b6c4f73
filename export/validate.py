"""Validation of an ONNX export against the frozen torch model, in the manner of Optimum.

Order: output names, then shapes, then values, on real inputs. Each failure is a named
:class:`bvit_edge.errors.ValidationError` (exit code 3) that states the difference:

* :class:`OutputNameMismatch`  the session's output names differ from the expected ones;
* :class:`ShapeMismatch`       an output's shape differs from the torch output's;
* :class:`ValueMismatch`       max |onnx - torch| > atol + rtol * max |torch|, or top-1 differs.

The relative difference reported is ``max|onnx - torch| / max|torch|`` (relative to the output's scale:
elementwise relative errors of logits near 0 say nothing).

Why ``max_outliers`` exists: a binary network is discontinuous. torch and onnxruntime compute the float
parts (LayerNorm, softmax, GELU) with different summation orders, so their results differ in the last bit;
when a binarizer input lies within that rounding of its threshold (|x'| ~ 1e-7 for sgn), the two runtimes
take different bits and that input's logits differ visibly although both are correct to the contract. The
report counts such inputs (``inputs_beyond_tolerance``); the default tolerates none.

A tie is recognised, not assumed: each input beyond tolerance is probed (:func:`tie_probe`) by running the
torch model on it again with the input multiplied by (1 + 1e-6 u), u random signs, :data:`PROBES` times. An
input whose torch output moves beyond the tolerance under such a perturbation sits on a discontinuity
(a binarizer input within rounding of its threshold): there, two correct runtimes may legitimately give
different outputs, even a different top-1, and it is accepted when the ONNX output is one of the outputs the
torch model takes under the perturbations. An input that is stable under the probe must match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.errors import UsageError, ValidationError


class OutputNameMismatch(ValidationError):
    """The exported model's output names are not the expected ones."""


class ShapeMismatch(ValidationError):
    """An exported output has a different shape from the torch model's output."""


class ValueMismatch(ValidationError):
    """Exported outputs differ from the torch model's beyond tolerance (or the top-1 class differs)."""


#: perturbations per probed input, and their relative size
PROBES = 8
PROBE_EPS = 1e-6


@dataclass
class ValidationReport:
    """Fidelity of an export on ``num_inputs`` real inputs (max differences over every output)."""

    onnx_path: str
    num_inputs: int
    output_names: list[str]
    output_shapes: list[list[int]]
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    top1_mismatches: int
    inputs_beyond_tolerance: int
    rtol: float
    atol: float
    max_outliers: int
    passed: bool
    #: inputs beyond tolerance whose torch output is unstable at rounding scale (ties), with the ONNX output
    #: among the perturbed torch outputs; their top-1 may differ
    ties: list[int] | None = None
    top1_mismatches_on_ties: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def torch_outputs(model: Any, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """Eval-mode outputs of ``model`` on ``x`` in chunks (a tuple output gives several arrays)."""
    import torch

    model.eval()
    outs: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            y = model(torch.from_numpy(x[i : i + batch_size]))
            ys = list(y) if isinstance(y, (tuple, list)) else [y]
            outs.append([_as_numpy(t) for t in ys])
    return [np.concatenate([o[k] for o in outs], axis=0) for k in range(len(outs[0]))]


def per_input_max_diff(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> np.ndarray:
    """max |got - ref| per input (axis 0), over every output: float64 [B]."""
    diffs = [
        np.abs(g.astype(np.float64) - r.astype(np.float64)).reshape(g.shape[0], -1).max(axis=1)
        for g, r in zip(got, ref, strict=True)
    ]
    return np.max(np.stack(diffs), axis=0)


def compare_outputs(
    got: Sequence[np.ndarray], ref: Sequence[np.ndarray], names: Sequence[str], rtol: float, atol: float
) -> tuple[float, float, float, int]:
    """Shapes then values; returns (max_abs, max_rel, top1_agreement, top1_mismatches) or raises."""
    for name, g, r in zip(names, got, ref, strict=True):
        if tuple(g.shape) != tuple(r.shape):
            raise ShapeMismatch(
                f"Output {name!r} has shape {list(g.shape)} in ONNX but {list(r.shape)} in torch. The export "
                "traced a different graph (a static batch? a different head layout?): export again."
            )
    max_abs, max_rel = 0.0, 0.0
    for g, r in zip(got, ref, strict=True):
        diff = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if g.size else 0.0
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
    g0, r0 = got[0], ref[0]
    if g0.ndim == 2 and g0.shape[0] > 0:
        agree = g0.argmax(axis=1) == r0.argmax(axis=1)
        top1, mism = float(agree.mean()), int((~agree).sum())
    else:
        top1, mism = 1.0, 0
    return max_abs, max_rel, top1, mism


def validate_onnx(
    model: Any,
    onnx_path: str | Path,
    inputs: Any,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    expected_output_names: Sequence[str] | None = ("logits",),
    threads: int | None = None,
    batch_size: int = 64,
    max_outliers: int = 0,
    proto: Any = None,
) -> ValidationReport:
    """Check the export at ``onnx_path`` against the (frozen) torch ``model`` on ``inputs`` [B, C, H, W].

    Passes when the names match, shapes match, max |onnx - torch| <= atol + rtol * max |torch| for every
    output and the top-1 class (argmax of the first output) agrees on every input. ``max_outliers``
    inputs may exceed the value tolerance as long as their top-1 agrees, or, for a proven binarization tie
    (see the module docstring), even when it does not. Raises the named mismatch error otherwise; returns the
    report when it passes. ``proto``: the exported model already in memory (``ExportResult.proto``), run
    instead of reading ``onnx_path`` again.
    """
    from bvit_edge.export.onnxruntime_session import ort_session, run_session

    x = _as_numpy(inputs)
    if x.ndim != 4 or x.shape[0] == 0:
        raise UsageError(f"Validation inputs must be a non-empty batch [B, C, H, W], got shape {list(x.shape)}.")
    session = ort_session(onnx_path, threads=threads, proto=proto)
    names = [o.name for o in session.get_outputs()]
    if expected_output_names is not None and list(names) != list(expected_output_names):
        raise OutputNameMismatch(
            f"{str(onnx_path)!r} has outputs {names}, expected {list(expected_output_names)}. Export with "
            "bvit_edge.export.export_onnx (it names the output 'logits')."
        )
    ref = torch_outputs(model, x, batch_size)
    if len(ref) != len(names):
        raise OutputNameMismatch(
            f"{str(onnx_path)!r} has {len(names)} outputs {names}; the torch model gives {len(ref)}."
        )
    got = run_session(session, x, batch_size)
    max_abs, max_rel, top1, mism = compare_outputs(got, ref, names, rtol, atol)
    scale = max(float(np.max(np.abs(r))) if r.size else 0.0 for r in ref)
    tol = atol + rtol * scale
    outliers = np.flatnonzero(per_input_max_diff(got, ref) > tol)
    beyond = int(outliers.size)
    ties: list[int] = []
    if 0 < beyond <= max_outliers:
        ties = [int(i) for i in outliers if tie_probe(model, x[i], [g[i] for g in got], tol)]
    flipped: list[int] = (
        np.flatnonzero(got[0].argmax(axis=1) != ref[0].argmax(axis=1)).tolist() if got[0].ndim == 2 else []
    )
    on_ties = int(sum(1 for i in flipped if int(i) in ties))
    passed = beyond <= max_outliers and mism == on_ties
    report = ValidationReport(
        onnx_path=str(onnx_path),
        num_inputs=int(x.shape[0]),
        output_names=names,
        output_shapes=[list(g.shape) for g in got],
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        top1_agreement=top1,
        top1_mismatches=mism,
        inputs_beyond_tolerance=beyond,
        rtol=rtol,
        atol=atol,
        max_outliers=int(max_outliers),
        passed=passed,
        ties=ties,
        top1_mismatches_on_ties=on_ties,
    )
    if not passed:
        raise ValueMismatch(
            f"{str(onnx_path)!r} differs from the torch model on {x.shape[0]} inputs: max abs diff "
            f"{max_abs:.3g}, max rel diff {max_rel:.3g} (allowed {atol:g} + {rtol:g} x {scale:.3g}); "
            f"{beyond} input(s) beyond tolerance ({max_outliers} allowed, {len(ties)} of them proven ties), top-1 "
            f"differs on {mism} ({on_ties} on ties). Check that the model was frozen before export and that the "
            "export is of this model; a few isolated inputs are binarization ties between runtimes "
            "(max_outliers)."
        )
    return report


def tie_probe(
    model: Any,
    x: np.ndarray,
    onnx_out: Sequence[np.ndarray],
    tol: float,
    probes: int = PROBES,
    eps: float = PROBE_EPS,
    seed: int = 0,
) -> bool:
    """True when input ``x`` [C, H, W] is a tie (module docstring): under ``probes`` perturbations
    x (1 + eps u), u random signs, the torch output moves beyond ``tol``, and the ONNX output ``onnx_out`` is
    within ``tol`` of the torch output at some perturbation (or at x itself)."""
    rng = np.random.default_rng(seed)
    base = torch_outputs(model, x[None])
    seen = [base]
    moved = False
    for _ in range(probes):
        u = rng.choice(np.array([-1.0, 1.0], np.float32), size=x.shape)
        out = torch_outputs(model, (x * (1 + np.float32(eps) * u)).astype(np.float32)[None])
        moved |= float(per_input_max_diff(out, base)[0]) > tol
        seen.append(out)
    want = [o[None] for o in onnx_out]
    return moved and any(float(per_input_max_diff(want, s)[0]) <= tol for s in seen)


__all__ = [
    "OutputNameMismatch",
    "ShapeMismatch",
    "ValidationReport",
    "ValueMismatch",
    "compare_outputs",
    "per_input_max_diff",
    "tie_probe",
    "torch_outputs",
    "validate_onnx",
]
