"""bvit-edge: binarized Vision Transformers from few images to a measured binary on an edge CPU.

The library mirrors the CLI: ``train``, ``evaluate``, ``create_model``, ``list_models``; the data, export,
runtime and targets sub-packages hold the rest. Heavy modules are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "evaluate", "list_models", "train"]


def __getattr__(name: str) -> Any:
    try:
        return _lazy(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("bvit_edge."):  # the board-side runtime has no training stack
            from bvit_edge.errors import MissingDependencyError

            raise MissingDependencyError(
                f"bvit_edge.{name} is part of the full toolkit; this installation is the "
                "board-side runtime (bvit-edge-runtime). Install bvit-edge for it."
            ) from None
        raise


def _lazy(name: str) -> Any:
    if name == "train":
        from bvit_edge.training import train

        return train
    if name == "evaluate":
        from bvit_edge.evaluation import evaluate

        return evaluate
    if name in ("create_model", "list_models"):
        from bvit_edge import models

        return getattr(models, name)
    raise AttributeError(f"module 'bvit_edge' has no attribute {name!r}")
