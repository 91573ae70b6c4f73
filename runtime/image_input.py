"""Model inputs from image files, folders and raw camera frames, with Pillow and numpy only (no torch).

Eval preprocessing as the training data pipeline: convert to RGB, resize the shorter side to
round(S / crop_pct) (bilinear, antialiased), centre crop S x S, scale to [0, 1]; float32 [3, S, S].
Normalisation is left to the artifact (its manifest holds mean/std).

* :func:`load_image`: one file (PNG, JPEG, anything Pillow reads).
* :func:`expand_inputs`: files and folders -> the image files to classify (a folder's images with a known
  suffix, sorted by name, not recursive). A missing path, or a folder holding no image, is a DataError (exit 2).
* :func:`read_frames`: raw frames from a byte stream (a camera pipe on stdin: ``rpicam-vid --codec yuv420 -o -``,
  ``ffmpeg -f rawvideo -pix_fmt rgb24 -``), each ``width x height`` in one of :data:`PIXEL_FORMATS`, as
  H x W x 3 uint8 RGB arrays; :func:`frame_to_input` preprocesses one like a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from bvit_edge.errors import DataError, UsageError

__all__ = [
    "IMAGE_SUFFIXES",
    "PIXEL_FORMATS",
    "expand_inputs",
    "frame_bytes",
    "frame_to_input",
    "load_image",
    "parse_frame_size",
    "read_frames",
]

#: File suffixes taken from a folder (files named explicitly may have any suffix Pillow reads).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
#: Raw frame layouts: rgb24 / bgr24 (3 bytes a pixel), gray8 (1 byte), yuv420 (I420 planar: the Y plane, then
#: U and V at half resolution; BT.601 limited range, what rpicam-vid and most USB cameras give).
PIXEL_FORMATS = ("rgb24", "bgr24", "gray8", "yuv420")


def _preprocess(im: Any, image_size: int, crop_pct: float) -> np.ndarray:
    from PIL import Image

    im = im.convert("RGB")
    w, h = im.size
    short = round(image_size / crop_pct)
    scale = short / min(w, h)
    nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - image_size) // 2, (nh - image_size) // 2
    im = im.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_image(path: str | os.PathLike[str], image_size: int, crop_pct: float = 1.0) -> np.ndarray:
    """float32 [3, S, S] in [0, 1]; a DataError naming the file when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"Image {p} does not exist." if not p.exists() else f"{p} is not an image file.")
    try:
        with Image.open(p) as im:
            return _preprocess(im, image_size, crop_pct)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{p} is not a readable image ({exc}). Pass a PNG or JPEG file.") from None


def expand_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders as their images (sorted, not recursive)."""
    if not paths:
        raise UsageError("No input: give image files or folders of images.")
    out: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(
                    f"The folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of "
                    "image files, or the files themselves."
                )
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p} does not exist: give image files or folders of images.")
    return out


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (640, 480); UsageError otherwise."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise UsageError(f"Frame size {text!r}: give WIDTHxHEIGHT, e.g. 640x480.")
    return int(w), int(h)


def frame_bytes(width: int, height: int, pixel_format: str) -> int:
    """Bytes of one raw frame."""
    if pixel_format not in PIXEL_FORMATS:
        raise UsageError(f"Pixel format {pixel_format!r}: use one of {', '.join(PIXEL_FORMATS)}.")
    if pixel_format == "yuv420":
        if width % 2 or height % 2:
            raise UsageError(f"yuv420 frames need an even width and height (got {width}x{height}).")
        return width * height * 3 // 2
    return width * height * (1 if pixel_format == "gray8" else 3)


def _yuv420_to_rgb(buf: bytes, width: int, height: int) -> np.ndarray:
    """I420 (BT.601 limited range) -> RGB uint8: R = 1.164(Y-16) + 1.596(V-128), G = 1.164(Y-16) - 0.392(U-128)
    - 0.813(V-128), B = 1.164(Y-16) + 2.017(U-128), chroma upsampled by repetition."""
    a = np.frombuffer(buf, dtype=np.uint8)
    n = width * height
    y = a[:n].reshape(height, width).astype(np.float32) - 16.0
    u = a[n : n + n // 4].reshape(height // 2, width // 2).repeat(2, 0).repeat(2, 1).astype(np.float32) - 128.0
    v = a[n + n // 4 :].reshape(height // 2, width // 2).repeat(2, 0).repeat(2, 1).astype(np.float32) - 128.0
    rgb = np.stack([1.164 * y + 1.596 * v, 1.164 * y - 0.392 * u - 0.813 * v, 1.164 * y + 2.017 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def read_frames(
    stream: IO[bytes], width: int, height: int, pixel_format: str = "rgb24", limit: int | None = None
) -> Iterator[np.ndarray]:
    """Frames from ``stream`` as H x W x 3 uint8 RGB arrays, until the stream ends (or ``limit`` frames). A stream
    ending inside a frame is a DataError (the size or pixel format does not match what the camera sends)."""
    size = frame_bytes(width, height, pixel_format)
    count = 0
    while limit is None or count < limit:
        buf = bytearray()
        while len(buf) < size:
            chunk = stream.read(size - len(buf))
            if not chunk:
                break
            buf += chunk
        if not buf:
            return
        if len(buf) < size:
            raise DataError(
                f"The input ended inside frame {count + 1}: {len(buf)} of its {size} bytes "
                f"({width}x{height} {pixel_format}). Check the frame size and pixel format against "
                "what the camera sends."
            )
        count += 1
        if pixel_format == "yuv420":
            yield _yuv420_to_rgb(bytes(buf), width, height)
            continue
        a = np.frombuffer(bytes(buf), dtype=np.uint8)
        if pixel_format == "gray8":
            yield np.repeat(a.reshape(height, width, 1), 3, axis=2)
        elif pixel_format == "bgr24":
            yield np.ascontiguousarray(a.reshape(height, width, 3)[:, :, ::-1])
        else:
            yield a.reshape(height, width, 3)


def frame_to_input(frame: np.ndarray, image_size: int, crop_pct: float = 1.0) -> np.ndarray:
    """One H x W x 3 uint8 RGB frame preprocessed like an image file: float32 [3, S, S] in [0, 1]."""
    from PIL import Image

    return _preprocess(Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)), image_size, crop_pct)
