"""The onnxruntime session for bvit-edge exports, under the runtime's name.

The session (packed ``bvit_edge`` ops as onnxruntime-extensions Python ops) lives in
:mod:`bvit_edge.export.onnxruntime_session`, where export's validation and size report use it too (export
imports no runtime); ``bvit-edge run`` and ``bench`` reach it from here.
"""

from __future__ import annotations

from bvit_edge.export.onnxruntime_session import (
    CheckedSession,
    load_model,
    ort_run,
    ort_session,
    rewrite_for_extensions,
    run_session,
    uses_bvit_ops,
)

__all__ = [
    "CheckedSession",
    "load_model",
    "ort_run",
    "ort_session",
    "rewrite_for_extensions",
    "run_session",
    "uses_bvit_ops",
]
