"""Checkpoints: a folder per checkpoint, written atomically as a whole.

Layout of a checkpoint folder (``RUN/last`` and ``RUN/best``)::

    model.safetensors     the model's state_dict (weights and buffers); the JSON config is also stored in
                          its metadata under "bvit_edge.config", so the file alone is self-describing
    config.json           schema_version, model name + kwargs, method, data set, classes, image size,
                          normalisation, metrics, the resolved training config, epoch/step, versions
    trainer_state.pt      (``last`` only) optimizer state, step, epoch, RNG states: what --resume needs

The folder is built under a temporary name and renamed into place (bvit_edge.atomic.atomic_dir), so a kill
at any moment leaves either the previous checkpoint or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bvit_edge.atomic import atomic_dir
from bvit_edge.errors import CheckpointError

SCHEMA_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "trainer_state.pt"


def versions() -> dict[str, str]:
    """Versions of the tools that produced an artifact."""
    import bvit_edge

    out = {"bvit_edge": bvit_edge.__version__, "torch": torch.__version__, "python": platform.python_version()}
    return out


def save_checkpoint(
    folder: str | os.PathLike[str],
    model: torch.nn.Module,
    config: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s state_dict, ``config`` (+ schema/versions) and optionally the trainer state."""
    folder = Path(folder)
    cfg = {"schema_version": SCHEMA_VERSION, "versions": versions(), **config}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"bvit_edge.config": json.dumps(cfg)})
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE)
    return folder


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Accept a checkpoint folder, a run folder (-> its ``best``, else ``last``) or a .safetensors file."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        return p.parent
    if (p / WEIGHTS).is_file():
        return p
    for sub in ("best", "last"):
        if (p / sub / WEIGHTS).is_file():
            return p / sub
    # A kill between the two renames of atomic_dir leaves ".last.old-PID": recover it.
    if p.is_dir():
        for old in sorted(p.glob(".last.old-*")):
            if (old / WEIGHTS).is_file():
                target = p / "last"
                if not target.exists():
                    shutil.move(str(old), str(target))
                    return target
    raise CheckpointError(
        f"No checkpoint at {p}: expected a folder with {WEIGHTS} (e.g. RUN/best or RUN/last) or a run folder "
        "containing best/ or last/. Train one with `bvit-edge train` or check the path."
    )


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON config of a checkpoint (from config.json, falling back to the safetensors metadata)."""
    folder = resolve_checkpoint(path)
    cfg_path = folder / CONFIG
    try:
        if cfg_path.is_file():
            return json.loads(cfg_path.read_text())
        from safetensors import safe_open

        with safe_open(str(folder / WEIGHTS), framework="pt") as fh:
            meta = fh.metadata() or {}
        return json.loads(meta["bvit_edge.config"])
    except (json.JSONDecodeError, KeyError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"Checkpoint config in {folder} is unreadable ({exc}); retrain or restore it.") from exc


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    folder = resolve_checkpoint(path)
    try:
        return load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / WEIGHTS} is corrupt or truncated ({exc}); use another checkpoint.") from exc


def load_model(path: str | os.PathLike[str], strict: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights. Returns (model in eval mode, config)."""
    from bvit_edge.models import create_model

    cfg = read_config(path)
    model = create_model(cfg["model"], **cfg.get("model_kwargs", {}))
    state = load_weights(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"Checkpoint {path} does not match model {cfg['model']}: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}."
        )
    model.eval()
    return model, cfg


def load_trainer_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    folder = resolve_checkpoint(path)
    f = folder / STATE
    if not f.is_file():
        raise CheckpointError(f"{folder} has no {STATE}: only a `last` checkpoint can be resumed.")
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"{f} is corrupt ({exc}); delete it to start over.") from exc
