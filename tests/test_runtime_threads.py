"""threads=N means N threads in TVM's pool: bvit_edge.runtime sets TVM_NUM_THREADS to the physical cores
before the pool starts (TVM alone halves the logical CPUs on x86, which gave 1 worker on a 2-core VM)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bvit_edge.runtime.threadpool import ensure_thread_limit, physical_cores


def test_physical_cores_counts_sibling_groups_once():
    n = physical_cores()
    assert 1 <= n <= (os.cpu_count() or 1)
    assert physical_cores({0}) == 1


def test_a_thread_limit_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert ensure_thread_limit() == 3 and os.environ["TVM_NUM_THREADS"] == "3"
    monkeypatch.delenv("TVM_NUM_THREADS")
    assert ensure_thread_limit() == physical_cores()


def test_importing_the_runtime_lets_tvm_use_every_physical_core():
    """A fresh process without TVM_NUM_THREADS: after `import bvit_edge.runtime`, TVM's pool takes every
    physical core when asked, and 1 when asked for 1."""
    pytest.importorskip("tvm")
    code = (
        "import bvit_edge.runtime, tvm\n"
        "from bvit_edge.runtime.threadpool import physical_cores\n"
        "pool = tvm.get_global_func('runtime.config_threadpool'); nt = tvm.get_global_func('runtime.NumThreads')\n"
        "n = physical_cores(); pool(0, n); a = nt(); pool(0, 1); print(n, a, nt())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    n, all_, one = map(int, out.stdout.split())
    assert all_ == n and one == 1
