"""Load, verify and run a compiled artifact with the TVM runtime and numpy only (no torch, no onnx, no TVM compiler).

An artifact folder (bvit_edge.runtime.compile) holds ``lib.so`` (the Relax VM executable), ``params.npz``
(the weights, numpy) and ``manifest.json``. Schema 2 manifests say where the weights are: ``"params":
{"storage": "file", "file": "params.npz", ...}`` (loaded with numpy and passed to ``main`` after the image:
``main(image, *params)``, see :meth:`LoadedArtifact.invoke`) or ``{"storage": "embedded"}`` (inside
lib.so); schema 1 artifacts always embed them.

Verified before anything runs (every failure is a one-paragraph error with its exit code, nothing is written):

* the manifest (:func:`read_manifest`): readable JSON object, a supported ``schema_version``, and the fields
  the runtime reads of the right types (``target.arch``, ``input.shape``/``dtype``, ``lib``, ``params``, ...);
  file names inside the folder only (no path separators). Bad: UsageError, exit 2.
* the files (:func:`verify_files`): ``lib.so`` and ``params.npz`` against the manifest's sha256 (``lib_sha256``
  when the compiler recorded it; ``params.sha256``). A mismatch is a UsageError (exit 2) naming the file and
  saying to recompile (or copy the folder again): weights changed after compiling give wrong predictions
  silently otherwise. The weights' names, count, shapes and dtypes are checked against the manifest
  (``params.arrays``: one ``{"name", "shape", "dtype"}`` per weight, whatever dtype the compiler stored).
* this machine (:func:`check_machine`, local runs only): the artifact's architecture is this Python's
  (bvit_edge.runtime.cpu_features.machine_arch), and every CPU feature its code needs
  (``required_cpu_features``, plus the target preset's ``required_cpu_flags``) is present: an AVX-512 or
  ``dotprod`` artifact on a CPU without them is refused (UsageError, exit 2) instead of dying with SIGILL.

``run_artifact(folder, images)`` returns logits f32[B, classes]; images are float32 [B, C, H, W] (or one
[C, H, W]) in [0, 1] and are normalised with the manifest's mean/std when it has them (``normalize=False``
to pass already-normalised tensors). The executable is compiled for batch 1, so a batch runs image by
image. Locally the runtime is bvit_edge.runtime.tvm_runtime (tvm_ffi + libtvm_runtime.so, no ``import tvm``).
``session`` may be a TVM RPC session (``tvm.rpc.connect(...)``, host side, needs the ``tvm`` package): the
library is uploaded and run on the remote device, and the weights are copied to that device.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.digest import sha256_file
from bvit_edge.errors import BvitEdgeError, ToolchainError, UsageError
from bvit_edge.runtime.cpu_features import ARCHES, cpu_features, machine_arch, missing_features

__all__ = [
    "LoadedArtifact",
    "check_machine",
    "load_artifact",
    "params_file",
    "read_manifest",
    "read_params",
    "required_features",
    "run_artifact",
    "topk",
    "verify_files",
]

#: Manifest versions this runtime reads: 1 (weights inside lib.so) and 2 (weights in params.npz, or embedded).
SUPPORTED_SCHEMAS = (1, 2)
SUPPORTED_SCHEMA = max(SUPPORTED_SCHEMAS)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RECOMPILE = "recompile the artifact with `bvit-edge compile`, or copy the whole artifact folder again"


# ----------------------------------------------------------------------------------------------------
# the manifest


def _plain_name(value: Any) -> bool:
    """A file name inside the artifact folder: a non-empty string with no path separator and not . or .."""
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value


def _int_list(value: Any, positive: bool = True) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in value)
        and all(d > 0 if positive else d >= 0 for d in value)
    )


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _dtype_ok(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return np.dtype(value).kind in "biuf"
    except TypeError:
        return False


def _schema_problems(m: dict[str, Any]) -> list[str]:
    """What is wrong with a parsed manifest, as ``field: problem`` strings (empty when it is usable)."""
    bad: list[str] = []
    version = m.get("schema_version")
    if version not in SUPPORTED_SCHEMAS or isinstance(version, bool):
        return [
            f"schema_version {version!r} is not supported (this bvit-edge reads "
            f"{' and '.join(map(str, SUPPORTED_SCHEMAS))})"
        ]
    target = m.get("target")
    if not isinstance(target, dict):
        bad.append("target: missing or not an object")
    else:
        if target.get("arch") not in ARCHES:
            bad.append(f"target.arch: {target.get('arch')!r} is not one of {', '.join(ARCHES)}")
        flags = target.get("required_cpu_flags", [])
        if not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            bad.append("target.required_cpu_flags: not a list of strings")
    inp = m.get("input")
    if not isinstance(inp, dict):
        bad.append("input: missing or not an object")
    else:
        if not (_int_list(inp.get("shape")) and len(inp["shape"]) >= 2):
            bad.append(f"input.shape: {inp.get('shape')!r} is not a list of positive integers [batch, ...]")
        if inp.get("dtype", "float32") != "float32":
            bad.append(f"input.dtype: {inp.get('dtype')!r} (the runtime feeds float32 images)")
    if not _plain_name(m.get("lib", "lib.so")):
        bad.append(f"lib: {m.get('lib')!r} is not a file name inside the artifact folder")
    for key in ("lib_sha256",):
        if key in m and not (isinstance(m[key], str) and _HEX64.fullmatch(m[key])):
            bad.append(f"{key}: not a sha256 hex digest")
    norm = m.get("normalization")
    if norm is not None:
        if not isinstance(norm, dict):
            bad.append("normalization: not an object")
        else:
            for k in ("mean", "std"):
                if norm.get(k) is not None and not _numbers(norm[k]):
                    bad.append(f"normalization.{k}: not a list of numbers")
            if _numbers(norm.get("std")) and any(v == 0 for v in norm["std"]):
                bad.append("normalization.std: holds a zero")
    classes = m.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        bad.append("classes: not a list of strings")
    feats = m.get("required_cpu_features", [])
    if not (isinstance(feats, list) and all(isinstance(f, str) for f in feats)):
        bad.append("required_cpu_features: not a list of strings")
    if version >= 2:
        bad += _params_problems(m.get("params", {"storage": "embedded"}))
    return bad


def _params_problems(p: Any) -> list[str]:
    if not isinstance(p, dict):
        return ["params: not an object"]
    storage = p.get("storage", "embedded")
    if storage == "embedded":
        return []
    if storage != "file":
        return [f"params.storage: unknown parameter storage {storage!r} (file or embedded)"]
    bad = []
    if not _plain_name(p.get("file", "params.npz")):
        bad.append(f"params.file: {p.get('file')!r} is not a file name inside the artifact folder")
    if not (isinstance(p.get("sha256"), str) and _HEX64.fullmatch(p["sha256"])):
        bad.append("params.sha256: missing or not a sha256 hex digest")
    names = p.get("names")
    if not (isinstance(names, list) and all(isinstance(n, str) and n for n in names)):
        bad.append("params.names: missing or not a list of names")
        return bad
    count = p.get("count", len(names))
    if not isinstance(count, int) or isinstance(count, bool) or count != len(names):
        bad.append(f"params.count: {count!r} does not match the {len(names)} names")
    arrays = p.get("arrays")
    if arrays is not None:
        ok = isinstance(arrays, list) and all(
            isinstance(a, dict)
            and isinstance(a.get("name"), str)
            and _int_list(a.get("shape"), positive=False)
            and _dtype_ok(a.get("dtype"))
            for a in arrays
        )
        if not ok:
            bad.append("params.arrays: not a list of {name, shape (integers), dtype (a numpy type name)}")
        elif [a["name"] for a in arrays] != names:
            bad.append("params.arrays: its names differ from params.names")
    return bad


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The artifact's manifest.json, validated (see the module docstring); UsageError (exit 2) when the folder is
    not a complete artifact or the manifest is unreadable, not a JSON object or not of a supported schema."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise UsageError(
            f"The artifact folder {folder} does not exist; compile one with `bvit-edge compile "
            "MODEL.onnx --target T --out FOLDER` and copy the whole folder."
        )
    if not path.is_file():
        raise UsageError(
            f"{folder} is not a bvit-edge artifact (it has no manifest.json); compile one with bvit-edge compile."
        )
    try:
        text = path.read_text(encoding="utf-8")
        manifest = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        what = "is empty" if not path.stat().st_size else f"is not valid JSON ({exc})"
        raise UsageError(f"{path} {what}; {_RECOMPILE}.") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{path} holds a JSON {type(manifest).__name__}, not the manifest object; {_RECOMPILE}.")
    problems = _schema_problems(manifest)
    if problems:
        raise UsageError(
            f"{path} is not a valid artifact manifest: {'; '.join(problems)}. {_RECOMPILE[0].upper()}{_RECOMPILE[1:]}."
        )
    lib = folder / manifest.get("lib", "lib.so")
    if not lib.is_file():
        raise UsageError(f"{folder} is not a complete bvit-edge artifact: {lib.name} is missing; {_RECOMPILE}.")
    pfile = params_file(folder, manifest)
    if pfile is not None and not pfile.is_file():
        raise UsageError(
            f"{folder}: the parameter file {pfile.name} is missing (the manifest says the weights are "
            f"in it); copy the whole artifact folder, or recompile it with bvit-edge compile."
        )
    return manifest


def params_file(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Path | None:
    """The artifact's parameter file (params.npz), or None when its weights are embedded in lib.so."""
    params = manifest.get("params") or {}
    if manifest.get("schema_version") == 1 or params.get("storage", "embedded") == "embedded":
        return None
    return Path(folder) / str(params.get("file") or "params.npz")


