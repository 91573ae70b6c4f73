"""Optional meta_schedule tuning of the float ops (``compile_model(..., tune=N)``).

The recipe that works with TVM 0.27: legalize and fuse first (tuning the raw import finds "No tasks to
tune"), tune the float prim funcs only (the binary kernels carry their own schedules and are left out of
the task list), store the records in a JSON database, then compile the original module with
``relax.transform.MetaScheduleApplyDatabase`` ahead of the rule-based schedules (which then fill in any
func the database has no record for). The cost model is the random one unless xgboost is installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bvit_edge.errors import ConfigError, MissingDependencyError, ToolchainError

MIN_TRIALS = 32  # meta_schedule needs at least this many trials per task to find anything


def _cost_model() -> str:
    try:
        import xgboost  # noqa: F401, PLC0415

        return "xgb"
    except ImportError:
        return "random"


def tune_float_ops(mod: Any, target: Any, work_dir: str | os.PathLike[str], trials: int, fast_math: bool) -> Path:
    """Tune the float prim funcs of ``mod`` (a Relax module as imported) for ``target``; returns work_dir."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415
    from tvm.relax.backend.cpu_generic import pipeline as cpu  # noqa: PLC0415

    try:
        from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependencyError(f"tuning needs TVM's meta_schedule and its dependencies ({exc}): "
                                     "pip install psutil cloudpickle (xgboost optional, --no-deps).") from None
    if trials < MIN_TRIALS:
        raise ConfigError(f"tune={trials}: meta_schedule needs at least {MIN_TRIALS} trials; use tune>={MIN_TRIALS} "
                          "or tune=0 (rule-based schedules).")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with target:
        passes = ([relax.transform.FastMathTransform()] if fast_math else []) + cpu.legalize_passes(target)
        lowered = tvm.transform.Sequential(passes)(mod)
    tasks = ms.relax_integration.extract_tasks(lowered, target)
    names = [t.task_name for t in tasks if not t.task_name.startswith("bvit_")]
    if not names:
        return work_dir
    try:
        ms.relax_integration.tune_relax(
            lowered, params={}, target=target, work_dir=str(work_dir), max_trials_global=trials * len(names),
            max_trials_per_task=trials, op_names=names, num_trials_per_iter=min(64, trials),
            cost_model=_cost_model(),
        )
    except Exception as exc:  # noqa: BLE001
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ToolchainError(f"meta_schedule tuning failed: {last}. Compile with tune=0.") from exc
    return work_dir


def apply_database_pass(work_dir: str | os.PathLike[str]) -> Any:
    """The pass that applies the tuned records in ``work_dir`` (funcs without a record are left alone)."""
    from tvm import relax  # noqa: PLC0415

    return relax.transform.MetaScheduleApplyDatabase(str(work_dir))
