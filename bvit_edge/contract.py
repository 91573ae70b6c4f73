"""The ``bvit_edge`` op contract in one place: domain, version, ops, modes, plane counts, default GSB ratios,
the metadata keys of an exported ONNX file, and the one exception for a violation of any of them.

Everything that writes or reads the contract imports it from here: the PyTorch deployment ops
(:mod:`bvit_edge.quant.deploy`), the ONNX schemas, references and translations (:mod:`bvit_edge.export.ops`),
the onnxruntime path (:mod:`bvit_edge.runtime.ort`), the TVM lowering (:mod:`bvit_edge.runtime.tvm_frontend`)
and its kernels (:mod:`bvit_edge.runtime.kernels`), and the code that reads an export's metadata (compile,
run, the pipeline). The meaning of each op is specified in ``docs/ops/BinaryLinear_v1.md`` and
``docs/ops/BinaryMatMul_v1.md``; ``tests/test_contract.py`` holds this module, the registered ONNX schemas
and those pages to agree. Any change of meaning is a new ``DOMAIN_VERSION``.

Standard library only: the board-side runtime imports it too (no torch, no onnx, no numpy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from bvit_edge.errors import ConfigError

# ------------------------------------------------------------------------------------------------- domain
DOMAIN = "bvit_edge"
"""The ONNX op domain (``node.domain``) of the binary ops."""

DOMAIN_VERSION = 1
"""Its version (the ``opset_import`` entry of an export)."""

STANDARD_DOMAINS = ("", "ai.onnx")
"""The spellings of the default ONNX domain; an export holds nodes of these and of :data:`DOMAIN` only."""

TORCH_NAMESPACE = "bvit"
"""``torch.ops.bvit.*``: the namespace of the PyTorch deployment ops that export to :data:`DOMAIN`."""

# ---------------------------------------------------------------------------------------------------- ops
BINARY_LINEAR = "BinaryLinear"
BINARY_MATMUL = "BinaryMatMul"
OP_TYPES = (BINARY_LINEAR, BINARY_MATMUL)
"""Every op of domain :data:`DOMAIN` version :data:`DOMAIN_VERSION`."""

LINEAR_MODES = ("signed", "unsigned")
"""``BinaryLinear.mode``: how X + shift is binarized (sgn with sgn(0) = +1, or [x' > alpha / 2])."""

MATMUL_A_MODES = ("signed", "unsigned", "gsb_unsigned")
"""``BinaryMatMul.a_mode``: the left operand (GSB's attention probabilities: ``gsb_unsigned``)."""

MATMUL_B_MODES = ("signed", "gsb_signed")
"""``BinaryMatMul.b_mode``: the right operand (GSB's Value: ``gsb_signed``)."""

PLANES = {"signed": 1, "unsigned": 1, "gsb_unsigned": 3, "gsb_signed": 3}
"""Bit planes (and so scales alpha) of an operand in each mode."""

DEFAULT_GSB_RATIOS: tuple[float, float] = (0.7, 0.9)
"""``BinaryMatMul.gsb_ratios`` default: r1, r2 of GSB's group masks M_j = [x > r_j max x] (GSB paper)."""

PACK_WORD_BITS = 64
"""Packing of a binary operand in the file: 64 elements per little-endian word along K, stored as uint8
(``W_bits`` is [N, Kp / 8] with Kp = K rounded up to a multiple of 64); see :mod:`bvit_edge.packing`."""

# -------------------------------------------------------------------------------------------- metadata keys
METADATA_PREFIX = "bvit_edge."
"""Every ``metadata_props`` key bvit-edge writes into an ONNX file starts with it."""

META_OPS = "bvit_edge.ops"
"""``"packed"`` (nodes of :data:`DOMAIN`, bit-packed weights) or ``"standard"`` (standard ONNX ops only)."""

META_OP_DOMAIN = "bvit_edge.op_domain"
"""``"bvit_edge:1"``: the domain and version the file was written for (:func:`op_domain_tag`)."""

META_MODEL_NAME = "bvit_edge.model_name"
"""The registered model name (``gsb_demo_patch4_32``, ...)."""

META_DEFAULT_CFG = "bvit_edge.default_cfg"
"""JSON of the model's timm-style ``default_cfg`` (input_size, mean, std, ...)."""

META_STORAGE = "bvit_edge.storage"
"""JSON ``{"att_bias": ..., "float_params": ...}``: how the file stores GSB's attention bias and the other float
parameters (bvit_edge.export.storage)."""

ATT_BIAS_STORAGES = ("float32", "int16", "float16", "int8", "int4")
"""Storages of GSB's attention bias B (``att_bias`` of :data:`META_STORAGE`): float32, float16 (``Cast``), or
integer codes with one float32 scale per row of N values (``DequantizeLinear``; int16 and int4 need opset 21)."""

FLOAT_PARAMS_STORAGES = ("float32", "float16")
"""Storages of the other float parameters (``float_params`` of :data:`META_STORAGE`)."""

DEFAULT_ATT_BIAS = "int16"
"""The export's default storage of B: the smallest that keeps top-1 identical to float32 storage on all 360
digits val images of the trained demo student (measured; README)."""

DEFAULT_FLOAT_PARAMS = "float32"
"""The export's default storage of the other float parameters."""

STORAGE_MIN_ELEMENTS = 16
"""``float_params`` re-encodes only tensors of at least this many elements (scalars stay float32)."""

DATA_METADATA = {
    "mean": "bvit_edge.mean",
    "std": "bvit_edge.std",
    "classes": "bvit_edge.classes",
    "image_size": "bvit_edge.image_size",
}
"""Field -> key of the data description (JSON values) that export records from the checkpoint and that
compile copies into the artifact manifest and ``run`` uses to normalise and name classes."""

EXPORT_METADATA_KEYS = (
    META_OPS,
    META_OP_DOMAIN,
    META_MODEL_NAME,
    META_DEFAULT_CFG,
    META_STORAGE,
    *DATA_METADATA.values(),
)
"""Every metadata key of an export."""


# ------------------------------------------------------------------------------------------------- errors
class ContractError(ConfigError, ValueError):
    """A model file, an op call or a kernel request that breaks the ``bvit_edge`` op contract: an unknown
    mode, a missing attribute, too few plane scales, another domain version (exit code 2, as every
    :class:`bvit_edge.errors.UsageError`). Also a ``ValueError``, what Python callers of the torch ops
    expect for a bad argument value."""


# ---------------------------------------------------------------------------------------------- checkers
def op_domain_tag() -> str:
    """``"bvit_edge:1"``, the value of :data:`META_OP_DOMAIN`."""
    return f"{DOMAIN}:{DOMAIN_VERSION}"


def check_mode(mode: object, allowed: Sequence[str], what: str, fix: str = "Re-export the model.") -> str:
    """``mode`` as a str (ONNX attributes may arrive as bytes) if it is one of ``allowed``; else a
    :class:`ContractError` naming ``what`` (e.g. "BinaryMatMul: a_mode"), the allowed values and ``fix``."""
    value = mode.decode() if isinstance(mode, bytes) else str(mode)
    if value not in allowed:
        raise ContractError(f"{what} must be one of {', '.join(allowed)}, got {value!r}. {fix}".rstrip())
    return value


def n_planes(mode: str) -> int:
    """Bit planes (and scales) an operand of ``mode`` has: 1, or 3 for the gsb modes."""
    if mode not in PLANES:
        raise ContractError(
            f"Unknown binarization mode {mode!r}; the {DOMAIN} v{DOMAIN_VERSION} modes are {', '.join(PLANES)}."
        )
    return PLANES[mode]


def check_ratios(ratios: Sequence[float] | None) -> tuple[float, float]:
    """``gsb_ratios`` as two floats (None: :data:`DEFAULT_GSB_RATIOS`); ContractError for another count."""
    r = tuple(DEFAULT_GSB_RATIOS if ratios is None else ratios)
    if len(r) != 2:
        raise ContractError(f"gsb_ratios must hold two ratios (r1, r2), got {list(r)}.")
    return float(r[0]), float(r[1])


def data_metadata(data: Mapping[str, Any]) -> dict[str, str]:
    """The data description of ``data`` (a checkpoint config: mean, std, classes, image_size) as
    ``metadata_props`` entries: key of :data:`DATA_METADATA` -> JSON value; fields absent or None are left out."""
    return {key: json.dumps(data[field]) for field, key in DATA_METADATA.items() if data.get(field) is not None}


def read_data_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """The data description an export records (``props``: its ``metadata_props`` as key -> value): field of
    :data:`DATA_METADATA` -> decoded value, None where absent. Where mean, std or image_size are absent, the
    exporter's :data:`META_DEFAULT_CFG` (the model's timm-style ``default_cfg``) supplies them: its mean and std,
    and the last axis of its ``input_size`` [C, H, W]. A value that is not JSON is returned as its text."""

    def decoded(text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    meta = {field: decoded(props[key]) if key in props else None for field, key in DATA_METADATA.items()}
    cfg = decoded(props.get(META_DEFAULT_CFG, "{}"))
    if isinstance(cfg, dict):
        for field in ("mean", "std"):
            if meta[field] is None:
                meta[field] = cfg.get(field)
        size = cfg.get("input_size")
        if meta["image_size"] is None and isinstance(size, list) and len(size) == 3:
            meta["image_size"] = size[-1]
    return meta


def check_domain_version(version: int) -> None:
    """ContractError unless ``version`` (an export's opset_import for :data:`DOMAIN`) is :data:`DOMAIN_VERSION`."""
    if int(version) != DOMAIN_VERSION:
        raise ContractError(
            f"The model uses op domain {DOMAIN!r} version {version}, but this bvit-edge reads only version "
            f"{DOMAIN_VERSION}. Re-export the model with this bvit-edge version, or upgrade bvit-edge."
        )


__all__ = [
    "BINARY_LINEAR",
    "BINARY_MATMUL",
    "DATA_METADATA",
    "DEFAULT_GSB_RATIOS",
    "DOMAIN",
    "DOMAIN_VERSION",
    "EXPORT_METADATA_KEYS",
    "LINEAR_MODES",
    "MATMUL_A_MODES",
    "MATMUL_B_MODES",
    "METADATA_PREFIX",
    "META_DEFAULT_CFG",
    "META_MODEL_NAME",
    "META_OPS",
    "META_OP_DOMAIN",
    "OP_TYPES",
    "PACK_WORD_BITS",
    "PLANES",
    "STANDARD_DOMAINS",
    "TORCH_NAMESPACE",
    "ContractError",
    "check_domain_version",
    "check_mode",
    "check_ratios",
    "data_metadata",
    "n_planes",
    "op_domain_tag",
    "read_data_metadata",
]
