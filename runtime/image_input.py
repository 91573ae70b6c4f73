"""Reading a single image file for ``bvit-edge run --image`` with Pillow and numpy only (no torch).

Eval preprocessing as the training data pipeline: convert to RGB, resize the shorter side to
round(S / crop_pct) (bilinear, antialiased), centre crop S x S, scale to [0, 1]. Normalisation is left to
the artifact (its manifest holds mean/std).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bvit_edge.errors import DataError


def load_image(path: str | os.PathLike[str], image_size: int, crop_pct: float = 1.0) -> np.ndarray:
    """float32 [3, S, S] in [0, 1]; a DataError naming the file when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"Image {p} does not exist.")
    try:
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            short = round(image_size / crop_pct)
            scale = short / min(w, h)
            nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{p} is not a readable image ({exc}). Pass a PNG or JPEG file.") from exc
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
