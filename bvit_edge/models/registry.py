"""Model registry in the manner of timm: one registered function per variant, each with a default cfg.

``create_model("deit_small_patch16_224", num_classes=100)`` builds a model; ``list_models("gsb_*")``
lists names. Every model built here carries ``model.default_cfg`` (input size, mean/std, classes) and
``model.model_name``; checkpoints record the name and the keyword arguments so they can be rebuilt.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from bvit_edge.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, dict[str, Any]] = {}
_ALIASES: dict[str, str] = {}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Default cfg of a variant (timm style): input size, interpolation, crop, normalisation."""
    cfg: dict[str, Any] = {
        "input_size": (3, 224, 224),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "num_classes": 1000,
        "family": "vit",
        "precision": "fp32",
    }
    cfg.update(kwargs)
    return cfg


def register_model(
    name: str | None = None, **cfg: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a model constructor under ``name`` (default: the function's name)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _MODELS:
            raise RuntimeError(f"model {key!r} registered twice")
        _MODELS[key] = fn
        _CFGS[key] = _cfg(**cfg)
        return fn

    return wrap


def register_alias(alias: str, target: str) -> None:
    """Make ``alias`` another name for the registered model ``target``."""
    _ALIASES[alias] = target


def _ensure_loaded() -> None:
    # Importing the model families registers them.
    import bvit_edge.models  # noqa: F401


def resolve_name(name: str) -> str:
    """The registered name behind ``name`` (aliases resolved); a clear error for an unknown one."""
    _ensure_loaded()
    name = _ALIASES.get(name, name)
    if name not in _MODELS:
        close = [m for m in sorted(_MODELS) if name.split("_")[0] in m][:8]
        hint = f" Similar: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"Unknown model {name!r}.{hint} Run `bvit-edge models` (or bvit_edge.list_models()) to see "
            "the registered names."
        )
    return name


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell pattern, sorted."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_default_cfg(name: str) -> dict[str, Any]:
    """A copy of the default cfg of ``name``."""
    return dict(_CFGS[resolve_name(name)])


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; keyword arguments override its defaults
    (``num_classes``, ``img_size``, ``in_chans``, ``drop_path_rate``, method-specific flags ...)."""
    key = resolve_name(name)
    try:
        model = _MODELS[key](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"Model {key!r} does not take these arguments: {exc}.") from exc
    cfg = dict(_CFGS[key])
    if "num_classes" in kwargs:
        cfg["num_classes"] = kwargs["num_classes"]
    if "img_size" in kwargs:
        s = int(kwargs["img_size"])
        cfg["input_size"] = (cfg["input_size"][0], s, s)
    model.default_cfg = cfg  # type: ignore[assignment]
    model.model_name = key  # type: ignore[assignment]
    model.model_kwargs = dict(kwargs)  # type: ignore[assignment]
    return model
