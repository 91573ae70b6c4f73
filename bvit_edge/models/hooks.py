"""Intermediate tensors for the distillation losses, and the students' shared deployment plumbing.

Recorded tensors (the same keys for the FP teacher and every student; one list entry per block, in order):

- ``"hidden"``:      the block's output, [B, N, D]
- ``"attn_scores"``: the attention scores before softmax, [B, H, N, N] (students: from the binarized q, k,
                     i.e. what their softmax sees)
- ``"q"``, ``"k"``:  the query and key after the qkv projection, before any binarization, [B, H, N, d_h]

Students record by themselves (``model.record(True)``, run a forward, read ``model.recorded``); the timm-layout
teacher is recorded from outside with forward hooks by :func:`record_intermediates`, which also accepts a
student. Recorded tensors keep their autograd graph (the losses backpropagate through them).
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.nn as nn

from bvit_edge.errors import ConfigError

RECORD_KEYS = ("hidden", "attn_scores", "q", "k")

_Student = TypeVar("_Student", bound="StudentMixin")


def record_intermediates(model: nn.Module, x: torch.Tensor) -> tuple[Any, dict[str, list[torch.Tensor]]]:
    """Run ``model(x)`` and return (output, recorded) with the keys of the module docstring.

    A student with ``record()`` records itself. Otherwise the model must have ``blocks`` whose items have an
    ``attn`` with ``qkv``, ``num_heads``, ``head_dim`` and ``scale`` (the timm layout of
    :class:`bvit_edge.models.vit.VisionTransformer`): hooks on each block collect its output, and on each
    ``attn.qkv`` the projection, from which q, k and the scores q k^T * scale are formed exactly as
    :meth:`bvit_edge.models.vit.Attention.forward` forms them. For a quantized model without ``record()``
    (e.g. the GSB student, whose attention shifts and binarizes q and k before the product) these hook-made
    scores are the float q k^T, not what that model's softmax sees: give such a model ``record()``.
    """
    if hasattr(model, "record") and hasattr(model, "recorded"):
        student: Any = model  # duck-typed: any model with record() and recorded
        prev = bool(getattr(student, "recording", False))
        student.record(True)
        try:
            out = student(x)
            return out, student.recorded
        finally:
            student.record(prev)
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(getattr(b, "attn", None), "qkv") for b in blocks):
        raise ConfigError(
            f"record_intermediates: {type(model).__name__} has neither record() nor timm-layout blocks with "
            "attn.qkv; record only works on bvit-edge teachers (VisionTransformer) and students."
        )
    rec: dict[str, list[torch.Tensor]] = {k: [] for k in RECORD_KEYS}
    handles = []

    def on_qkv(attn: Any):
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            b, n, _ = out.shape
            qkv = out.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k = qkv[0], qkv[1]
            rec["q"].append(q)
            rec["k"].append(k)
            rec["attn_scores"].append((q @ k.transpose(-2, -1)) * attn.scale)

        return hook

    def on_block(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        rec["hidden"].append(out)

    try:
        for blk in blocks:
            handles.append(blk.attn.qkv.register_forward_hook(on_qkv(blk.attn)))
            handles.append(blk.register_forward_hook(on_block))
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, rec


class StudentMixin:
    """Shared by the BiT / BinaryViT / ACD-BiT students: recording and freeze().

    Blocks set ``self.last`` (a dict with some of RECORD_KEYS) when their ``recording`` attribute is True.
    """

    # The type: ignores below: the mixin is only ever combined with nn.Module (which has modules(), train(),
    # and in the students a ``blocks`` attribute); mypy cannot see that from the mixin alone.
    recording: bool = False

    def record(self, on: bool = True) -> None:
        """Switch recording of intermediate tensors on or off (see :data:`RECORD_KEYS`)."""
        self.recording = bool(on)
        for m in self.modules():  # type: ignore[attr-defined]
            if m is not self and hasattr(m, "recording"):
                m.recording = bool(on)
                if not on and hasattr(m, "last"):
                    m.last = {}

    @property
    def recorded(self) -> dict[str, list[torch.Tensor]]:
        """Tensors of the last forward, per block, keyed as :data:`RECORD_KEYS`."""
        rec: dict[str, list[torch.Tensor]] = {k: [] for k in RECORD_KEYS}
        for blk in self.record_blocks():
            last = getattr(blk, "last", {})
            for k in RECORD_KEYS:
                if k in last:
                    rec[k].append(last[k])
        return rec

    def train(self, mode: bool = True):
        """nn.Module.train, refused with a clear error once the model is frozen for deployment."""
        if mode:
            from bvit_edge.quant.freeze import ensure_trainable

            ensure_trainable(self)  # type: ignore[arg-type]
        return super().train(mode)  # type: ignore[misc]

    def record_blocks(self) -> list[nn.Module]:
        return list(self.blocks)  # type: ignore[attr-defined]

    def freeze(self: _Student) -> _Student:
        """Deployment mode, in place, through :func:`bvit_edge.quant.freeze.freeze` (the protocol every
        bvit-edge student shares): each layer with ``frozen()`` is replaced by its deployment module (packed
        sign bits + scales calling the torch.ops.bvit ops), each module with ``freeze_()`` (attention:
        binarizer parameters -> deploy buffers) converts itself; eval mode, no gradients."""
        import bvit_edge.quant.deploy  # noqa: F401  (registers torch.ops.bvit.*)
        from bvit_edge.quant.freeze import freeze

        freeze(self)  # type: ignore[type-var]
        return self


__all__ = ["RECORD_KEYS", "StudentMixin", "record_intermediates"]
