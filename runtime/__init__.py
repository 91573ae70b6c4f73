"""Lowering through TVM (compile), artifacts (load, run) and benchmarks; see the modules."""

from bvit_edge.runtime.threadpool import ensure_thread_limit as _ensure_thread_limit

_ensure_thread_limit()  # before any TVM thread pool starts: see bvit_edge.runtime.threadpool
