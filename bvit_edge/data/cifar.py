"""CIFAR-100 from the python pickles of the official archive (``train``, ``test``, ``meta``); val = test.

Each batch file is a pickled dict with bytes keys: ``b"data"`` (N x 3072 uint8, each row a 32 x 32 image in
CHW order, row-major), ``b"fine_labels"`` (N ints in 0..99); ``meta`` holds ``b"fine_label_names"``. The uint8
arrays stay in memory as ``[N, 3, 32, 32]``. Unpickling is restricted to the numpy array constructors these
files need, so a crafted file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bvit_edge.data.images import TensorImageDataset
from bvit_edge.data.info import CIFAR100_MEAN, CIFAR100_STD, DatasetInfo, DataSplits
from bvit_edge.data.preprocess import Preprocess
from bvit_edge.data.registry import LoadRequest, register_dataset, require_root
from bvit_edge.data.selection import select_per_class
from bvit_edge.errors import DataError

FILES = ("train", "test", "meta")
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only constructs numpy arrays (and plain Python containers)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return _ArrayUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # EOFError, UnpicklingError, ValueError, ...
        raise DataError(
            f"CIFAR-100 file {path} is truncated or not a CIFAR python pickle ({type(exc).__name__}: {exc}). "
            "Unpack cifar-100-python.tar.gz again (the python version of the archive)."
        ) from exc


def _find_folder(root: Path) -> Path:
    for folder in (root, root / "cifar-100-python"):
        if all((folder / f).is_file() for f in FILES):
            return folder
    missing = [f for f in FILES if not (root / f).is_file()]
    raise DataError(
        f"CIFAR-100 root {root} lacks {', '.join(missing)} (looked in {root} and {root / 'cifar-100-python'}). "
        "Point --data-root at the unpacked cifar-100-python folder holding train, test and meta."
    )


def _batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if not isinstance(d, dict) or b"data" not in d or b"fine_labels" not in d:
        keys = sorted(str(k) for k in d) if isinstance(d, dict) else type(d).__name__
        raise DataError(
            f"CIFAR-100 file {path} has no b'data' / b'fine_labels' entries (found {keys}). Is it a CIFAR-10 batch "
            "or another file? Use the python version of the CIFAR-100 archive."
        )
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"fine_labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"CIFAR-100 file {path}: b'data' must be an N x 3072 uint8 array, found {data.dtype} {data.shape}. "
            "The file is malformed; unpack the archive again."
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"CIFAR-100 file {path}: b'fine_labels' must hold {len(data)} integers, found {labels.dtype} "
            f"{labels.shape}. The file is malformed; unpack the archive again."
        )
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(
            f"CIFAR-100 file {path}: label {int(labels[bad[0]])} at entry {int(bad[0])} "
            f"is outside 0..{num_classes - 1} "
            f"({len(bad)} such entries). The file is malformed; unpack the archive again."
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


@register_dataset("cifar100")
def load_cifar100(req: LoadRequest) -> DataSplits:
    root = require_root(req, "the CIFAR-100 python pickles train, test and meta")
    folder = _find_folder(root)
    meta = _unpickle(folder / "meta")
    names = meta.get(b"fine_label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"CIFAR-100 file {folder / 'meta'} has no b'fine_label_names' list. Unpack the archive again.")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    x_train, y_train = _batch(folder / "train", len(classes))
    x_val, y_val = _batch(folder / "test", len(classes))
    if req.per_class is not None:
        keep = select_per_class(y_train, req.per_class, req.seed, classes, f"{folder / 'train'}")
        x_train, y_train = x_train[keep], y_train[keep]
    interp = req.interpolation or "bicubic"
    crop_pct = req.crop_pct or (1.0 if req.image_size <= 32 else 0.875)
    train = TensorImageDataset(
        torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train,
        classes,
        Preprocess(req.image_size, True, crop_pct, interp),
    )
    val = TensorImageDataset(
        torch.from_numpy(np.ascontiguousarray(x_val)),
        y_val,
        classes,
        Preprocess(req.image_size, False, crop_pct, interp),
    )
    info = DatasetInfo(
        name="cifar100",
        root=str(folder),
        classes=classes,
        image_size=req.image_size,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        num_train=len(train),
        num_val=len(val),
        per_class=req.per_class,
        default_augment="deit",
        interpolation=interp,
        crop_pct=crop_pct,
        seed=req.seed,
    )
    return DataSplits(train=train, val=val, info=info)