# ----------------------------------------------------------------------------------------------------
# the files and this machine


def _digest_mismatch(path: Path, what: str) -> UsageError:
    return UsageError(
        f"{path} does not match the artifact's manifest (its sha256 differs from the one recorded at "
        f"compile time): the {what} changed after compiling, and running it would give wrong results; "
        f"{_RECOMPILE}."
    )


def verify_files(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """lib.so and params.npz against the manifest's sha256 (UsageError naming the file, exit 2)."""
    folder = Path(folder)
    want_lib = manifest.get("lib_sha256")
    lib = folder / manifest.get("lib", "lib.so")
    if want_lib and sha256_file(lib) != want_lib:
        raise _digest_mismatch(lib, "compiled library")
    pfile = params_file(folder, manifest)
    if pfile is not None and sha256_file(pfile) != manifest["params"]["sha256"]:
        raise _digest_mismatch(pfile, "weights file")


def required_features(manifest: dict[str, Any]) -> list[str]:
    """The CPU features (kernel spelling) the artifact's code needs: the compiler's record plus the preset's."""
    target = manifest.get("target") or {}
    return sorted(set(manifest.get("required_cpu_features") or []) | set(target.get("required_cpu_flags") or []))


def check_machine(folder: str | os.PathLike[str], manifest: dict[str, Any], available: set[str] | None = None) -> None:
    """UsageError (exit 2) unless this machine can run the artifact: same architecture, every CPU feature it needs."""
    target = manifest["target"]
    name, arch = target.get("name", "?"), target["arch"]
    here = machine_arch()
    if arch != here:
        raise UsageError(
            f"{folder} is compiled for {name!r} ({arch}), but this machine runs {here or platform.machine()} code "
            f"(uname -m: {platform.machine()}). Compile the model for this machine (`bvit-edge compile MODEL.onnx "
            "--target PRESET`, e.g. rpi4-aarch64 for a Raspberry Pi 4 with a 64-bit OS, rpi3-armv7 for a 32-bit OS), "
            "or run the artifact on the board it was compiled for."
        )
    need = required_features(manifest)
    lacking = missing_features(need, cpu_features(arch) if available is None else available)
    if lacking:
        raise UsageError(
            f"{folder} is compiled for {name!r}, whose code uses CPU features this CPU lacks: {', '.join(lacking)} "
            "(it would crash with an illegal instruction). Compile the model for this CPU (`bvit-edge compile "
            "MODEL.onnx --target PRESET` with this board's preset, or `--target host` on it)."
        )


def read_params(folder: str | os.PathLike[str], manifest: dict[str, Any], verify: bool = True) -> list[np.ndarray]:
    """The artifact's weights as numpy arrays in ``main``'s parameter order ([] when embedded).

    Reads params.npz with numpy alone (no pickle). ``verify``: first its sha256 against the manifest's. Names,
    count, shapes and dtypes must be the manifest's (UsageError, exit 2, naming the first difference)."""
    pfile = params_file(folder, manifest)
    if pfile is None:
        return []
    info = manifest["params"]
    if verify and sha256_file(pfile) != info["sha256"]:
        raise _digest_mismatch(pfile, "weights file")
    names = list(info["names"])
    expected = {a["name"]: a for a in info.get("arrays") or []}
    decode = info.get("decode") or {}  # compactly stored weights (bvit_edge.runtime.compact_params)
    if decode:
        from bvit_edge.runtime.param_decode import decode_params, extra_names
    extras = extra_names(decode) if decode else []
    try:
        with np.load(pfile, allow_pickle=False) as npz:
            missing = [n for n in [*names, *extras] if n not in npz.files]
            if missing or len(npz.files) != len(names) + len(extras):
                raise UsageError(
                    f"{pfile} does not hold the parameters the manifest names ({len(npz.files)} arrays, "
                    f"expected {len(names)}{', missing ' + ', '.join(missing[:3]) if missing else ''}); "
                    f"{_RECOMPILE}."
                )
            arrays = [np.ascontiguousarray(npz[n]) for n in names]
            extra = {k: np.ascontiguousarray(npz[k]) for k in extras}
    except BvitEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile / numpy raise several types for a damaged file
        raise UsageError(
            f"{pfile} is not a readable parameter file ({type(exc).__name__}: {exc}); {_RECOMPILE}."
        ) from None
    for name, a in zip(names, arrays, strict=True):
        want = expected.get(name)
        if want is None:
            continue
        if list(a.shape) != list(want["shape"]) or a.dtype != np.dtype(want["dtype"]):
            raise UsageError(
                f"{pfile}: parameter {name} is {a.dtype}{list(a.shape)}, the manifest says "
                f"{want['dtype']}{list(want['shape'])}; {_RECOMPILE}."
            )
    if decode:  # int16 / int8 / int4 codes and float16 values rebuilt in float32 once, here
        try:
            arrays = decode_params(names, arrays, decode, extra)
        except (KeyError, ValueError) as exc:
            raise UsageError(
                f"{pfile}: a compactly stored parameter cannot be rebuilt ({exc}); {_RECOMPILE}."
            ) from None
    return arrays


# ----------------------------------------------------------------------------------------------------
# loading and running


def params_to_device(arrays: list[np.ndarray], device: Any) -> list[Any]:
    """TVM tensors of ``arrays`` on ``device`` (an RPC session's remote device: copied there; needs ``tvm``)."""
    import tvm

    return [tvm.runtime.tensor(a, device=device) for a in arrays]


def set_threads(n: int | None) -> None:
    """Use ``n`` threads of TVM's runtime pool (``runtime.config_threadpool(0, n)``; 0 = no affinity mode).
    At most the pool's limit, which importing bvit_edge.runtime sets to the physical cores
    (bvit_edge.runtime.threadpool)."""
    if not n:
        return
    from bvit_edge.runtime.tvm_runtime import runtime

    runtime().set_threads(int(n))


def _to_numpy(y: Any) -> np.ndarray:
    """A copy of an output tensor (the VM's pooled memory is reused by the next call)."""
    if not hasattr(y, "shape") and not hasattr(y, "numpy"):  # a tuple of outputs: the first is the logits
        y = y[0]
    if hasattr(y, "numpy"):
        return np.array(y.numpy(), copy=True)
    return np.array(np.from_dlpack(y), copy=True)


@dataclass
class LoadedArtifact:
    """A loaded executable: the VM, its device, the manifest and the weights on the device.

    ``params``: the parameter tensors ``main`` takes after the image (empty when embedded in lib.so); call
    :meth:`invoke`, or ``vm["main"](x, *params)`` directly. :meth:`tensor` makes an input tensor on the device."""

    folder: Path
    manifest: dict[str, Any]
    vm: Any
    device: Any
    remote: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    params: list[Any] = field(default_factory=list)

    @property
    def classes(self) -> list[str] | None:
        return self.manifest.get("classes")

    @property
    def input_shape(self) -> list[int]:
        return [int(d) for d in self.manifest["input"]["shape"]]

    def tensor(self, array: np.ndarray) -> Any:
        """A device tensor holding ``array`` (local: TVM-allocated and aligned; remote: copied to the board)."""
        if self.remote:
            import tvm

            return tvm.runtime.tensor(np.ascontiguousarray(array), device=self.device)
        from bvit_edge.runtime.tvm_runtime import runtime

        return runtime().tensor(array, self.device)

    def invoke(self, arg: Any) -> Any:
        """``main`` on one prepared device tensor (batch 1, normalised), the weights passed after it."""
        return self.vm["main"](arg, *self.params)

    def preprocess(self, images: np.ndarray, normalize: bool = True) -> np.ndarray:
        """float32 [B, C, H, W] normalised with the manifest's mean/std (if any and ``normalize``)."""
        x = np.asarray(images, dtype=np.float32)
        shape = self.input_shape
        if x.ndim == len(shape) - 1:
            x = x[None]
        if x.ndim != len(shape) or list(x.shape[1:]) != shape[1:]:
            raise UsageError(
                f"images of shape {list(np.shape(images))} do not fit the artifact's input "
                f"{shape} (batch first); resize them to {shape[1:]}."
            )
        norm = self.manifest.get("normalization") or {}
        mean, std = norm.get("mean"), norm.get("std")
        if normalize and mean is not None and std is not None:
            c = (-1,) + (1,) * (x.ndim - 2)
            x = (x - np.asarray(mean, np.float32).reshape(c)) / np.asarray(std, np.float32).reshape(c)
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, images: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Logits f32[B, ...] for a batch, one image at a time (the executable is batch 1)."""
        x = self.preprocess(images, normalize)
        outs = []
        for i in range(x.shape[0]):
            try:
                y = self.invoke(self.tensor(x[i : i + 1]))
            except BvitEdgeError:
                raise
            except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
                text = str(exc).strip()
                last = text.splitlines()[-1] if text else type(exc).__name__
                raise ToolchainError(
                    f"Running {self.folder} failed: {last}. Check that the artifact folder is "
                    f"complete and unmodified; {_RECOMPILE}."
                ) from None
            outs.append(_to_numpy(y))
        return np.concatenate(outs, axis=0)


def _load_local(
    folder: Path, manifest: dict[str, Any], arrays: list[np.ndarray], threads: int | None
) -> LoadedArtifact:
    from bvit_edge.runtime.tvm_runtime import runtime

    rt = runtime()
    if threads:
        rt.set_threads(int(threads))
    lib_path = folder / manifest.get("lib", "lib.so")
    try:
        lib = rt.load_module(lib_path)
        device = rt.cpu()
        vm = rt.virtual_machine(lib, device)
    except Exception as exc:  # noqa: BLE001 - dlopen / TVM errors
        text = str(exc).strip()
        last = text.splitlines()[-1] if text else type(exc).__name__
        raise ToolchainError(f"Loading {lib_path} failed ({last}); {_RECOMPILE}.") from None
    return LoadedArtifact(
        folder,
        manifest,
        vm,
        device,
        remote=False,
        params=[rt.tensor(a, device) for a in arrays],
        extra={"runtime": rt.versions},
    )


def _load_remote(folder: Path, manifest: dict[str, Any], arrays: list[np.ndarray], session: Any) -> LoadedArtifact:
    try:
        from tvm import relax
    except ImportError:
        from bvit_edge.errors import MissingDependencyError

        raise MissingDependencyError(
            "running an artifact over RPC needs the tvm package on this host: pip install bvit-edge (the full toolkit)."
        ) from None
    lib_path = folder / manifest.get("lib", "lib.so")
    # uploaded under a name unique to its content: the board's loader hands back the library it already
    # loaded for a path it has seen, so two artifacts both uploaded as "lib.so" in one session would alias
    digest = str(manifest.get("lib_sha256") or (manifest.get("model") or {}).get("sha256") or "")[:12]
    remote_name = f"{lib_path.stem}-{digest}{lib_path.suffix}" if digest else lib_path.name
    try:
        session.upload(str(lib_path), target=remote_name)
        lib = session.load_module(remote_name)
        device = session.cpu()
    except Exception as exc:
        text = str(exc).strip()
        last = text.splitlines()[-1] if text else type(exc).__name__
        raise ToolchainError(
            f"Loading {lib_path} on the board failed ({last}); was it compiled for the board's "
            f"architecture? The manifest says {manifest['target'].get('arch')}."
        ) from exc
    vm = relax.VirtualMachine(lib, device)
    return LoadedArtifact(folder, manifest, vm, device, remote=True, params=params_to_device(arrays, device))


def load_artifact(
    folder: str | os.PathLike[str], session: Any = None, threads: int | None = None, verify: bool = True
) -> LoadedArtifact:
    """Load ``folder`` locally, or on the RPC ``session``'s device (the library is uploaded first, the
    weights of params.npz are copied to the device). ``verify`` (default): the checks of the module docstring
    (files against their sha256, and locally this machine's architecture and CPU features) before loading."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if verify:
        if session is None:
            check_machine(folder, manifest)
        verify_files(folder, manifest)
    arrays = read_params(folder, manifest, verify=False)  # verify_files checked its digest already
    if session is None:
        return _load_local(folder, manifest, arrays, threads)
    return _load_remote(folder, manifest, arrays, session)


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
    """Per row, the k best (class index or name, softmax probability), best first (ties: the lower index)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        z = z[None]
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    k = min(k, p.shape[-1])
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    named = classes if classes and len(classes) == p.shape[-1] else None
    return [[(named[j] if named else int(j), float(p[r, j])) for j in row] for r, row in enumerate(idx)]
