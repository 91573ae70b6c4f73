"""Compile an exported ONNX model for a target into an artifact folder (lib.so + params.npz + manifest.json).

``compile_model(onnx_path, target, out_dir)``:

1. resolve the target preset (bvit_edge.targets) and check its cross compiler is installed *before* any
   work (a missing one is a ToolchainError naming the apt package, exit code 4);
2. read the ONNX model, check its op domains (bvit_edge v1 only) and fix a static batch-1 input shape;
3. import it with TVM's Relax ONNX importer plus our converters (bvit_edge.runtime.tvm_frontend): the
   bvit_edge ops become scheduled popcount kernels, packed weights repacked to the target's words;
4. legalize and fuse the standard ops (constants folded), schedule every float prim func
   (bvit_edge.runtime.schedules), lift the weights out of the module (bvit_edge.runtime.params) and build
   with LLVM for the target;
5. write, atomically (bvit_edge.atomic.atomic_dir: no half-written folder on failure), ``lib.so`` linked
   with the target's toolchain, ``params.npz`` and ``manifest.json``.

Parameters (``params_storage``): with ``"file"`` (the default) every weight tensor of 16 elements or more
(bvit_edge.runtime.params.MIN_ELEMENTS) becomes a parameter of ``main``, appended after the image input,
and is saved in ``params.npz`` (numpy ``np.savez``, keys ``p0``, ``p1``, ... in parameter order) in its
final form and dtype: 8-bit weights as int8 (packed for the target's dot instructions), binary weights
repacked for the target's word size, float tensors as float32 (each .npy entry carries its dtype), except that
weights the export stores compactly (int16 / int8 / int4 codes + scales, float16;
bvit_edge.runtime.compact_params) stay so, with their scales beside them, and are rebuilt in float32 when the
artifact is loaded, as the manifest's ``params.decode`` says. Scalars and tiny constants stay in ``lib.so``.
The entry is then called as ``main(image, *params)``
(bvit_edge.runtime.artifact loads params.npz with numpy alone). The manifest (``schema_version`` 2)
records ``"params": {"storage": "file", "file": "params.npz", "count": N, "bytes": B, "sha256": ...,
"names": [...], "arrays": [{"name", "shape", "dtype"}, ...]}`` (``bytes`` and ``sha256`` of the file; one
shape and dtype per weight as stored). ``lib_sha256`` is the digest of ``lib.so`` and
``required_cpu_features`` the CPU features its code may use (bvit_edge.runtime.cpu_features); the runtime
checks all three before loading (bvit_edge.runtime.artifact). With ``"embedded"`` the weights stay
compile-time constants inside ``lib.so`` and the manifest says ``"params": {"storage": "embedded"}`` (as
every schema 1 artifact did; those still load).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bvit_edge.atomic import write_json
from bvit_edge.contract import DOMAIN, DOMAIN_VERSION, read_data_metadata
from bvit_edge.digest import sha256_file as _sha256
from bvit_edge.errors import BvitEdgeError, ConfigError, MissingDependencyError, ToolchainError, UsageError
from bvit_edge.output_folder import check_output_folder, output_folder
from bvit_edge.runtime.params import LiftedParams
from bvit_edge.runtime.tool_versions import module_versions

SCHEMA_VERSION = 2
LIB_NAME = "lib.so"
PARAMS_NAME = "params.npz"
MANIFEST_NAME = "manifest.json"
PARAMS_STORAGES = ("file", "embedded")


def _load_onnx(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise UsageError(f"ONNX model {path} does not exist; export one first (bvit-edge export).")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise UsageError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}).") from None


def _metadata(model: Any) -> dict[str, Any]:
    """The data description the export recorded (bvit_edge.contract.read_data_metadata)."""
    return read_data_metadata({p.key: p.value for p in model.metadata_props})


def _input_shape(model: Any) -> tuple[str, list[int]]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConfigError(
            f"The model has {len(inputs)} graph inputs ({[i.name for i in inputs]}); bvit-edge compiles "
            "models with one image input."
        )
    inp = inputs[0]
    dims = []
    for i, d in enumerate(inp.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)  # symbolic batch: artifacts are compiled for batch 1
        else:
            raise ConfigError(
                f"Input {inp.name!r} has a symbolic dimension {i} ({d.dim_param!r}); export with a static image size."
            )
    return inp.name, dims


def _tool_versions(compiler: str | None) -> dict[str, str]:
    """tvm, onnx, tvm_ffi (when installed), LLVM's major version and the C compiler that links lib.so."""
    import tvm

    from bvit_edge.targets.toolchain import compiler_version

    versions = module_versions(("tvm", "onnx")) | module_versions(("tvm_ffi",), missing=None)
    with contextlib.suppress(Exception):  # an LLVM-less TVM build has no llvm_version_major
        versions["llvm"] = str(tvm.target.codegen.llvm_version_major())
    versions["cc"] = compiler_version(compiler)
    return versions


