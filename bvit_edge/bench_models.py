"""Models for speed and size benchmarks: registered geometries with random weights and EVERY parameter non-zero.

A freshly built model has parameters at exactly zero: GSB's attention bias B, the learnable shifts, biases,
LayerNorm offsets. A compiler folds such tensors away (an add of zeros disappears, and B vanishes from the
artifact), so a benchmark of that model measures less work and fewer bytes than a trained model costs.
:func:`random_frozen_student` therefore fills every exactly-zero element of every float parameter with small
random values before the activation scales are initialised and the model is frozen, and
:func:`assert_no_zero_parameters` checks the frozen result.

Fill values: e ~ N(0, sigma^2), with sigma = :data:`ATT_BIAS_STD_TOKENS` / N for the attention bias B
(a tenth of a uniform attention probability 1/N, N tokens) and :data:`FILL_STD` for everything else.
"""

from __future__ import annotations

from typing import Any

from bvit_edge.errors import ConfigError

FILL_STD = 0.02
ATT_BIAS_STD_TOKENS = 0.1


def _is_att_bias(name: str) -> bool:
    return name.endswith(("move_att.bias", ".att_bias"))


def fill_zero_parameters(model: Any, seed: int = 0) -> int:
    """Replace every exactly-zero element of the model's float parameters and buffers by small random values
    (module docstring); returns how many were filled."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    filled = 0
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    with torch.no_grad():
        for name, t in tensors:
            if t is None or not t.is_floating_point() or t.numel() == 0:
                continue
            zero = t == 0
            n = int(zero.sum())
            if not n:
                continue
            std = ATT_BIAS_STD_TOKENS / int(t.shape[-1]) if _is_att_bias(name) else FILL_STD
            values = torch.randn(n, generator=gen, dtype=torch.float32) * std
            values[values == 0] = std  # a normal draw of exactly zero is possible in float32
            t[zero] = values.to(t.dtype)
            filled += n
    return filled


def zero_parameters(model: Any) -> list[str]:
    """Names of the model's float parameters/buffers holding an exactly-zero element."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [n for n, t in tensors if t is not None and t.is_floating_point() and t.numel() and bool((t == 0).any())]


def assert_no_zero_parameters(model: Any) -> None:
    """ConfigError naming the tensors that still hold an exact zero."""
    zeros = zero_parameters(model)
    if zeros:
        raise ConfigError(
            f"{len(zeros)} float tensors of the benchmark model hold exact zeros "
            f"({', '.join(zeros[:5])}{' ...' if len(zeros) > 5 else ''}): a compiler could fold them "
            "away. Fill them (bvit_edge.bench_models.fill_zero_parameters)."
        )


def random_frozen_student(name: str, seed: int = 0, **kw: Any) -> Any:
    """The registered binary student ``name`` with random weights, every parameter non-zero, its activation
    scales initialised from one random batch, frozen for deployment (checked to hold no exact zero)."""
    import torch

    from bvit_edge.models.registry import create_model
    from bvit_edge.quant.freeze import freeze

    torch.manual_seed(seed)
    model = create_model(name, **kw)
    fill_zero_parameters(model, seed)
    model.train()
    cfg: dict[str, Any] = getattr(model, "default_cfg", None) or {}
    with torch.no_grad():  # the lazily initialised activation scales, from one batch
        model(torch.randn(2, *cfg["input_size"]))
    freeze(model)
    fill_zero_parameters(model, seed + 1)  # deployment buffers derived from zero-free parameters stay so; belt
    assert_no_zero_parameters(model)
    return model


def random_teacher(name: str, seed: int = 0, **kw: Any) -> Any:
    """The registered float teacher ``name`` with random weights, every parameter non-zero, in eval mode."""
    import torch

    from bvit_edge.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model(name, **kw).eval()
    fill_zero_parameters(model, seed)
    assert_no_zero_parameters(model)
    return model


def att_bias_in_artifact(folder: Any, heads: int, tokens: int) -> list[str]:
    """How the artifact's params.npz holds GSB's attention biases [heads, N, N]: one "dtype[, packing]" entry
    per B found (float32 arrays of that shape, or compact ones the manifest decodes to it). An empty list
    means the compiler folded B away."""
    import json
    from pathlib import Path

    import numpy as np

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    info = manifest.get("params") or {}
    decode = info.get("decode") or {}
    shapes = ([heads, tokens, tokens], [1, heads, tokens, tokens], [heads * tokens, tokens])
    found = []
    with np.load(folder / "params.npz", allow_pickle=False) as z:
        for name in info.get("names") or []:
            spec = decode.get(name)
            shape = spec["shape"] if spec else list(z[name].shape)
            if list(shape) in [list(s) for s in shapes]:
                found.append(str(z[name].dtype) + (f" ({spec['packing']})" if spec and spec.get("packing") else ""))
    return found


__all__ = [
    "ATT_BIAS_STD_TOKENS",
    "FILL_STD",
    "assert_no_zero_parameters",
    "att_bias_in_artifact",
    "fill_zero_parameters",
    "random_frozen_student",
    "random_teacher",
    "zero_parameters",
]
