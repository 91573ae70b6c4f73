"""What a loaded data set is: its two splits and a JSON-able description (:class:`DatasetInfo`).

Images in both splits are float32 tensors ``[3, S, S]`` in ``[0, 1]`` (not normalised: normalisation is
:class:`bvit_edge.data.Normalize`, applied by the trainer after augmentation); labels are Python ints that index
``info.classes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

#: Per-channel statistics of ImageNet-1k (the DeiT / GSB default for photographs and histology).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Per-channel statistics of the CIFAR-100 training set.
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)


@dataclass
class DatasetInfo:
    """Description of a loaded data set; :meth:`to_dict` is what checkpoints and reports record.

    ``mean`` / ``std`` are the per-channel statistics :class:`Normalize` should use; ``skipped_bad`` counts the
    files left out with ``skip_bad=True`` (``skipped_files`` names them); ``default_augment`` names the
    :meth:`AugmentConfig.preset` that suits the data (``"light"`` for digits, ``"deit"`` otherwise).
    ``interpolation`` and ``crop_pct`` record the resizing used, so an evaluation can repeat it.
    """

    name: str
    root: str | None
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_train: int
    num_val: int
    per_class: int | None = None
    skipped_bad: int = 0
    skipped_files: list[str] = field(default_factory=list)
    default_augment: str = "deit"
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["mean"] = [float(v) for v in self.mean]
        d["std"] = [float(v) for v in self.std]
        d["classes"] = [str(c) for c in self.classes]
        return d


@dataclass
class DataSplits:
    """The result of :func:`bvit_edge.data.load_dataset`: ``train`` and ``val`` data sets plus ``info``."""

    train: Dataset
    val: Dataset
    info: DatasetInfo
