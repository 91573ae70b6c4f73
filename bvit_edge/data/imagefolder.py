"""ImageFolder layout (also registered as ``flowers102``, the layout the GSB code reads).

``root/train/<class>/<image>`` and ``root/val/<class>/<image>``; the classes are the sorted names of the
train sub-folders, label = index in that list. A val class folder that train lacks is an error; an empty class
folder is an error. Files whose names do not end in an image extension (and hidden files) are ignored.
"""

from __future__ import annotations

from pathlib import Path

from bvit_edge.data.files import build_file_splits
from bvit_edge.data.images import IMG_EXTENSIONS, is_image_file
from bvit_edge.data.info import DataSplits
from bvit_edge.data.registry import LoadRequest, register_dataset, require_root
from bvit_edge.errors import DataError

LAYOUT = "train/<class>/*.jpg and val/<class>/*.jpg (ImageFolder layout)"


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _scan(split_dir: Path, class_index: dict[str, int]) -> list[tuple[Path, int]]:
    samples: list[tuple[Path, int]] = []
    for d in _class_dirs(split_dir):
        if d.name not in class_index:
            raise DataError(
                f"Class folder {d} has no counterpart in {split_dir.parent / 'train'}: every val class must also be a "
                "train class. Add the train folder or remove this one."
            )
        files = sorted(p for p in d.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise DataError(
                f"Class folder {d} holds no image files (looked for {', '.join(IMG_EXTENSIONS)}). Add images or "
                "remove the folder."
            )
        samples += [(p, class_index[d.name]) for p in files]
    return samples


@register_dataset("imagefolder", "flowers102")
def load_imagefolder(req: LoadRequest) -> DataSplits:
    root = require_root(req, LAYOUT)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(
                f"Data root {root} has no {split}/ folder. The {req.name} layout is {LAYOUT}; see docs/data.md."
            )
    classes = [d.name for d in _class_dirs(root / "train")]
    if not classes:
        raise DataError(f"{root / 'train'} holds no class folders. The {req.name} layout is {LAYOUT}.")
    index = {c: i for i, c in enumerate(classes)}
    train = _scan(root / "train", index)
    val = _scan(root / "val", index)
    return build_file_splits(req, root, classes, train, val, str(root / "train"), str(root / "val"))
