"""Model summary in the manner of larq's ``summary()``: per layer, parameters by precision, packed bytes and
multiply-accumulates by precision for one image; totals and the compression ratio against the float teacher.

Counting rules
- Parameters (and deployment buffers of frozen layers) are counted by precision: 1-bit, 8-bit, 32-bit.
  Where a value's precision comes from:
  1. a module's ``bit_widths() -> {param_name: bits}`` (the summary protocol: names relative to the module,
     unnamed parameters of that module and its children count as 32-bit);
  2. otherwise known classes: GSBLinear weight 1-bit; W8A8Linear / LSQConv2d weight 8-bit; frozen
     deployment modules: a uint8 ``w_bits`` buffer [N, Kp/8] counts N * in_features 1-bit values, int8
     buffers 8-bit values;
  3. everything else 32-bit (bool / integer bookkeeping buffers such as ``initialized`` are not counted;
     float buffers such as BatchNorm statistics are, being needed at inference).
- Packed bytes: a 1-bit tensor [N, ...] is N rows of K = numel/N bits padded to a multiple of 64
  (N * ceil(K/64) * 8 bytes, the op contract's layout); 8-bit values 1 byte; 32-bit values 4 bytes.
- MACs for one image (batch 1), from the shapes seen in one forward pass: Linear = tokens * in * out,
  Conv2d = output elements * in/groups * kh * kw. Binary MACs (BOPs) when both operands are 1-bit
  (binary weights with binarized inputs), int8 MACs for 8-bit weights, float MACs (FLOPs counted as MACs)
  otherwise. Attention products: a module's ``macs(n_tokens) -> {"binary"|"int8"|"float": count}``
  (protocol), GSB attention (stage 2: q k^T binary 1 plane x 1 plane, A V binary 3 planes x 3 planes; stage
  1 float), and the float teacher's attention (2 H N^2 d_h float MACs).
- Compression ratio = (parameters of the full-precision teacher of the same geometry * 4 bytes) / packed
  bytes. The teacher is ``VisionTransformer(model.cfg)`` when the model has a ViT config, else the model's
  own parameter count at 32 bits (e.g. the BinaryViT pyramid), or the ``teacher`` passed in.
- Storage choices (bvit_edge.export.storage, ``bvit-edge export --att-bias / --float-params``): the packed
  bytes when GSB's attention bias B (E_B elements in R_B rows of N) is stored as float32 (4 E_B), float16
  (2 E_B), int16 / int8 with a float32 scale per row (2 E_B + 4 R_B, E_B + 4 R_B) or int4 (ceil(E_B / 2)
  + 4 R_B), and when the
  other 32-bit tensors of 16
  elements or more (E_F) are stored as float16 (2 bytes an element saved). These are the weight bytes an
  export or an artifact's params.npz holds, before the file's own framing (and lib.so's code).
"""

from __future__ import annotations

import copy
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from bvit_edge.errors import ConfigError

WORD_BITS = 64


@dataclass
class LayerSummary:
    """One row of the summary."""

    name: str
    kind: str
    params_1bit: int = 0
    params_8bit: int = 0
    params_32bit: int = 0
    packed_bytes: int = 0
    binary_macs: int = 0
    int8_macs: int = 0
    float_macs: int = 0


