"""Image files: the cheap load-time check, lazy decoding with Pillow, and the two Dataset classes.

A file is checked once when the data set is loaded: ``Image.verify()`` (header and, for PNG, every chunk's
CRC up to IEND); a JPEG is also decoded at 1/8 scale (``draft``: libjpeg skips most of the IDCT but still reads
every entropy-coded byte), which catches truncated files that ``verify`` alone lets through.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bvit_edge.data.preprocess import Preprocess
from bvit_edge.errors import DataError

#: File name endings treated as images (lower case); other files in class folders are ignored.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def check_image(path: Path) -> str | None:
    """``None`` if ``path`` is a readable image, else a short reason."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                fmt = im.format
                im.verify()
            if fmt == "JPEG":
                with Image.open(path) as im:
                    im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                    im.load()
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # noqa: BLE001 - any Pillow failure (OSError, SyntaxError, ValueError, ...) is a reason
        return f"{type(exc).__name__}: {exc}"
    return None


def check_images(paths: Sequence[Path], workers: int = 4) -> list[str | None]:
    """:func:`check_image` for every path (a few threads: Pillow decodes outside the GIL), in order."""
    if len(paths) < 16 or workers <= 1:
        return [check_image(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check_image, paths, chunksize=16))


def filter_bad(samples: list[tuple[Path, int]], skip_bad: bool, what: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """Check every sample's image. Bad ones raise a DataError, or with ``skip_bad`` are returned as skipped."""
    reasons = check_images([p for p, _ in samples])
    bad = [(p, r) for (p, _), r in zip(samples, reasons, strict=True) if r is not None]
    if bad and not skip_bad:
        listed = "; ".join(f"{p} ({r})" for p, r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(
            f"{len(bad)} unreadable image(s) in {what}: {listed}{more}. Replace or delete them, or pass "
            "skip_bad=True (--skip-bad) to leave them out (they are counted in the data set info)."
        )
    good = [s for s, r in zip(samples, reasons, strict=True) if r is None]
    return good, [str(p) for p, _ in bad]


def decode_rgb(path: Path) -> torch.Tensor:
    """Decode ``path`` with Pillow, convert to RGB, return float32 ``[3, H, W]`` in ``[0, 1]``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(
            f"Cannot decode image {path} ({type(exc).__name__}: {exc}); it passed the load-time check but failed "
            "now. Replace or delete the file and load the data set again."
        ) from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class FileImageDataset(Dataset):
    """``(image [3, S, S] float32 in [0, 1], label)`` from image files decoded lazily on every access."""

    def __init__(self, samples: Sequence[tuple[Path, int]], classes: Sequence[str], transform: Preprocess) -> None:
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.classes = list(classes)
        self.targets = [y for _, y in self.samples]  # labels without decoding (like torchvision's ImageFolder)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(decode_rgb(path)), label


class TensorImageDataset(Dataset):
    """``(image [3, S, S] float32 in [0, 1], label)`` from images held in memory at their native size.

    ``images`` is ``[N, C, h, w]`` uint8 (divided by 255) or float in ``[0, 1]``; ``C = 1`` is replicated to 3.
    """

    def __init__(
        self, images: torch.Tensor, labels: Sequence[int] | np.ndarray, classes: Sequence[str], transform: Preprocess
    ) -> None:
        self.images = images
        self.targets = [int(y) for y in labels]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raw = self.images[i]
        x = raw.to(torch.float32, copy=True)  # a copy: callers may modify the result in place
        if raw.dtype == torch.uint8:
            x.div_(255.0)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return self.transform(x).contiguous(), self.targets[i]
