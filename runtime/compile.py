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

import json
import os
from pathlib import Path
from typing import Any

from bvit_edge.atomic import write_json
from bvit_edge.contract import DATA_METADATA, DOMAIN, DOMAIN_VERSION, META_DEFAULT_CFG
from bvit_edge.digest import sha256_file as _sha256
from bvit_edge.errors import BvitEdgeError, ConfigError, MissingDependencyError, ToolchainError, UsageError
from bvit_edge.output_folder import check_output_folder, output_folder

SCHEMA_VERSION = 2
LIB_NAME = "lib.so"
PARAMS_NAME = "params.npz"
MANIFEST_NAME = "manifest.json"
PARAMS_STORAGES = ("file", "embedded")
META_KEYS = DATA_METADATA


def _load_onnx(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise UsageError(f"ONNX model {path} does not exist; export one first (bvit-edge export).")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise UsageError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}).") from None


def _metadata(model: Any) -> dict[str, Any]:
    props = {p.key: p.value for p in model.metadata_props}
    meta: dict[str, Any] = {}
    for field, key in META_KEYS.items():
        if key in props:
            try:
                meta[field] = json.loads(props[key])
            except json.JSONDecodeError:
                meta[field] = props[key]
    # fallback: the exporter's "bvit_edge.default_cfg" (timm-style cfg: mean, std, input_size)
    if META_DEFAULT_CFG in props:
        try:
            cfg = json.loads(props[META_DEFAULT_CFG])
        except json.JSONDecodeError:
            cfg = {}
        meta.setdefault("mean", cfg.get("mean"))
        meta.setdefault("std", cfg.get("std"))
        if "input_size" in cfg and isinstance(cfg["input_size"], list) and len(cfg["input_size"]) == 3:
            meta.setdefault("image_size", cfg["input_size"][1:])
        if meta.get("mean") is None:
            meta.pop("mean")
        if meta.get("std") is None:
            meta.pop("std")
    return meta


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
    import onnx
    import tvm

    from bvit_edge.targets.toolchain import compiler_version

    versions = {"tvm": tvm.__version__, "onnx": onnx.__version__}
    try:
        import tvm_ffi

        versions["tvm_ffi"] = getattr(tvm_ffi, "__version__", "unknown")
    except ImportError:
        pass
    try:
        versions["llvm"] = str(tvm.target.codegen.llvm_version_major())
    except Exception:  # noqa: BLE001
        pass
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
    ``fast_math``: see :func:`relax_pipeline` (recorded in the manifest). On by default: TVM's exact
    erf/exp are scalar libm calls, which made GSB DeiT-S 2.1x slower end to end (47.4 vs 22.5 ms, 1 thread),
    while the approximations (max error vs float64: erf 3.7e-7 absolute, exp 2.8e-7 relative; onnxruntime's
    own: 5.8e-8, 7.6e-8) measured exactly as faithful to onnxruntime on the trained demo student (the same
    359 of 360 digits val images within 1e-5, top-1 360/360): any float difference can move a value across
    a binarization threshold (a1/2, r*max), exact libm calls included. ``params_storage``: "file" (the weights in
    params.npz, the default) or "embedded" (inside lib.so); see the module docstring. ``out_dir`` follows
    bvit_edge.output_folder's rule (new, empty, or an artifact compiled before; ``overwrite`` replaces
    anything else), checked before any work.
    """
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise MissingDependencyError("compiling needs apache-tvm: pip install 'apache-tvm==0.27.*'.") from None
    from bvit_edge.runtime.params import LiftedParams
    from bvit_edge.runtime.schedules import family_params
    from bvit_edge.runtime.tvm_frontend import import_onnx
    from bvit_edge.targets import load_target
    from bvit_edge.targets.toolchain import find_compiler

    if params_storage not in PARAMS_STORAGES:
        raise ConfigError(
            f"params_storage={params_storage!r} (bvit-edge compile --params): use 'file' (weights in "
            "params.npz) or 'embedded' (weights inside lib.so)."
        )
    from bvit_edge.runtime import tuning

    if tune < 0:
        raise ConfigError(f"--tune {tune}: give the number of candidates per kernel (>= 1), or 0 for no tuning.")
    check_output_folder(out_dir, "compile", overwrite, inputs=(onnx_path, tuning_db))
    spec = load_target(target)
    spec.check()  # an mcpu LLVM does not know would silently compile for a generic CPU
    family = family_params(spec.family, spec.tvm())  # the int8 dot scheme from the target's CPU features
    compiler = find_compiler(spec)  # ToolchainError naming the apt package when missing
    onnx_path = Path(onnx_path)
    model = _load_onnx(onnx_path)
    input_name, shape = _input_shape(model)
    db = tuning.shipped_database(spec.family)
    if tuning_db is not None:
        db = db.merged(tuning.TuningDatabase.load(tuning_db, spec.family))
    with tuning.applying(db) as state:
        mod = import_onnx(model, {input_name: shape}, family)
    tuned = None
    if tune:
        tuned = tuning.tune_kernels(
            list(state.seen.values()), spec, family, tune, session=session, compiler=compiler, log=log
        )
        if tuning_db is not None:
            user = tuning.TuningDatabase.load(tuning_db, spec.family)
            user.records.update(tuned.records)
            user.save(tuning_db)
        db = db.merged(tuned)
        with tuning.applying(db) as state:
            mod = import_onnx(model, {input_name: shape}, family)
    lifted = LiftedParams() if params_storage == "file" else None
    exe = build_relax(mod, spec, family, fast_math, lifted)
    meta = _metadata(model)
    manifest = {
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
        "word_bits": family.word_bits,
        "fast_math": bool(fast_math),
        "tuning": {
            "database": db.source,
            "applied": sorted(state.applied),
            "kernels": len(state.seen),
            "trials_per_kernel": int(tune),
        },
        "tool_versions": _tool_versions(compiler),
        "required_cpu_features": _required_cpu_features(spec),
    }
    with output_folder(out_dir, "compile", overwrite, inputs=(onnx_path, tuning_db)) as tmp:
        lib_path = tmp / LIB_NAME
        try:
            if compiler is None:
                exe.export_library(str(lib_path))
            else:
                exe.export_library(str(lib_path), cc=compiler)
        except Exception as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ToolchainError(
                f"Linking lib.so for {spec.name!r} with {compiler or 'the host compiler'} failed: {last}"
            ) from exc
        manifest["lib_bytes"] = lib_path.stat().st_size
        manifest["lib_sha256"] = _sha256(lib_path)
        if tuned is not None:
            tuned.save(tmp / "tuning.json")
        if lifted is not None:
            params_path = tmp / PARAMS_NAME
            lifted.save_npz(params_path)
            manifest["params"] = {
                "storage": "file",
                "file": PARAMS_NAME,
                "count": len(lifted),
                "bytes": params_path.stat().st_size,
                "sha256": _sha256(params_path),
                "names": list(lifted.names),
                "arrays": [
                    {"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in lifted.as_dict().items()
                ],
            }
            if lifted.decode:  # compactly stored weights, rebuilt at load (bvit_edge.runtime.compact_params)
                manifest["params"]["decode"] = lifted.decode
        write_json(tmp / MANIFEST_NAME, manifest)
    return Path(out_dir)
