"""The TVM runtime without the TVM compiler: ``tvm_ffi`` plus ``libtvm_runtime.so``, never ``import tvm``.

A compiled artifact's ``lib.so`` is a Relax VM executable. Running it needs three things: TVM's FFI
(``apache-tvm-ffi``: tensors, functions, module loading), the runtime library ``libtvm_runtime.so`` (the Relax
VM, the CPU thread pool, tensor allocation; the symbols ``lib.so`` calls such as ``TVMBackendParallelLaunch``)
and numpy. ``import tvm`` would also load ``libtvm_compiler.so`` (240 MB on aarch64) and TVM's whole Python
compiler stack: seconds of start-up and a large resident set on a Raspberry Pi, for nothing.

:func:`runtime` loads ``libtvm_runtime.so`` with ``RTLD_GLOBAL`` (so a ``lib.so`` dlopen-ed later resolves its
runtime symbols from it) from, in order:

1. ``$BVIT_EDGE_TVM_RUNTIME``: the path of a ``libtvm_runtime.so`` (a runtime-only build of TVM 0.27, or the
   one file copied out of the apache-tvm wheel);
2. the installed ``apache-tvm`` package's ``tvm/lib/`` folder, found with ``importlib.util.find_spec`` (which
   locates the package without running its ``__init__``);
3. when ``tvm`` is already imported (the full toolkit, in the same process), the library it loaded.

and makes the few runtime calls the artifact loader needs: :meth:`TVMRuntime.load_module`,
:meth:`TVMRuntime.virtual_machine` (what ``tvm.relax.VirtualMachine`` does: ``vm_load_executable`` then
``vm_initialization(device_type, device_id, allocator)`` with the pooled allocator), :meth:`TVMRuntime.tensor`
(a TVM-allocated tensor, 64-byte aligned as the kernels assume, filled from a numpy array; numpy's own buffers
are only 16-byte aligned) and :meth:`TVMRuntime.set_threads`.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.errors import MissingDependencyError, ToolchainError

__all__ = ["ENV_VAR", "TVMRuntime", "find_runtime_library", "runtime"]

#: Environment variable naming a libtvm_runtime.so to use instead of the apache-tvm package's.
ENV_VAR = "BVIT_EDGE_TVM_RUNTIME"
_LIB_NAME = "libtvm_runtime.so"
_KDL_CPU = 1  # DLPack's device type of the CPU
_POOLED_ALLOCATOR = 2  # the Relax VM's allocator kinds: 1 naive, 2 pooled (tvm.relax.VirtualMachine's default)
_INSTALL_HINT = (
    "Install the board-side runtime (`pip install bvit-edge-runtime`, which brings apache-tvm-ffi and "
    f"apache-tvm), or point {ENV_VAR} at a libtvm_runtime.so of TVM 0.27."
)


def find_runtime_library() -> Path:
    """The libtvm_runtime.so to load (see the module docstring for the order); MissingDependencyError if none."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise MissingDependencyError(
                f"{ENV_VAR}={env} is not a file; point it at a libtvm_runtime.so of TVM 0.27, "
                "or unset it to use the apache-tvm package's."
            )
        return path
    loaded = sys.modules.get("tvm")
    origin = getattr(loaded, "__file__", None) if loaded is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec("tvm")
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
    if origin:
        path = Path(origin).resolve().parent / "lib" / _LIB_NAME
        if path.is_file():
            return path
    raise MissingDependencyError(f"The TVM runtime library ({_LIB_NAME}) is not installed. {_INSTALL_HINT}")


@dataclass(frozen=True)
class TVMRuntime:
    """The loaded runtime: the ``tvm_ffi`` module, the library path and the runtime functions used here."""

    ffi: Any
    library: Path
    _alloc: Any
    _copy_from_bytes: Any
    _config_threadpool: Any

    @property
    def versions(self) -> dict[str, str]:
        """``{"tvm_ffi": ..., "tvm_runtime": path of the library}`` for run records."""
        return {"tvm_ffi": str(getattr(self.ffi, "__version__", "unknown")), "tvm_runtime": str(self.library)}

    def cpu(self) -> Any:
        """The CPU device (``tvm_ffi.Device``)."""
        return self.ffi.device("cpu", 0)

    def tensor(self, array: np.ndarray, device: Any = None) -> Any:
        """A TVM tensor on ``device`` (the CPU by default) holding a copy of ``array`` (same shape and dtype)."""
        a = np.ascontiguousarray(array)
        out = self._alloc(self.ffi.Shape(a.shape), self.ffi.dtype(str(a.dtype)), device or self.cpu(), None)
        if a.nbytes:
            self._copy_from_bytes(out, ctypes.c_void_p(a.ctypes.data), a.nbytes)
        return out

    def load_module(self, path: str | os.PathLike[str]) -> Any:
        """dlopen a compiled ``lib.so`` (a ``tvm_ffi.Module``)."""
        return self.ffi.load_module(str(path))

    def virtual_machine(self, lib: Any, device: Any = None) -> Any:
        """The Relax VM of an executable module on ``device`` (the CPU): ``vm["main"](x, *params)`` runs it."""
        dev = device or self.cpu()
        vm = lib["vm_load_executable"]()
        vm["vm_initialization"](_KDL_CPU, int(dev.index), _POOLED_ALLOCATOR)
        return vm

    def set_threads(self, n: int) -> None:
        """Use ``n`` threads of the runtime's CPU pool (``runtime.config_threadpool(0, n)``: no pinning mode)."""
        self._config_threadpool(0, int(n))


@functools.lru_cache(maxsize=1)
def runtime() -> TVMRuntime:
    """Load the TVM runtime once per process (see the module docstring); MissingDependencyError when absent."""
    try:
        import tvm_ffi
    except ImportError:
        raise MissingDependencyError(
            f"Running an artifact needs apache-tvm-ffi, which is not installed. {_INSTALL_HINT}"
        ) from None
    from bvit_edge.runtime.threadpool import ensure_thread_limit

    ensure_thread_limit()  # before the runtime's thread pool starts
    path = find_runtime_library()
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise ToolchainError(
            f"Loading the TVM runtime {path} failed ({exc}); it must be TVM 0.27's "
            "libtvm_runtime.so built for this machine's architecture."
        ) from None
    try:
        get = tvm_ffi.get_global_func
        return TVMRuntime(
            ffi=tvm_ffi,
            library=path,
            _alloc=get("runtime.TVMTensorAllocWithScope"),
            _copy_from_bytes=get("runtime.TVMTensorCopyFromBytes"),
            _config_threadpool=get("runtime.config_threadpool"),
        )
    except Exception as exc:  # noqa: BLE001 - tvm_ffi raises its own error when a function is not registered
        raise ToolchainError(
            f"{path} does not provide the TVM runtime functions bvit-edge needs ({exc}); use "
            "libtvm_runtime.so of TVM 0.27 with apache-tvm-ffi 0.1.14."
        ) from None