@dataclass
class ModelSummary:
    """A model's summary: per-layer rows, totals, the teacher's float size and the compression ratio."""

    model_name: str
    input_size: tuple[int, int, int]
    layers: list[LayerSummary] = field(default_factory=list)
    teacher_params: int = 0
    #: (E_B, R_B, E_F) of the storage rules (module docstring); None when not computed
    storage_counts: tuple[int, int, int] | None = None

    def total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.layers)

    @property
    def params_1bit(self) -> int:
        return self.total("params_1bit")

    @property
    def params_8bit(self) -> int:
        return self.total("params_8bit")

    @property
    def params_32bit(self) -> int:
        return self.total("params_32bit")

    @property
    def params_total(self) -> int:
        return self.params_1bit + self.params_8bit + self.params_32bit

    @property
    def packed_bytes(self) -> int:
        return self.total("packed_bytes")

    @property
    def teacher_bytes(self) -> int:
        return 4 * self.teacher_params

    @property
    def compression_ratio(self) -> float:
        return self.teacher_bytes / self.packed_bytes if self.packed_bytes else float("nan")

    def storage(self) -> dict[str, dict[str, Any]]:
        """Packed bytes under every storage choice, key "att_bias=X,float_params=Y" (module docstring)."""
        from bvit_edge.contract import ATT_BIAS_STORAGES as ATT_BIAS_CHOICES
        from bvit_edge.contract import FLOAT_PARAMS_STORAGES as FLOAT_PARAMS_CHOICES

        if self.storage_counts is None:
            return {}
        e_b, r_b, e_f = self.storage_counts
        bias_bytes = {
            "float32": 4 * e_b,
            "int16": 2 * e_b + 4 * r_b,
            "float16": 2 * e_b,
            "int8": e_b + 4 * r_b,
            "int4": -(-e_b // 2) + 4 * r_b,
        }
        out: dict[str, dict[str, Any]] = {}
        for fp in FLOAT_PARAMS_CHOICES:
            for ab in ATT_BIAS_CHOICES:
                packed = self.packed_bytes - 4 * e_b + bias_bytes[ab] - (2 * e_f if fp == "float16" else 0)
                out[f"att_bias={ab},float_params={fp}"] = {
                    "att_bias": ab,
                    "float_params": fp,
                    "att_bias_bytes": bias_bytes[ab],
                    "float_params_bytes": (2 if fp == "float16" else 4) * e_f,
                    "packed_bytes": packed,
                    "compression_ratio": self.teacher_bytes / packed if packed else float("nan"),
                }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: units in the field names."""
        return {
            "schema_version": 1,
            "model": self.model_name,
            "input_size": list(self.input_size),
            "layers": [asdict(r) for r in self.layers],
            "totals": {
                "params_1bit": self.params_1bit,
                "params_8bit": self.params_8bit,
                "params_32bit": self.params_32bit,
                "params_total": self.params_total,
                "packed_bytes": self.packed_bytes,
                "binary_macs": self.total("binary_macs"),
                "int8_macs": self.total("int8_macs"),
                "float_macs": self.total("float_macs"),
            },
            "teacher_params": self.teacher_params,
            "teacher_fp32_bytes": self.teacher_bytes,
            "compression_ratio": self.compression_ratio,
            "storage": self.storage(),
        }

    def table(self, max_rows: int | None = None) -> Any:
        """A rich Table (renderable with ``rich.print``)."""
        from rich.table import Table

        t = Table(title=f"{self.model_name} — input {'x'.join(map(str, self.input_size))}, batch 1")
        for col in (
            "Layer",
            "Type",
            "1-bit",
            "8-bit",
            "32-bit",
            "Packed KiB",
            "BOPs (bin MACs)",
            "int8 MACs",
            "FP MACs",
        ):
            t.add_column(col, justify="left" if col in ("Layer", "Type") else "right")
        rows = self.layers if max_rows is None else self.layers[:max_rows]
        for r in rows:
            t.add_row(
                r.name or "(model)",
                r.kind,
                _n(r.params_1bit),
                _n(r.params_8bit),
                _n(r.params_32bit),
                f"{r.packed_bytes / 1024:.1f}",
                _n(r.binary_macs),
                _n(r.int8_macs),
                _n(r.float_macs),
            )
        if max_rows is not None and len(self.layers) > max_rows:
            t.add_row(f"... {len(self.layers) - max_rows} more", "", "", "", "", "", "", "", "")
        t.add_row(
            "Total",
            "",
            _n(self.params_1bit),
            _n(self.params_8bit),
            _n(self.params_32bit),
            f"{self.packed_bytes / 1024:.1f}",
            _n(self.total("binary_macs")),
            _n(self.total("int8_macs")),
            _n(self.total("float_macs")),
            style="bold",
        )
        t.caption = (
            f"params {self.params_total:,} ({self.params_1bit / max(self.params_total, 1):.1%} 1-bit); packed "
            f"{self.packed_bytes / 1e6:.2f} MB vs float teacher {self.teacher_bytes / 1e6:.2f} MB "
            f"({self.teacher_params:,} params): compression x{self.compression_ratio:.1f}"
        )
        return t

    def storage_table(self) -> Any:
        """A rich Table of the packed bytes under every storage choice (None without attention bias or
        float tensors to re-encode)."""
        from rich.table import Table

        rows = self.storage()
        if not rows or self.storage_counts is None or not any(self.storage_counts):
            return None
        from bvit_edge.contract import DEFAULT_ATT_BIAS, DEFAULT_FLOAT_PARAMS

        e_b, r_b, e_f = self.storage_counts
        t = Table(
            title=f"storage of the float parameters: attention bias B {e_b:,} values in {r_b:,} rows, other "
            f"float tensors {e_f:,} values"
        )
        for col in ("--att-bias", "--float-params", "B bytes", "other float bytes", "packed MB", "vs float teacher"):
            t.add_column(col, justify="left" if col.startswith("--") else "right")
        default = f"att_bias={DEFAULT_ATT_BIAS},float_params={DEFAULT_FLOAT_PARAMS}"
        for key, r in rows.items():
            t.add_row(
                r["att_bias"],
                r["float_params"],
                f"{r['att_bias_bytes']:,}",
                f"{r['float_params_bytes']:,}",
                f"{r['packed_bytes'] / 1e6:.2f}",
                f"x{r['compression_ratio']:.1f}",
                style="bold" if key == default else None,
            )
        t.caption = "bold: the export default. Weight bytes of the .onnx file / the artifact's params.npz."
        return t

    def __rich__(self) -> Any:
        storage = self.storage_table()
        if storage is None:
            return self.table()
        from rich.console import Group

        return Group(self.table(), storage)

    def to_text(self, width: int = 160, max_rows: int | None = None) -> str:
        """The table as plain text."""
        from rich.console import Console

        console = Console(width=width, record=True, file=io.StringIO())
        console.print(self.table(max_rows))
        storage = self.storage_table()
        if storage is not None:
            console.print(storage)
        return console.export_text()


def _n(x: int) -> str:
    return f"{x:,}" if x else "0"


def _packed_bytes_1bit(shape: tuple[int, ...]) -> int:
    if not shape:
        return 8
    n = shape[0]
    k = 1
    for s in shape[1:]:
        k *= s
    return n * (-(-k // WORD_BITS)) * (WORD_BITS // 8)


def _known_bit_widths(mod: nn.Module) -> dict[str, int] | None:
    """Precision of the parameters of layers that do not implement ``bit_widths()`` (GSB side)."""
    if hasattr(mod, "bit_widths") and callable(mod.bit_widths):
        return dict(mod.bit_widths())
    name = type(mod).__name__
    if name == "GSBLinear":
        return {"weight": 1}
    if name in ("W8A8Linear", "LSQConv2d"):
        return {"weight": 8}
    if name.startswith("Frozen") or hasattr(mod, "w_bits") or hasattr(mod, "w_int8"):
        return {}
    return None


def _mac_kind(mod: nn.Module) -> str:
    """Precision class of a linear/conv layer's MACs."""
    name = type(mod).__name__
    if name == "GSBLinear":
        return "binary" if getattr(mod, "input_mode", None) else "float"
    if name == "FrozenInt8Linear" and getattr(mod, "a_scale", None) is None:
        return "float"
    if name in ("W8A8Linear", "LSQConv2d") or hasattr(mod, "w_int8"):
        return "int8"
    if hasattr(mod, "w_bits"):
        return "binary"
    widths = _known_bit_widths(mod)
    if widths and widths.get("weight") == 1:
        return "binary"
    if widths and widths.get("weight") == 8:
        return "int8"
    return "float"


def _count_values(mod: nn.Module, widths: dict[str, int] | None, row: LayerSummary, recurse: bool) -> None:
    """Add ``mod``'s parameters (and countable buffers) to ``row``."""
    for pname, p in mod.named_parameters(recurse=recurse):
        bits = (widths or {}).get(pname, 32)
        _add(row, bits, tuple(p.shape), p.numel())
    for bname, b in mod.named_buffers(recurse=recurse):
        if b is None or b.dtype in (torch.bool, torch.int64, torch.int32):
            continue
        leaf = bname.rsplit(".", 1)[-1]
        owner = mod.get_submodule(bname.rsplit(".", 1)[0]) if "." in bname else mod
        if b.dtype == torch.uint8 and leaf == "w_bits":
            k = int(getattr(owner, "in_features", b.shape[-1] * 8))
            n = int(b.shape[0])
            row.params_1bit += n * k
            row.packed_bytes += int(b.numel())
        elif b.dtype == torch.int8:
            _add(row, 8, tuple(b.shape), b.numel())
        elif b.is_floating_point():
            _add(row, 32, tuple(b.shape), b.numel())


def _add(row: LayerSummary, bits: int, shape: tuple[int, ...], numel: int) -> None:
    if bits == 1:
        row.params_1bit += numel
        row.packed_bytes += _packed_bytes_1bit(shape)
    elif bits == 8:
        row.params_8bit += numel
        row.packed_bytes += numel
    else:
        row.params_32bit += numel
        row.packed_bytes += 4 * numel


def _layer_macs(mod: Any, inp: torch.Tensor, out: torch.Tensor) -> int:
    # mod: Any, since the frozen layers are read by their attributes (w_int8, in_features), which nn.Module's
    # __getattr__ types as Tensor | Module
    if isinstance(mod, nn.Conv2d) or type(mod).__name__ == "FrozenInt8Conv2d":
        w = mod.weight if isinstance(mod, nn.Conv2d) else mod.w_int8
        # weight [C_out, C_in / groups, kh, kw]: each output element takes C_in/groups * kh * kw MACs
        return int(out.numel() // out.shape[0]) * int(w.shape[1]) * int(w.shape[2] * w.shape[3])
    k = int(mod.in_features)
    n = int(mod.out_features)
    tokens = int(inp.numel() // inp.shape[0] // k)
    return tokens * k * n


def _is_compute_layer(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.Linear, nn.Conv2d)) or type(mod).__name__ in (
        "FrozenBinaryLinear",
        "FrozenInt8Linear",
        "FrozenInt8Conv2d",
        "FrozenACDLinear",
    )


def _attention_macs(mod: Any, n_tokens: int) -> dict[str, int] | None:
    # mod: Any, read by its attributes (num_heads, head_dim, macs) as in _layer_macs
    if hasattr(mod, "macs") and callable(mod.macs):
        return dict(mod.macs(n_tokens))
    if not (hasattr(mod, "num_heads") and hasattr(mod, "head_dim")):
        return None
    base = int(mod.num_heads) * n_tokens * n_tokens * int(mod.head_dim)
    if type(mod).__name__ == "GSBAttention" and getattr(mod, "stage", 1) == 2:
        return {"binary": base + 9 * base}
    return {"float": 2 * base}


def _teacher_params(model: nn.Module, teacher: nn.Module | None) -> int:
    if teacher is not None:
        return sum(p.numel() for p in teacher.parameters())
    cfg = getattr(model, "cfg", None)
    from bvit_edge.models.vit import VisionTransformer, ViTConfig

    if isinstance(cfg, ViTConfig):
        plain = ViTConfig(**{**cfg.to_dict(), "extra": {}})
        t = VisionTransformer(plain)
        return sum(p.numel() for p in t.parameters())
    return sum(p.numel() for p in model.parameters())


def summary(
    model: nn.Module, input_size: tuple[int, int, int] | None = None, teacher: nn.Module | None = None
) -> ModelSummary:
    """Summarise ``model`` (any registered bvit-edge model, trained, fresh or frozen) for one image.

    ``input_size`` (C, H, W) defaults to ``model.default_cfg["input_size"]``. The model itself is not run:
    a deep copy is (so lazily initialised scales and recorded state of ``model`` are untouched)."""
    if input_size is None:
        cfg = getattr(model, "default_cfg", None)
        if not cfg or "input_size" not in cfg:
            raise ConfigError(
                "summary(): the model has no default_cfg['input_size']; build it with create_model() or pass "
                "input_size=(C, H, W)."
            )
        input_size = tuple(cfg["input_size"])
    size = tuple(int(v) for v in input_size)
    if len(size) != 3:
        raise ConfigError(f"summary(): input_size must be (C, H, W), got {input_size}.")
    name = str(getattr(model, "model_name", type(model).__name__))
    work = copy.deepcopy(model)
    work.eval()
    shapes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for mname, mod in work.named_modules():
        if _is_compute_layer(mod) or hasattr(mod, "num_heads"):

            def hook(m: nn.Module, args: tuple, out: Any, _n: str = mname) -> None:
                if _n not in shapes and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    shapes[_n] = (args[0].detach(), out.detach())

            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            work(torch.randn(1, *size))
    except Exception as exc:
        raise ConfigError(f"summary(): a forward pass of {name} on one {size} image failed: {exc}") from exc
    finally:
        for h in handles:
            h.remove()

    result = ModelSummary(name, size, teacher_params=_teacher_params(model, teacher))
    claimed: list[str] = []
    for mname, mod in work.named_modules():
        if any(mname.startswith(c + ".") for c in claimed):
            continue
        row = LayerSummary(mname, type(mod).__name__)
        widths = _known_bit_widths(mod)
        if widths is not None or _is_compute_layer(mod):
            _count_values(mod, widths, row, recurse=True)
            if mname:
                claimed.append(mname)
            if mname in shapes and _is_compute_layer(mod):
                macs = _layer_macs(mod, *shapes[mname])
                kind = _mac_kind(mod)
                setattr(row, f"{kind}_macs", getattr(row, f"{kind}_macs") + macs)
        else:
            _count_values(mod, None, row, recurse=False)
        if mname in shapes and not _is_compute_layer(mod):
            att = _attention_macs(mod, int(shapes[mname][0].shape[1]))
            for kind, v in (att or {}).items():
                setattr(row, f"{kind}_macs", getattr(row, f"{kind}_macs") + int(v))
        if row.params_1bit or row.params_8bit or row.params_32bit or row.binary_macs or row.int8_macs or row.float_macs:
            result.layers.append(row)
    result.storage_counts = _storage_counts(work, result)
    return result


def _is_att_bias(name: str) -> bool:
    return name.endswith((".att_bias", "move_att.bias")) or name == "att_bias"


def _storage_counts(model: nn.Module, result: ModelSummary) -> tuple[int, int, int]:
    """(E_B, R_B, E_F): attention-bias values and rows, other 32-bit tensors of >= MIN_ELEMENTS values."""
    from bvit_edge.contract import STORAGE_MIN_ELEMENTS as MIN_ELEMENTS

    e_b = r_b = e_f = 0
    tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b is not None]
    for name, t in tensors:
        if not t.is_floating_point():
            continue
        if _is_att_bias(name):
            e_b += t.numel()
            r_b += t.numel() // int(t.shape[-1]) if t.dim() else 1
        elif t.numel() >= MIN_ELEMENTS and _counted_as_32bit(model, name):
            e_f += t.numel()
    return e_b, r_b, e_f


def _counted_as_32bit(model: nn.Module, name: str) -> bool:
    """True when the summary counted tensor ``name`` at 32 bits (not a 1-bit or 8-bit weight)."""
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    widths = _known_bit_widths(owner)
    return (widths or {}).get(leaf, 32) == 32 and leaf not in ("w_bits",)


__all__ = ["LayerSummary", "ModelSummary", "summary"]
