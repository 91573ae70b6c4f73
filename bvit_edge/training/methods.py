"""Training methods: how each one builds its model and computes its loss.

A method is a small object: ``build(cfg, info, teacher)`` returns the model to train, ``loss(model, images,
labels, teacher)`` returns (loss, eval logits). Distillation methods get the full-precision teacher, frozen
in eval mode. The losses follow ALGORITHMS.md:

- fp:        CE(logits, y) (both heads for a distilled teacher: mean of the two CEs).
- gsb:       DeiT hard distillation 0.5 CE(cls, y) + 0.5 CE(dist, argmax teacher).
- bit:       logit soft-CE (T = 1) to the teacher + hidden-state MSE + attention-score MSE.
- binaryvit: distribution loss CE(softmax teacher, log_softmax student).
- acdbit:    w_qk * MSE(Q, K vs the teacher's) + w_ce * CE(student, argmax teacher), 0.9 / 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bvit_edge.errors import ConfigError

_METHODS: dict[str, Callable[[], "Method"]] = {}


def register_method(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        _METHODS[name] = cls
        cls.name = name
        return cls

    return wrap


def get_method(name: str) -> "Method":
    if name not in _METHODS:
        raise ConfigError(f"Unknown method {name!r}. Choose one of: {', '.join(sorted(_METHODS))}.")
    return _METHODS[name]()


def mean_logits(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        return (out[0] + out[1]) / 2
    return out


@dataclass
class Method:
    name: str = "method"
    needs_teacher: bool = False

    def build(self, cfg: Any, num_classes: int, image_size: int, teacher: nn.Module | None) -> nn.Module:
        raise NotImplementedError

    def loss(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, teacher: nn.Module | None, cfg: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _create(cfg: Any, num_classes: int, image_size: int, **extra: Any) -> nn.Module:
    from bvit_edge.models import create_model

    kwargs: dict[str, Any] = {"num_classes": num_classes, "img_size": image_size}
    if cfg.drop_path:
        kwargs["drop_path_rate"] = cfg.drop_path
    kwargs.update(extra)
    return create_model(cfg.model, **kwargs)


@register_method("fp")
class FullPrecision(Method):
    """The full-precision teacher: plain cross-entropy (label smoothing optional)."""

    needs_teacher = False

    def build(self, cfg: Any, num_classes: int, image_size: int, teacher: nn.Module | None) -> nn.Module:
        return _create(cfg, num_classes, image_size)

    def loss(self, model, images, labels, teacher, cfg):  # type: ignore[override]
        out = model(images)
        ls = float(cfg.label_smoothing)
        if isinstance(out, (tuple, list)):
            loss = 0.5 * (F.cross_entropy(out[0], labels, label_smoothing=ls) + F.cross_entropy(out[1], labels, label_smoothing=ls))
        else:
            loss = F.cross_entropy(out, labels, label_smoothing=ls)
        return loss, mean_logits(out).detach()
