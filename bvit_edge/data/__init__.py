"""Data sets and augmentation: ``load_dataset(name, root, image_size, ...)`` -> :class:`DataSplits`.

Known data sets: ``digits`` (built in, scikit-learn's bundled copy), ``cifar100`` (python pickles),
``imagefolder`` / ``flowers102`` (train/val class folders), ``chaoyang`` (JSON lists). On-disk formats:
docs/data.md. Images come out as float32 ``[3, S, S]`` in ``[0, 1]``; :class:`Normalize` and
:func:`build_train_augment` act on batches afterwards.
"""

from bvit_edge.data.augment import AugmentConfig, TrainAugment, build_train_augment
from bvit_edge.data.info import DatasetInfo, DataSplits
from bvit_edge.data.normalize import Normalize
from bvit_edge.data.registry import list_datasets, load_dataset, register_dataset

__all__ = [
    "AugmentConfig",
    "DataSplits",
    "DatasetInfo",
    "Normalize",
    "TrainAugment",
    "build_train_augment",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
