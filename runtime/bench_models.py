"""The models of a benchmark loaded and run once, ready to be timed (:class:`LoadedModel`): a TVM artifact,
locally or on the board of an RPC session (:func:`load_tvm`), or an .onnx in onnxruntime (:func:`load_ort`).
Load and first run are timed here, each on its own; the steady state is timed by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.digest import sha256_file
from bvit_edge.errors import BvitEdgeError, ToolchainError
from bvit_edge.runtime.bench_record import SideResult, compile_seconds, output_shape
from bvit_edge.runtime.board_session import set_remote_threads
from bvit_edge.runtime.timing import Timing, time_once

__all__ = ["LoadedModel", "load_ort", "load_tvm"]


@dataclass
class LoadedModel:
    """A model loaded and run once, ready to be timed: ``call`` runs it on the prepared input (local), or
    ``evaluate(warmup, runs)`` times it on the board (RPC). ``facts``: the fields of its
    :class:`~bvit_edge.runtime.bench_record.SideResult` known before the steady state (role, runtime, path,
    shapes, compile / load / first-run times, model digest)."""

    facts: dict[str, Any]
    call: Callable[[], Any] | None = None
    evaluate: Callable[[int, int], Timing] | None = None

    @property
    def role(self) -> str:
        return str(self.facts["role"])

    def result(self, steady: Timing, timer: str) -> SideResult:
        """Its side of the result, with the steady state measured by ``timer``."""
        return SideResult(**self.facts, steady=steady, timer=timer)


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def load_tvm(
    folder: Path, manifest: dict[str, Any], role: str, x_norm: np.ndarray, session: Any, threads: int | None
) -> LoadedModel:
    """Load and first run of a TVM artifact (bvit_edge.runtime.artifact.load_artifact), locally or on the RPC
    ``session``'s board."""
    import tvm

    from bvit_edge.runtime.artifact import load_artifact

    if session is not None:
        from bvit_edge.targets import rpc as rpc_client

        rpc_client.check_arch(session, manifest["target"]["arch"], what=f"the {role} artifact {folder}")
        set_remote_threads(session, threads)
    where = "on the board" if session is not None else "on this host"
    try:
        load_ms, art = time_once(
            lambda: load_artifact(folder, threads=threads) if session is None else load_artifact(folder, session)
        )
    except BvitEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
        raise ToolchainError(f"Loading the {role} artifact {folder} {where} failed: {_last_line(exc)}") from None
    vm, device, params = art.vm, art.device, art.params

    def failed(exc: BaseException) -> ToolchainError:
        return ToolchainError(f"Running the {role} artifact {folder} {where} failed: {_last_line(exc)}")

    try:
        arg = tvm.runtime.tensor(x_norm, device=device)
        main = vm["main"]
        first_ms, y = time_once(lambda: main(arg, *params))
        out_shape = output_shape(y)
    except BvitEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
        raise failed(exc) from None

    def call() -> Any:
        return main(arg, *params)

    def evaluate(warmup: int, runs: int) -> Timing:
        try:
            vm.set_input("main", arg, *params)
            evaluator = vm.time_evaluator("invoke_stateful", device, number=1, repeat=warmup + runs)
            seconds = list(evaluator("main").results)
        except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
            raise failed(exc) from None
        return Timing.from_samples_ms([t * 1e3 for t in seconds[warmup:]], warmup=warmup + 1)

    facts = {
        "role": role,
        "runtime": "tvm",
        "path": str(folder),
        "input_shape": list(manifest["input"]["shape"]),
        "output_shape": out_shape,
        "compile_s": compile_seconds(manifest),
        "load_ms": load_ms,
        "first_run_ms": first_ms,
        "model_sha256": (manifest.get("model") or {}).get("sha256"),
    }
    if session is None:
        return LoadedModel(facts, call=call)
    return LoadedModel(facts, evaluate=evaluate)


def load_ort(path: Path, role: str, x_norm: np.ndarray, threads: int | None) -> LoadedModel:
    """Load (session creation) and first run of an ONNX model in onnxruntime."""
    from bvit_edge.runtime.ort import ort_session

    load_ms, sess = time_once(lambda: ort_session(path, threads=threads))
    inp = sess.get_inputs()[0]
    feed = {inp.name: x_norm}

    def run() -> Any:
        return sess.run(None, feed)

    first_ms, y = time_once(run)
    facts = {
        "role": role,
        "runtime": "onnxruntime",
        "path": str(path),
        "input_shape": [int(d) if isinstance(d, int) else 1 for d in inp.shape],
        "output_shape": output_shape(y),
        "compile_s": None,
        "load_ms": load_ms,
        "first_run_ms": first_ms,
        "model_sha256": sha256_file(path),
    }
    return LoadedModel(facts, call=run)
