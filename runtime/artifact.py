"""Load and run a compiled artifact with ONLY the TVM runtime and numpy (no torch, no onnx).

An artifact folder (bvit_edge.runtime.compile) holds ``lib.so`` (the Relax VM executable), ``params.npz``
(the weights, numpy) and ``manifest.json``. Schema 2 manifests say where the weights are: ``"params":
{"storage": "file", "file": "params.npz", ...}`` (loaded with numpy and passed to ``main`` after the image:
``main(image, *params)``, see :meth:`LoadedArtifact.invoke`) or ``{"storage": "embedded"}`` (inside
lib.so); schema 1 artifacts always embed them.

``run_artifact(folder, images)`` returns logits f32[B, classes]; images are float32 [B, C, H, W] (or one
[C, H, W]) in [0, 1] and are normalised with the manifest's mean/std when it has them (``normalize=False``
to pass already-normalised tensors). The executable is compiled for batch 1, so a batch runs image by
image. ``session`` may be a TVM RPC session (``tvm.rpc.connect(...)``): the
library is uploaded and run on the remote device, and the weights are copied to that device.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.errors import ToolchainError, UsageError

#: Manifest versions this runtime reads: 1 (weights inside lib.so) and 2 (weights in params.npz, or embedded).
SUPPORTED_SCHEMAS = (1, 2)
SUPPORTED_SCHEMA = max(SUPPORTED_SCHEMAS)


def params_file(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Path | None:
    """The artifact's parameter file (params.npz), or None when its weights are embedded in lib.so."""
    params = manifest.get("params") or {}
    if manifest.get("schema_version") == 1 or params.get("storage", "embedded") == "embedded":
        return None
    return Path(folder) / str(params.get("file") or "params.npz")


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The artifact's manifest.json; UsageError when the folder is not a (complete) artifact."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file() or not (folder / "lib.so").is_file():
        raise UsageError(f"{folder} is not a bvit-edge artifact (needs lib.so and manifest.json); compile one "
                         "with bvit-edge compile.")
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version") not in SUPPORTED_SCHEMAS:
        raise UsageError(f"{path}: schema_version {manifest.get('schema_version')} is not supported "
                         f"(this bvit-edge reads {' and '.join(map(str, SUPPORTED_SCHEMAS))}); recompile the "
                         "artifact with this bvit-edge.")
    storage = (manifest.get("params") or {}).get("storage", "embedded")
    if manifest["schema_version"] >= 2 and storage not in ("file", "embedded"):
        raise UsageError(f"{path}: unknown parameter storage {storage!r}; recompile the artifact with this "
                         "bvit-edge.")
    pfile = params_file(folder, manifest)
    if pfile is not None and not pfile.is_file():
        raise UsageError(f"{folder}: the parameter file {pfile.name} is missing (the manifest says the weights are "
                         f"in it); copy the whole artifact folder, or recompile it with bvit-edge compile.")
    return manifest


def read_params(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> list[np.ndarray]:
    """The artifact's weights as numpy arrays in ``main``'s parameter order ([] when embedded).

    Reads params.npz with numpy alone (no pickle). A file that is not the manifest's (other names, another
    count) is a UsageError."""
    pfile = params_file(folder, manifest)
    if pfile is None:
        return []
    info = manifest.get("params") or {}
    try:
        with np.load(pfile, allow_pickle=False) as npz:
            names = list(info.get("names") or npz.files)
            missing = [n for n in names if n not in npz.files]
            if missing or ("count" in info and int(info["count"]) != len(names)):
                raise UsageError(f"{pfile} does not hold the parameters the manifest names ({len(npz.files)} arrays, "
                                 f"expected {info.get('count', len(names))}); recompile the artifact.")
            arrays = [np.ascontiguousarray(npz[n]) for n in names]
            decode = info.get("decode") or {}
            if decode:  # compactly stored weights (int8 / float16), rebuilt in float32 once, here
                from bvit_edge.runtime.compact_params import decode_params, extra_names  # noqa: PLC0415

                extra = {k: npz[k] for k in extra_names(decode)}
                arrays = decode_params(names, arrays, decode, extra)
            return arrays
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile / numpy raise several types for a damaged file
        raise UsageError(f"{pfile} is not a readable parameter file ({type(exc).__name__}: {exc}); recompile the "
                         "artifact.") from None


def params_to_device(arrays: list[np.ndarray], device: Any) -> list[Any]:
    """TVM tensors of ``arrays`` on ``device`` (local, or an RPC session's remote device: copied there)."""
    import tvm  # noqa: PLC0415

    return [tvm.runtime.tensor(a, device=device) for a in arrays]


def set_threads(n: int | None) -> None:
    """Use ``n`` threads of TVM's runtime pool (``runtime.config_threadpool(0, n)``; 0 = no affinity mode).
    At most the pool's limit, which importing bvit_edge.runtime sets to the physical cores
    (bvit_edge.runtime.threadpool)."""
    if not n:
        return
    import tvm  # noqa: PLC0415

    tvm.get_global_func("runtime.config_threadpool")(0, int(n))


@dataclass
class LoadedArtifact:
    """A loaded executable: the VM, its device, the manifest and the weights on the device.

    ``params``: the parameter tensors ``main`` takes after the image (empty when embedded in lib.so); call
    :meth:`invoke`, or ``vm["main"](x, *params)`` / ``vm.set_input("main", x, *params)`` directly."""

    folder: Path
    manifest: dict[str, Any]
    vm: Any
    device: Any
    remote: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    params: list[Any] = field(default_factory=list)

    def invoke(self, arg: Any) -> Any:
        """``main`` on one prepared device tensor (batch 1, normalised), the weights passed after it."""
        return self.vm["main"](arg, *self.params)

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
            y = self.invoke(arg)
            if not hasattr(y, "numpy"):  # a tuple of outputs: the first is the logits
                y = y[0]
            outs.append(y.numpy())
        return np.concatenate(outs, axis=0)


def load_artifact(folder: str | os.PathLike[str], session: Any = None, threads: int | None = None) -> LoadedArtifact:
    """Load ``folder`` locally, or on the RPC ``session``'s device (the library is uploaded first, the
    weights of params.npz are copied to the device)."""
    try:
        import tvm  # noqa: PLC0415
        from tvm import relax  # noqa: PLC0415
    except ImportError:
        from bvit_edge.errors import MissingDependencyError  # noqa: PLC0415

        raise MissingDependencyError("running an artifact needs the TVM runtime: pip install apache-tvm.") from None
    folder = Path(folder)
    manifest = read_manifest(folder)
    arrays = read_params(folder, manifest)
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
    return LoadedArtifact(folder, manifest, vm, device, remote=session is not None,
                          params=params_to_device(arrays, device))


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
