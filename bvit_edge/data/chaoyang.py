"""Chaoyang colorectal histopathology: ``root/train.json`` and ``root/test.json`` (val = test).

Each JSON file is a list of ``{"name": "<path relative to root>", "label": <int 0..3>}``; the classes are
``normal, serrated, adenocarcinoma, adenoma`` in label order. Images are read lazily from ``root/<name>``;
a name that is absolute or contains ``..`` is refused (nothing outside the data root is read).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from bvit_edge.data.files import build_file_splits
from bvit_edge.data.info import DataSplits
from bvit_edge.data.registry import LoadRequest, register_dataset, require_root
from bvit_edge.errors import DataError

CLASSES = ["normal", "serrated", "adenocarcinoma", "adenoma"]
LAYOUT = 'train.json and test.json (lists of {"name": ..., "label": ...}) plus the images they name'


def _read_list(root: Path, json_name: str) -> list[tuple[Path, int]]:
    path = root / json_name
    if not path.is_file():
        raise DataError(f"Chaoyang root {root} has no {json_name}. The layout is {LAYOUT}; see docs/data.md.")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}). Restore the file from the Chaoyang release.") from exc
    if not isinstance(entries, list):
        raise DataError(f'{path} must hold a JSON list of {{"name", "label"}} entries, found {type(entries).__name__}.')
    samples: list[tuple[Path, int]] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or "label" not in e:
            raise DataError(f'{path}, entry {i}: expected {{"name": <str>, "label": <int>}}, found {e!r}.')
        label = e["label"]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(CLASSES):
            raise DataError(
                f"{path}, entry {i} ({e['name']!r}): label {label!r} is outside the class list 0..{len(CLASSES) - 1} "
                f"({', '.join(CLASSES)}). Fix the entry."
            )
        name = e["name"]
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if not name.strip() or PurePosixPath(name).is_absolute() or ".." in parts or "\0" in name:
            raise DataError(
                f"{path}, entry {i}: name {name!r} must be a path inside the data root ({root}), relative and "
                "without '..': bvit-edge reads no file outside --data-root. Fix the entry."
            )
        samples.append((root / name, label))
    if not samples:
        raise DataError(f"{path} lists no images. Restore the file from the Chaoyang release.")
    return samples


@register_dataset("chaoyang")
def load_chaoyang(req: LoadRequest) -> DataSplits:
    root = require_root(req, LAYOUT)
    train = _read_list(root, "train.json")
    val = _read_list(root, "test.json")
    return build_file_splits(req, root, list(CLASSES), train, val, str(root / "train.json"), str(root / "test.json"))
