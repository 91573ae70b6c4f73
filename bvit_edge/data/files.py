"""Shared assembly of a data set whose images are files (ImageFolder, Chaoyang): check, subset, wrap."""

from __future__ import annotations

from pathlib import Path

from bvit_edge.data.images import FileImageDataset, filter_bad
from bvit_edge.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, DataSplits
from bvit_edge.data.preprocess import Preprocess
from bvit_edge.data.registry import LoadRequest
from bvit_edge.data.selection import select_per_class
from bvit_edge.errors import DataError

DEFAULT_CROP_PCT = 0.875


def build_file_splits(
    req: LoadRequest,
    root: Path,
    classes: list[str],
    train_samples: list[tuple[Path, int]],
    val_samples: list[tuple[Path, int]],
    train_where: str,
    val_where: str,
) -> DataSplits:
    """Check every image once, drop bad ones (``skip_bad``) or fail, apply ``per_class``, wrap as Datasets."""
    train_samples, bad_train = filter_bad(train_samples, req.skip_bad, train_where)
    val_samples, bad_val = filter_bad(val_samples, req.skip_bad, val_where)
    present = {y for _, y in train_samples}
    lost = [classes[c] for c in range(len(classes)) if c not in present]
    if lost:
        raise DataError(
            f"After leaving out bad images, class(es) {', '.join(repr(c) for c in lost)} have no training images "
            f"in {train_where}. Add readable images for them."
        )
    if req.per_class is not None:
        keep = select_per_class([y for _, y in train_samples], req.per_class, req.seed, classes, train_where)
        train_samples = [train_samples[i] for i in keep]
    interp = req.interpolation or "bicubic"
    crop_pct = req.crop_pct or DEFAULT_CROP_PCT
    train = FileImageDataset(train_samples, classes, Preprocess(req.image_size, True, crop_pct, interp))
    val = FileImageDataset(val_samples, classes, Preprocess(req.image_size, False, crop_pct, interp))
    skipped = bad_train + bad_val
    info = DatasetInfo(
        name=req.name,
        root=str(root),
        classes=list(classes),
        image_size=req.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_train=len(train),
        num_val=len(val),
        per_class=req.per_class,
        skipped_bad=len(skipped),
        skipped_files=skipped,
        default_augment="deit",
        interpolation=interp,
        crop_pct=crop_pct,
        seed=req.seed,
    )
    return DataSplits(train=train, val=val, info=info)
