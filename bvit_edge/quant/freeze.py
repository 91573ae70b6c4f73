"""freeze(model): switch a trained quantized model to deployment mode, once, in place.

Every quantized layer either offers ``frozen() -> nn.Module`` (a replacement module that holds only buffers
and calls the ``torch.ops.bvit`` deployment ops) or ``freeze_()`` (converts itself in place). ``freeze`` walks
the module tree, applies them, turns every remaining parameter off for autograd and puts the model in eval
mode. Binary weights become packed sign bits + scales exactly once; activations are binarized by the ops at
run time with sgn(0) = +1 (training's torch.sign gives 0 there: the only place the outputs may differ beyond
float rounding).
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn as nn

from bvit_edge.errors import ConfigError

_Model = TypeVar("_Model", bound=nn.Module)


def _freeze_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if hasattr(child, "frozen") and callable(child.frozen):
            setattr(module, name, child.frozen())
            continue
        if hasattr(child, "freeze_") and callable(child.freeze_):
            child.freeze_()
        _freeze_children(child)


def freeze(model: _Model) -> _Model:
    """Convert ``model`` to deployment mode in place and return it (idempotent)."""
    if getattr(model, "is_frozen", False):
        return model
    pending = [
        name
        for name, mod in model.named_modules()
        if isinstance(getattr(mod, "initialized", None), torch.Tensor) and not bool(mod.initialized)
    ]
    if pending:
        raise ConfigError(
            f"Cannot freeze: {len(pending)} quantizers were never initialised ({', '.join(pending[:6])}"
            f"{' ...' if len(pending) > 6 else ''}). Their scales are set from the first batch: run at least one "
            "forward pass (training or a calibration batch) before freeze()."
        )
    model.eval()
    _freeze_children(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.is_frozen = True  # type: ignore[assignment]  # a bool flag; nn.Module types attributes as Tensor | Module
    return model


def ensure_trainable(model: nn.Module) -> None:
    """Raise a clear error for a frozen model put back into training."""
    if getattr(model, "is_frozen", False):
        raise ConfigError(
            "This model was frozen for deployment (freeze()): its binary weights are packed bits without "
            "gradients, so it cannot be trained. Train the unfrozen model (reload the checkpoint) and freeze "
            "it again afterwards."
        )


__all__ = ["ensure_trainable", "freeze"]
