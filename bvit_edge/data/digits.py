"""The built-in default: scikit-learn's bundled handwritten digits (1,797 real 8 x 8 images, never downloaded).

Pixel values 0..16 become ``v / 16`` in ``[0, 1]``; the grey image is replicated to 3 channels and resized
(bilinear, antialiased) to ``S x S``. The split is stratified and fixed: 1,437 train / 360 val, drawn with
:data:`SPLIT_SEED` whatever the training seed. ``mean`` / ``std`` are computed on the full 1,437-image train
split at ``S x S`` (so they do not change with ``per_class`` or ``seed``; the val split never enters them).
"""

from __future__ import annotations

import numpy as np
import torch

from bvit_edge.data.images import TensorImageDataset
from bvit_edge.data.info import DatasetInfo, DataSplits
from bvit_edge.data.preprocess import Preprocess
from bvit_edge.data.registry import LoadRequest, register_dataset
from bvit_edge.data.selection import select_per_class, stratified_split
from bvit_edge.errors import MissingDependencyError

SPLIT_SEED = 1797
NUM_VAL = 360
CLASSES = [str(d) for d in range(10)]


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise MissingDependencyError(
            "The digits data set comes from scikit-learn's bundled copy; "
            "install scikit-learn (pip install scikit-learn)."
        ) from exc
    d = load_digits()
    return np.asarray(d.images, dtype=np.float32) / 16.0, np.asarray(d.target, dtype=np.int64)


def _grey_stats(images: torch.Tensor, tf: Preprocess) -> tuple[float, float]:
    """Mean and std over every pixel of the train images after resizing (in chunks, float64 sums)."""
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(0, images.shape[0], 128):
        chunk = images[i : i + 128]
        if chunk.shape[-1] != tf.image_size or chunk.shape[-2] != tf.image_size:
            chunk = torch.nn.functional.interpolate(
                chunk, size=(tf.image_size, tf.image_size), mode=tf.interpolation, antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        c = chunk.double()
        total += float(c.sum())
        total_sq += float((c * c).sum())
        count += c.numel()
    mean = total / count
    return mean, max(total_sq / count - mean * mean, 0.0) ** 0.5


@register_dataset("digits")
def load_digits_splits(req: LoadRequest) -> DataSplits:
    images, labels = _digits_arrays()
    train_idx, val_idx = stratified_split(labels, NUM_VAL, SPLIT_SEED)
    interp = req.interpolation or "bilinear"
    crop_pct = req.crop_pct or 1.0
    train_tf = Preprocess(req.image_size, train=True, crop_pct=crop_pct, interpolation=interp)
    val_tf = Preprocess(req.image_size, train=False, crop_pct=crop_pct, interpolation=interp)
    all_images = torch.from_numpy(images).unsqueeze(1)  # [N, 1, 8, 8]
    mean, std = _grey_stats(all_images[torch.from_numpy(train_idx)], train_tf)
    if req.per_class is not None:
        keep = select_per_class(labels[train_idx], req.per_class, req.seed, CLASSES, "the digits train split")
        train_idx = train_idx[keep]
    train = TensorImageDataset(all_images[torch.from_numpy(train_idx)].clone(), labels[train_idx], CLASSES, train_tf)
    val = TensorImageDataset(all_images[torch.from_numpy(val_idx)].clone(), labels[val_idx], CLASSES, val_tf)
    info = DatasetInfo(
        name="digits",
        root=None,
        classes=list(CLASSES),
        image_size=req.image_size,
        mean=(mean, mean, mean),
        std=(std, std, std),
        num_train=len(train),
        num_val=len(val),
        per_class=req.per_class,
        default_augment="light",
        interpolation=interp,
        crop_pct=crop_pct,
        seed=req.seed,
    )
    return DataSplits(train=train, val=val, info=info)
