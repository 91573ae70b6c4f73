"""The onnxruntime session for bvit-edge exports, under the runtime's name.

The session (packed ``bvit_edge`` ops as onnxruntime-extensions Python ops) lives in
:mod:`bvit_edge.export.onnxruntime_session`, where export's validation and size report use it too (export
imports no runtime); ``bvit-edge run`` and ``bench`` reach it from here.
"""

from __future__ import annotations

from bvit_edge.export.onnxruntime_session import CheckedSession as CheckedSession
from bvit_edge.export.onnxruntime_session import load_model as load_model
from bvit_edge.export.onnxruntime_session import ort_run as ort_run
from bvit_edge.export.onnxruntime_session import ort_session as ort_session
from bvit_edge.export.onnxruntime_session import rewrite_for_extensions as rewrite_for_extensions
from bvit_edge.export.onnxruntime_session import run_session as run_session
from bvit_edge.export.onnxruntime_session import uses_bvit_ops as uses_bvit_ops
