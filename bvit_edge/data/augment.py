"""Train-time augmentation on batches ``[B, 3, S, S]`` in ``[0, 1]``, built from kornia (torchvision-free).

Presets (:meth:`AugmentConfig.preset`):

* ``deit`` - the DeiT / GSB recipe: RandomResizedCrop(S, scale 0.08-1, ratio 3/4-4/3) -> horizontal flip
  (p 0.5) -> RandAugment (n 2, magnitude 9 of 10, ops drawn per image) -> RandomErasing (p 0.25, area 0.02-1/3,
  aspect 0.3-3.3, filled with per-pixel noise). ``color_jitter = 0.4`` is recorded as in the recipe, but - as in
  timm, which DeiT uses - colour jitter is applied only when RandAugment is off (or ``force_color_jitter``).
* ``light`` - integer shifts of up to +-2 px (zero padding, random 2-D offset); no flip (a flipped digit is a
  different symbol). The default for digits.
* ``none`` - identity.

Everything draws from torch's global RNG, so ``torch.manual_seed`` makes a batch's augmentation reproducible.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from bvit_edge.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "deit": dict(scale=(0.08, 1.0), hflip=0.5, rand_augment_n=2, rand_augment_m=9.0, color_jitter=0.4, reprob=0.25),
    "light": dict(translate_px=2),
    "none": dict(),
}


@dataclass
class AugmentConfig:
    """Which augmentations run, and how strongly. All off by default; presets switch on a recipe.

    ``scale``: RandomResizedCrop area range (None: no crop). ``ratio``: its aspect range. ``translate_px``:
    maximal integer shift. ``hflip``: flip probability. ``rand_augment_n`` / ``rand_augment_m``: number of ops
    per image and magnitude on timm's 0..10 scale (kornia's scale is 0..30: m is multiplied by 3).
    ``rand_augment_chunk``: how many consecutive images share one draw of RandAugment ops (kornia draws the ops
    once per call): 1 = every image its own ops, as timm does; larger values trade that for speed on a GPU.
    ``color_jitter``: brightness = contrast = saturation strength. ``reprob``: random-erasing probability.
    """

    name: str = "none"
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    translate_px: int = 0
    hflip: float = 0.0
    rand_augment_n: int = 0
    rand_augment_m: float = 9.0
    rand_augment_chunk: int = 1
    color_jitter: float = 0.0
    force_color_jitter: bool = False
    reprob: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 1.0 / 3.0)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    VERSION = 1

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AugmentConfig:
        """A named preset (``deit`` | ``light`` | ``none``), with fields overridden by keyword."""
        if name not in PRESETS:
            raise ConfigError(f"Unknown augmentation preset {name!r}. Choose one of: {', '.join(PRESETS)}.")
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"Unknown augmentation option(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
            )
        cfg = cls(name=name, **{**PRESETS[name], **overrides})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError for values out of range."""
        problems = []
        if self.scale is not None and not (0 < self.scale[0] <= self.scale[1] <= 1):
            problems.append(f"scale {self.scale} must satisfy 0 < lo <= hi <= 1")
        if not 0 <= self.hflip <= 1:
            problems.append(f"hflip {self.hflip} must be a probability")
        if not 0 <= self.reprob <= 1:
            problems.append(f"reprob {self.reprob} must be a probability")
        if self.translate_px < 0:
            problems.append(f"translate_px {self.translate_px} must be >= 0")
        if self.rand_augment_n < 0 or (self.rand_augment_n and not 0 < self.rand_augment_m < 10):
            problems.append(f"rand_augment n={self.rand_augment_n} m={self.rand_augment_m}: need n >= 0 and 0 < m < 10")
        if self.rand_augment_chunk < 1:
            problems.append(f"rand_augment_chunk {self.rand_augment_chunk} must be >= 1")
        if self.color_jitter < 0:
            problems.append(f"color_jitter {self.color_jitter} must be >= 0")
        if problems:
            raise ConfigError("Bad augmentation config: " + "; ".join(problems) + ".")

    @property
    def applies_color_jitter(self) -> bool:
        """timm's rule: colour jitter only without RandAugment, unless forced."""
        return self.color_jitter > 0 and (self.rand_augment_n == 0 or self.force_color_jitter)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
        return {"type": "AugmentConfig", "version": self.VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        d = {k: v for k, v in d.items() if k not in ("type", "version")}
        for k in ("scale", "ratio", "erase_scale", "erase_ratio"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"Unknown augmentation option(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
            )
        cfg = cls(**d)
        cfg.validate()
        return cfg


class PerChunk(nn.Module):
    """Run ``op`` on consecutive chunks of ``chunk`` images (kornia's RandAugment draws its ops once per call)."""

    def __init__(self, op: nn.Module, chunk: int = 1) -> None:
        super().__init__()
        self.op = op
        self.chunk = int(chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.op(x[i : i + self.chunk]) for i in range(0, x.shape[0], self.chunk)], dim=0)


class NoiseErasing(nn.Module):
    """Random erasing whose rectangle (sampled by kornia) is filled with uniform per-pixel noise in [0, 1].

    DeiT erases with N(0, 1) noise in normalised space (``--remode pixel``); these images are not normalised
    yet, so the fill is drawn in pixel space and stays in range.
    """

    def __init__(self, p: float, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.erase = K.RandomErasing(p=p, scale=scale, ratio=ratio, value=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.erase(torch.ones_like(x[:, :1])) == 0  # True inside the erased rectangles
        noise = torch.rand_like(x)
        return torch.where(mask, noise, x)


class TrainAugment(nn.Module):
    """The augmentation pipeline of an :class:`AugmentConfig`; output clamped to ``[0, 1]``."""

    def __init__(self, config: AugmentConfig, image_size: int) -> None:
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        self.config = config
        self.image_size = int(image_size)
        s = self.image_size
        ops: list[nn.Module] = []
        if config.translate_px > 0:
            ops.append(K.RandomCrop((s, s), padding=int(config.translate_px), fill=0.0))
        if config.scale is not None:
            ops.append(K.RandomResizedCrop((s, s), scale=config.scale, ratio=config.ratio))
        if config.hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=config.hflip))
        if config.rand_augment_n > 0:
            m = min(max(round(config.rand_augment_m * 3), 1), 29)  # timm 0..10 -> kornia (0, 30)
            ops.append(PerChunk(RandAugment(n=int(config.rand_augment_n), m=m), config.rand_augment_chunk))
        if config.applies_color_jitter:
            cj = float(config.color_jitter)
            ops.append(K.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=0.0, p=1.0))
        if config.reprob > 0:
            ops.append(NoiseErasing(config.reprob, config.erase_scale, config.erase_ratio))
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.image_size, self.image_size):
            s = self.image_size
            raise ConfigError(f"Train augmentation expects a batch [B, 3, {s}, {s}], got {tuple(x.shape)}.")
        if len(self.ops) == 0:
            return x
        return self.ops(x).clamp(0.0, 1.0)


def build_train_augment(config: AugmentConfig | str, image_size: int) -> TrainAugment:
    """The batch augmentation module for ``config`` (an AugmentConfig or a preset name) at ``image_size``."""
    if isinstance(config, str):
        config = AugmentConfig.preset(config)
    config.validate()
    return TrainAugment(config, image_size)
