"""Data set names -> loaders, and :func:`load_dataset`, the one entry point the trainer and CLI call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bvit_edge.data.info import DataSplits
from bvit_edge.data.preprocess import check_crop_pct, check_interpolation
from bvit_edge.data.selection import check_seed
from bvit_edge.errors import DataError, UsageError


@dataclass(frozen=True)
class LoadRequest:
    """The arguments of :func:`load_dataset`, validated, handed to a loader."""

    name: str
    root: Path | None
    image_size: int
    per_class: int | None
    seed: int
    skip_bad: bool
    crop_pct: float | None
    interpolation: str | None


Loader = Callable[[LoadRequest], DataSplits]
_LOADERS: dict[str, Loader] = {}


def register_dataset(*names: str) -> Callable[[Loader], Loader]:
    """Decorator: register a loader under one or more data set names."""

    def deco(fn: Loader) -> Loader:
        for n in names:
            _LOADERS[n] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    """The known data set names, sorted."""
    _ensure_loaders()
    return sorted(_LOADERS)


def _ensure_loaders() -> None:
    # Importing the loader modules registers them.
    from bvit_edge.data import chaoyang, cifar, digits, imagefolder  # noqa: F401


def load_dataset(
    name: str = "digits",
    root: str | Path | None = None,
    image_size: int = 32,
    per_class: int | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> DataSplits:
    """Load data set ``name`` from ``root`` (digits needs none) as train / val splits of ``[3, S, S]`` images.

    ``per_class`` keeps that many training images per class (chosen by ``seed``; val is never reduced).
    ``crop_pct`` / ``interpolation`` override the eval centre-crop fraction and the resampling filter (defaults
    depend on the data set). Bad input is a :class:`DataError`; ``skip_bad`` leaves bad image files out instead
    and counts them in ``info.skipped_bad``.
    """
    _ensure_loaders()
    if not name:
        raise DataError(f"No data set name given. Known data sets: {', '.join(list_datasets())}.")
    key = str(name).lower()
    if key not in _LOADERS:
        raise DataError(f"Unknown data set {name!r}. Known data sets: {', '.join(list_datasets())}.")
    if int(image_size) != image_size or int(image_size) < 1:
        raise UsageError(f"image_size must be a positive integer, got {image_size!r}.")
    if per_class is not None and (int(per_class) != per_class or int(per_class) < 1):
        raise UsageError(f"per_class must be a positive integer or None, got {per_class!r}.")
    req = LoadRequest(
        name=key,
        # absolute (not resolved): info.root stays usable when a later evaluation runs from another folder
        root=Path(root).expanduser().absolute() if root not in (None, "") else None,
        image_size=int(image_size),
        per_class=None if per_class is None else int(per_class),
        seed=check_seed(seed),
        skip_bad=bool(skip_bad),
        crop_pct=None if crop_pct is None else check_crop_pct(crop_pct),
        interpolation=None if interpolation is None else check_interpolation(interpolation),
    )
    return _LOADERS[key](req)


def require_root(req: LoadRequest, layout_hint: str) -> Path:
    """The request's root folder, or a DataError saying it is missing and what it should hold."""
    if req.root is None:
        raise DataError(
            f"Data set {req.name!r} needs a root folder (--data-root) holding {layout_hint}. See docs/data.md."
        )
    if not req.root.is_dir():
        raise DataError(
            f"Data root {req.root} for data set {req.name!r} does not exist or is not a folder. It should hold "
            f"{layout_hint}. See docs/data.md."
        )
    return req.root
