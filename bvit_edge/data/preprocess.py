"""Deterministic resizing of one image, as DeiT / GSB do it, written with ``torch.nn.functional.interpolate``.

Train images: resize to ``S x S`` (the random crop / flip / RandAugment run later, on batches).
Eval images: resize the shorter side to ``floor(S / crop_pct)`` keeping the aspect ratio (the longer side
becomes ``floor(scale * long / short)``), then cut the centred ``S x S`` window whose top-left corner is
``(round((h - S) / 2), round((w - S) / 2))``. With ``crop_pct = 1`` and a square image both are a plain resize.

Resampling is antialiased (``antialias=True``): for down-scaling the kernel is widened by the scale factor, the
same filter Pillow uses, so results agree with ``PIL.Image.resize`` on float images to ~1e-6. Bicubic
overshoot is clamped back into ``[0, 1]``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bvit_edge.errors import UsageError

INTERPOLATIONS = ("bilinear", "bicubic")


def check_interpolation(interpolation: str) -> str:
    """Validate an interpolation name (``bilinear`` | ``bicubic``)."""
    if interpolation not in INTERPOLATIONS:
        raise UsageError(f"Unknown interpolation {interpolation!r}. Choose one of: {', '.join(INTERPOLATIONS)}.")
    return interpolation


def check_crop_pct(crop_pct: float) -> float:
    """Validate a centre-crop fraction: ``0 < crop_pct <= 1``."""
    crop_pct = float(crop_pct)
    if not 0.0 < crop_pct <= 1.0:
        raise UsageError(f"crop_pct must be in (0, 1], got {crop_pct}. DeiT uses 0.875 (resize 256, crop 224).")
    return crop_pct


#: Sources up to this many pixels are resized by two small matrix products (see :func:`resize_matrix`).
SMALL_SOURCE_PIXELS = 64 * 64


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int, interpolation: str) -> torch.Tensor:
    """``R [n_out, n_in]``: the 1-D antialiased resize as a matrix, read off by resizing the unit vectors.

    Antialiased interpolation is separable and linear, so resizing ``X [h, w]`` equals ``R_h @ X @ R_w^T``.
    For tiny sources (8 x 8 digits, 32 x 32 CIFAR) two small matmuls are ~10x faster than ``interpolate``.
    """
    # Width 2, not 1: torch's antialiased kernels return zeros for a width-1 input (torch 2.13).
    eye = torch.eye(n_in, dtype=torch.float32).view(n_in, 1, n_in, 1).repeat(1, 1, 1, 2)
    cols = F.interpolate(eye, size=(n_out, 2), mode=interpolation, antialias=True, align_corners=False)
    return cols[:, 0, :, 0].T.contiguous()


def resize(img: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize ``[C, h, w]`` float in ``[0, 1]`` to ``[C, *size]`` (antialiased), clamped to ``[0, 1]``."""
    h, w = int(img.shape[-2]), int(img.shape[-1])
    if (h, w) == tuple(size):
        return img
    if h * w <= SMALL_SOURCE_PIXELS:
        rh = resize_matrix(h, int(size[0]), interpolation).to(img.device)
        rw = resize_matrix(w, int(size[1]), interpolation).to(img.device)
        out = torch.matmul(torch.matmul(rh, img), rw.T)
    else:
        out = F.interpolate(img.unsqueeze(0), size=size, mode=interpolation, antialias=True, align_corners=False)[0]
    return out.clamp_(0.0, 1.0)


def eval_geometry(h: int, w: int, image_size: int, crop_pct: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((rh, rw), (top, left))``: the size the eval resize produces and the centre-crop corner."""
    scale = math.floor(image_size / crop_pct)
    if h <= w:
        rh, rw = scale, int(scale * w / h)
    else:
        rh, rw = int(scale * h / w), scale
    top = round((rh - image_size) / 2.0)
    left = round((rw - image_size) / 2.0)
    return (rh, rw), (top, left)


@dataclass(frozen=True)
class Preprocess:
    """The per-image transform of a split: ``train`` (resize to S x S) or ``eval`` (resize + centre crop)."""

    image_size: int
    train: bool
    crop_pct: float = 1.0
    interpolation: str = "bicubic"

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if self.train or (self.crop_pct == 1.0 and h == w):
            return resize(img, (s, s), self.interpolation)
        (rh, rw), (top, left) = eval_geometry(h, w, s, self.crop_pct)
        out = resize(img, (rh, rw), self.interpolation)
        return out[:, top : top + s, left : left + s].contiguous()
