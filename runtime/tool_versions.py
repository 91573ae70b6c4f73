"""Versions of what produced a record (a bench result, an artifact manifest, a board run), collected one way.

Board side: the standard library and numpy only; a package is imported only when a caller names it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from collections.abc import Iterable

import numpy as np

__all__ = ["bvit_edge_version", "module_versions", "run_versions"]


def bvit_edge_version() -> str:
    """This package's version: its distribution's (the full toolkit's or the board runtime's), else the
    package's ``__version__``, else "unknown"."""
    for dist in ("bvit-edge", "bvit-edge-runtime"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return str(getattr(sys.modules.get("bvit_edge"), "__version__", "unknown"))


def run_versions() -> dict[str, str]:
    """bvit-edge, numpy and Python: what every record names."""
    return {"bvit_edge": bvit_edge_version(), "numpy": np.__version__, "python": platform.python_version()}


def module_versions(names: Iterable[str], missing: str | None = "not installed") -> dict[str, str]:
    """``module.__version__`` of each importable module of ``names`` ("unknown" without one); a module that
    is not installed reads ``missing``, or is left out when ``missing`` is None."""
    out: dict[str, str] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            if missing is not None:
                out[name] = missing
            continue
        out[name] = str(getattr(module, "__version__", "unknown"))
    return out