def _required_cpu_features(spec: Any) -> list[str]:
    """The CPU features (Linux /proc/cpuinfo / HWCAP names) the generated code may use: the instruction-set
    extensions LLVM enables for the target's mtriple/mcpu/mattr (bvit_edge.runtime.cpu_features), which the
    runtime checks before loading so a CPU without them gets a clear error instead of SIGILL."""
    from tvm.target import codegen

    from bvit_edge.runtime.cpu_features import required_features

    return required_features(spec.arch, [str(f) for f in codegen.llvm_get_cpu_features(spec.tvm())])


def relax_pipeline(spec: Any, family: Any, fast_math: bool = False, params: Any = None) -> Any:
    """The Relax pass pipeline: the CPU backend's, plus our layout rewrites before it
    (bvit_edge.runtime.graph_passes) and our float-op schedules after legalize + fuse.

    ``fast_math``: erf / exp / softmax become TVM's vectorizable approximations (topi.fast_erf, fast_exp,
    fast_softmax) instead of scalar libm calls (FastMathTransform).
    ``params``: a :class:`bvit_edge.runtime.params.LiftedParams` to lift the weights out of ``main`` into
    (after constant folding and the schedules, before dataflow lowering): ``main`` then takes them after the
    image. None (the default) keeps them embedded as constants.
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from bvit_edge.runtime.compact_params import keep_compact_pass
    from bvit_edge.runtime.graph_passes import graph_passes
    from bvit_edge.runtime.params import lift_params_pass
    from bvit_edge.runtime.schedules import float_schedule_pass

    target = spec.tvm()
    lift = [lift_params_pass(params)] if params is not None else []
    keep = [keep_compact_pass(params)] if params is not None else []  # int8/float16 weights stay so in params.npz

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(m: Any, _ctx: Any) -> Any:
        with target:
            seq = tvm.transform.Sequential(
                keep
                + graph_passes(fast_math, family.float_lanes)
                + ([relax.transform.FastMathTransform()] if fast_math else [])
                + cpu.library_dispatch_passes(target)
                + cpu.legalize_passes(target)
                + [float_schedule_pass(family)]
                + lift
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target)
            )
            return seq(m)

    return _pipeline


def build_relax(mod: Any, spec: Any, family: Any, fast_math: bool = False, params: Any = None) -> Any:
    """Legalize, fuse, schedule (float rules) and build a Relax module for ``spec``; returns the executable.

    ``params``: see :func:`relax_pipeline` (filled during the build; call ``main(x, *params.arrays)``)."""
    import tvm

    try:
        return tvm.compile(mod, target=spec.tvm(), relax_pipeline=relax_pipeline(spec, family, fast_math, params))
    except BvitEdgeError:
        raise
    except Exception as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ToolchainError(f"TVM failed to build the model for {spec.name!r}: {last}") from exc


def compile_model(
    onnx_path: str | os.PathLike[str],
    target: Any,
    out_dir: str | os.PathLike[str],
    threads: int | None = None,
    tune: int = 0,
    fast_math: bool = True,
    params_storage: str = "file",
    tuning_db: str | os.PathLike[str] | None = None,
    session: Any = None,
    log: Any = None,
    overwrite: bool = False,
) -> Path:
    """Compile ``onnx_path`` for ``target`` (preset name, TOML path, dict or TargetSpec) into ``out_dir``.

    Returns the artifact folder. ``threads`` is the default runtime thread count recorded in the manifest
    (the target's default when None). Schedules: the per-family rules, with the knobs of the target
    family's tuning database (bvit_edge.runtime.tuning: the shipped one, overridden by ``tuning_db`` when
    that file exists). ``tune`` = N > 0 re-tunes every binary kernel of this model (at most N candidates
    each) on this machine, or on the board of the RPC ``session`` for a cross target, and saves the result
    into ``tuning_db`` when given (created or updated) as well as in the artifact's ``tuning.json``.
    ``fast_math``: see :func:`relax_pipeline` (recorded in the manifest). On by default: TVM's exact erf/exp
    are scalar libm calls, much slower end to end, and the approximations are as faithful to onnxruntime on
    the trained demo student (any float difference can move a value across a binarization threshold, exact
    libm calls included); the README gives the measured errors and speed. ``params_storage``: "file" (the
    weights in params.npz, the default) or "embedded" (inside lib.so); see the module docstring. ``out_dir``
    follows bvit_edge.output_folder's rule (new, empty, or an artifact compiled before; ``overwrite``
    replaces anything else), checked before any work.
    """
    _check_options(params_storage, tune)
    check_output_folder(out_dir, "compile", overwrite, inputs=(onnx_path, tuning_db))
    build = _BuildTarget.resolve(target)
    onnx_path = Path(onnx_path)
    model = _load_onnx(onnx_path)
    input_name, shape = _input_shape(model)
    mod, tuned = _import_tuned(model, {input_name: shape}, build, tune, tuning_db, session, log)
    lifted = LiftedParams() if params_storage == "file" else None
    exe = build_relax(mod, build.spec, build.family, fast_math, lifted)
    manifest = _manifest(onnx_path, model, input_name, shape, build, threads, fast_math, tuned, tune)
    with output_folder(out_dir, "compile", overwrite, inputs=(onnx_path, tuning_db)) as tmp:
        _link(exe, tmp / LIB_NAME, build, manifest)
        if tuned.result is not None:
            tuned.result.save(tmp / "tuning.json")
        if lifted is not None:
            manifest["params"] = _save_params(lifted, tmp / PARAMS_NAME)
        write_json(tmp / MANIFEST_NAME, manifest)
    return Path(out_dir)


def _check_options(params_storage: str, tune: int) -> None:
    """ConfigError for a ``params_storage`` or ``tune`` value compile does not know, before any work."""
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise MissingDependencyError("compiling needs apache-tvm: pip install 'apache-tvm==0.27.*'.") from None
    if params_storage not in PARAMS_STORAGES:
        raise ConfigError(
            f"params_storage={params_storage!r} (bvit-edge compile --params): use 'file' (weights in "
            "params.npz) or 'embedded' (weights inside lib.so)."
        )
    if tune < 0:
        raise ConfigError(f"--tune {tune}: give the number of candidates per kernel (>= 1), or 0 for no tuning.")


@dataclass
class _BuildTarget:
    """What the build is for: the target spec, its schedule family (the int8 dot scheme from its CPU
    features) and the cross compiler that links lib.so (None: the host's)."""

    spec: Any
    family: Any
    compiler: str | None

    @classmethod
    def resolve(cls, target: Any) -> _BuildTarget:
        """The preset checked (an mcpu LLVM does not know would silently compile for a generic CPU) and its
        compiler found (a ToolchainError naming the apt package when it is missing), before any work."""
        from bvit_edge.runtime.schedules import family_params
        from bvit_edge.targets import load_target
        from bvit_edge.targets.toolchain import find_compiler

        spec = load_target(target)
        spec.check()
        family = family_params(spec.family, spec.tvm())
        return cls(spec, family, find_compiler(spec))


@dataclass
class _Tuned:
    """The schedule knobs a build used: the database applied, the records it applied, the kernels seen, and
    the records this compile measured (``--tune``; None without)."""

    database: Any
    applied: list[str]
    kernels: int
    result: Any = None


def _import_tuned(
    model: Any,
    shapes: dict[str, list[int]],
    build: _BuildTarget,
    tune: int,
    tuning_db: Any,
    session: Any,
    log: Any,
) -> tuple[Any, _Tuned]:
    """The Relax module of ``model`` with the family's tuning database applied; with ``tune`` > 0 its binary
    kernels are tuned first (saved into ``tuning_db`` when given) and the model imported again with them."""
    from bvit_edge.runtime import tuning
    from bvit_edge.runtime.tvm_frontend import import_onnx

    spec, family = build.spec, build.family
    db = tuning.shipped_database(spec.family)
    if tuning_db is not None:
        db = db.merged(tuning.TuningDatabase.load(tuning_db, spec.family))
    with tuning.applying(db) as state:
        mod = import_onnx(model, shapes, family)
    tuned = None
    if tune:
        kernels = list(state.seen.values())
        tuned = tuning.tune_kernels(kernels, spec, family, tune, session=session, compiler=build.compiler, log=log)
        if tuning_db is not None:
            user = tuning.TuningDatabase.load(tuning_db, spec.family)
            user.records.update(tuned.records)
            user.save(tuning_db)
        db = db.merged(tuned)
        with tuning.applying(db) as state:
            mod = import_onnx(model, shapes, family)
    return mod, _Tuned(db, sorted(state.applied), len(state.seen), tuned)


def _manifest(
    onnx_path: Path,
    model: Any,
    input_name: str,
    shape: list[int],
    build: _BuildTarget,
    threads: int | None,
    fast_math: bool,
    tuned: _Tuned,
    tune: int,
) -> dict[str, Any]:
    """manifest.json before linking (lib and params are filled in as they are written)."""
    meta = _metadata(model)
    spec = build.spec
    return {
        "schema_version": SCHEMA_VERSION,
        "target": spec.to_dict(),
        "model": {"file": onnx_path.name, "sha256": _sha256(onnx_path)},
        "input": {"name": input_name, "shape": shape, "dtype": "float32"},
        "normalization": {"mean": meta.get("mean"), "std": meta.get("std")},
        "image_size": meta.get("image_size"),
        "classes": meta.get("classes"),
        "op_domains": {DOMAIN: DOMAIN_VERSION},
        "entry": "main",
        "lib": LIB_NAME,
        "params": {"storage": "embedded"},
        "threads": int(threads if threads is not None else spec.threads),
        "word_bits": build.family.word_bits,
        "fast_math": bool(fast_math),
        "tuning": {
            "database": tuned.database.source,
            "applied": tuned.applied,
            "kernels": tuned.kernels,
            "trials_per_kernel": int(tune),
        },
        "tool_versions": _tool_versions(build.compiler),
        "required_cpu_features": _required_cpu_features(spec),
    }


def _link(exe: Any, lib_path: Path, build: _BuildTarget, manifest: dict[str, Any]) -> None:
    """Export the executable as ``lib_path`` with the target's toolchain; its bytes and sha256 go into the
    manifest."""
    try:
        if build.compiler is None:
            exe.export_library(str(lib_path))
        else:
            exe.export_library(str(lib_path), cc=build.compiler)
    except Exception as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ToolchainError(
            f"Linking lib.so for {build.spec.name!r} with {build.compiler or 'the host compiler'} failed: {last}"
        ) from exc
    manifest["lib_bytes"] = lib_path.stat().st_size
    manifest["lib_sha256"] = _sha256(lib_path)


def _save_params(lifted: Any, path: Path) -> dict[str, Any]:
    """Write the lifted weights to ``path`` (params.npz); returns the manifest's ``params`` record."""
    lifted.save_npz(path)
    record: dict[str, Any] = {
        "storage": "file",
        "file": path.name,
        "count": len(lifted),
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "names": list(lifted.names),
        "arrays": [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in lifted.as_dict().items()],
    }
    if lifted.decode:  # compactly stored weights, rebuilt at load (bvit_edge.runtime.compact_params)
        record["decode"] = lifted.decode
    return record
