"""Load and run a compiled artifact with ONLY the TVM runtime and numpy (no torch, no onnx).

An artifact folder (bvit_edge.runtime.compile) holds ``lib.so`` (the Relax VM executable, weights inside)
and ``manifest.json``. ``run_artifact(folder, images)`` returns logits f32[B, classes]; images are
float32 [B, C, H, W] (or one [C, H, W]) in [0, 1] and are normalised with the manifest's mean/std when it
has them (``normalize=False`` to pass already-normalised tensors). The executable is compiled for batch 1,
so a batch runs image by image. ``session`` may be a TVM RPC session (``tvm.rpc.connect(...)``): the
library is uploaded and run on the remote device.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.errors import ToolchainError, UsageError

SUPPORTED_SCHEMA = 1


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The artifact's manifest.json; UsageError when the folder is not an artifact."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file() or not (folder / "lib.so").is_file():
        raise UsageError(f"{folder} is not a bvit-edge artifact (needs lib.so and manifest.json); compile one "
                         "with bvit-edge compile.")
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version") != SUPPORTED_SCHEMA:
        raise UsageError(f"{path}: schema_version {manifest.get('schema_version')} is not supported "
                         f"(expected {SUPPORTED_SCHEMA}); recompile the artifact with this bvit-edge.")
    return manifest


def set_threads(n: int | None) -> None:
    """Size TVM's runtime thread pool (affinity mode 0 = big cores, n threads)."""
    if not n:
        return
    import tvm  # noqa: PLC0415

    tvm.get_global_func("runtime.config_threadpool")(0, int(n))


@dataclass
class LoadedArtifact:
    """A loaded executable: the VM, its device and the manifest."""

    folder: Path
    manifest: dict[str, Any]
    vm: Any
    device: Any
    remote: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocess(self, images: np.ndarray, normalize: bool = True) -> np.ndarray:
        """float32 [B, C, H, W] normalised with the manifest's mean/std (if any and ``normalize``)."""
        x = np.asarray(images, dtype=np.float32)
        shape = list(self.manifest["input"]["shape"])
        if x.ndim == len(shape) - 1:
            x = x[None]
        if x.ndim != len(shape) or list(x.shape[1:]) != shape[1:]:
            raise UsageError(f"images of shape {list(np.shape(images))} do not fit the artifact's input "
                             f"{shape} (batch first); resize them to {shape[1:]}.")
        norm = self.manifest.get("normalization") or {}
        mean, std = norm.get("mean"), norm.get("std")
        if normalize and mean is not None and std is not None:
            c = (-1,) + (1,) * (x.ndim - 2)
            x = (x - np.asarray(mean, np.float32).reshape(c)) / np.asarray(std, np.float32).reshape(c)
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, images: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Logits f32[B, ...] for a batch, one image at a time (the executable is batch 1)."""
        import tvm  # noqa: PLC0415

        x = self.preprocess(images, normalize)
        outs = []
        for i in range(x.shape[0]):
            arg = tvm.runtime.tensor(x[i : i + 1], device=self.device)
            y = self.vm["main"](arg)
            if not hasattr(y, "numpy"):  # a tuple of outputs: the first is the logits
                y = y[0]
            outs.append(y.numpy())
        return np.concatenate(outs, axis=0)


def load_artifact(folder: str | os.PathLike[str], session: Any = None, threads: int | None = None) -> LoadedArtifact:
    """Load ``folder`` locally, or on the RPC ``session``'s device (the library is uploaded first)."""
    try:
        import tvm  # noqa: PLC0415
        from tvm import relax  # noqa: PLC0415
    except ImportError:
        from bvit_edge.errors import MissingDependencyError  # noqa: PLC0415

        raise MissingDependencyError("running an artifact needs the TVM runtime: pip install apache-tvm.") from None
    folder = Path(folder)
    manifest = read_manifest(folder)
    lib_path = folder / manifest.get("lib", "lib.so")
    try:
        if session is None:
            set_threads(threads if threads is not None else None)
            lib = tvm.runtime.load_module(str(lib_path))
            device = tvm.cpu()
        else:
            session.upload(str(lib_path))
            lib = session.load_module(lib_path.name)
            device = session.cpu()
    except Exception as exc:  # noqa: BLE001
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ToolchainError(f"Loading {lib_path} failed ({last}); was it compiled for this machine's "
                             f"architecture? The manifest says {manifest['target'].get('arch')}.") from exc
    vm = relax.VirtualMachine(lib, device)
    return LoadedArtifact(folder, manifest, vm, device, remote=session is not None)


def run_artifact(
    folder: str | os.PathLike[str],
    images: np.ndarray,
    session: Any = None,
    threads: int | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Logits of ``images`` from the artifact in ``folder`` (see the module docstring)."""
    return load_artifact(folder, session=session, threads=threads).run(images, normalize=normalize)


def topk(logits: np.ndarray, k: int = 5, classes: list[str] | None = None) -> list[list[tuple[int | str, float]]]:
    """Per row, the k best (class index or name, softmax probability), best first."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    k = min(k, p.shape[-1])
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    return [[(classes[j] if classes else int(j), float(p[r, j])) for j in row] for r, row in enumerate(idx)]
