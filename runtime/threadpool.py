"""Size TVM's CPU thread pool before it starts, so ``threads=N`` means N.

TVM's runtime reads its maximum thread count once, when its thread pool starts: ``TVM_NUM_THREADS`` if set,
else on x86 *half* the logical CPUs (it assumes two hyper-threads per core). On a VM whose vCPUs are whole
cores (``lscpu``: 1 thread per core, as on these 2-core machines) that gave one worker, so asking for 2 threads
silently ran 1; and without the variable each parallel kernel was handed to that one worker thread instead of
running in the calling thread (measured: a 14 us kernel took 27 us). :func:`ensure_thread_limit` sets
``TVM_NUM_THREADS`` to the physical cores this process may use (CPU affinity, one per core's sibling group),
unless the user set it; ``runtime.config_threadpool(0, n)`` then selects any n up to that.
"""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores(cpus: set[int] | None = None) -> int:
    """Number of physical cores among ``cpus`` (default: this process's affinity): logical CPUs that are
    hyper-thread siblings count once (Linux sysfs topology; all CPUs count when it cannot be read)."""
    if cpus is None:
        try:
            cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    groups = set()
    for c in cpus:
        sib = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        try:
            groups.add(sib.read_text().strip())
        except OSError:
            groups.add(str(c))
    return max(1, len(groups))


def ensure_thread_limit() -> int:
    """Set ``TVM_NUM_THREADS`` (if unset) to :func:`physical_cores` before TVM's pool starts; the limit in force."""
    if not os.environ.get("TVM_NUM_THREADS"):
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())
    return int(os.environ["TVM_NUM_THREADS"])
