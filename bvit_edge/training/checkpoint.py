"""Checkpoints: a folder per checkpoint, written atomically as a whole.

Layout of a checkpoint folder (``RUN/last`` and ``RUN/best``)::

    model.safetensors     the model's state_dict (weights and buffers); the JSON config is also stored in
                          its metadata under "bvit_edge.config", so the file alone is self-describing
    config.json           schema_version, model name + kwargs, method, data set, classes, image size,
                          normalisation, metrics, the resolved training config, epoch/step, versions
    trainer_state.safetensors  (``last`` only) optimizer state, step, epoch, RNG states: what --resume needs,
                          stored without pickle (bvit_edge.training.trainer_state)

The folder is built under a temporary name and renamed into place (bvit_edge.atomic.atomic_dir), so a kill
at any moment leaves either the previous checkpoint or the new one, never a half-written one.

Nothing here unpickles: weights are safetensors, configs JSON, the trainer state safetensors + JSON. A
``trainer_state.pt`` of an older bvit-edge (a pickle) is read only if ``torch.load(weights_only=True)``
accepts it, which refuses anything but tensors and plain containers; otherwise resuming it is refused.
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
from bvit_edge.training.trainer_state import check_trainer_state, load_trainer_state_file, save_trainer_state

SCHEMA_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "trainer_state.safetensors"
LEGACY_STATE = "trainer_state.pt"  # older bvit-edge: a pickle, never unpickled beyond weights_only=True


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
    written_by: str | None = None,
) -> Path:
    """Write ``model``'s state_dict, ``config`` (+ schema/versions) and optionally the trainer state.

    ``written_by``: mark the folder as a command's output (bvit_edge.output_folder), for checkpoints that
    are a command's ``--out`` (``convert``); check that folder first with output_folder.check_output_folder."""
    folder = Path(folder)
    cfg = {"schema_version": SCHEMA_VERSION, "versions": versions(), **config}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"bvit_edge.config": json.dumps(cfg)})
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        if trainer_state is not None:
            save_trainer_state(tmp / STATE, trainer_state)
        if written_by is not None:
            from bvit_edge.output_folder import write_marker

            write_marker(tmp, written_by)
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
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else _metadata_config(folder)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"Checkpoint config in {folder} is unreadable ({exc}); retrain or restore it.") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str):
        raise CheckpointError(
            f"Checkpoint config in {folder} does not name its model (a JSON object with a "
            '"model" string is expected); retrain or restore it.'
        )
    bad = [f"{key} ({what})" for key, (check, what) in _CONFIG_FIELDS.items() if key in cfg and not check(cfg[key])]
    if bad:
        raise CheckpointError(
            f"Checkpoint config {cfg_path if cfg_path.is_file() else folder / WEIGHTS} has fields of "
            f"the wrong kind: {', '.join(bad)}; retrain or restore it."
        )
    return cfg


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


#: fields of a checkpoint config that later steps read, and what each must be
_CONFIG_FIELDS: dict[str, tuple[Any, str]] = {
    "model_kwargs": (lambda v: isinstance(v, dict), "a table"),
    "method": (lambda v: isinstance(v, str), "a method name"),
    "image_size": (_positive_int, "a positive integer"),
    "num_classes": (_positive_int, "a positive integer"),
    "classes": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) for c in v), "a list of names"),
    "mean": (_numbers, "a list of numbers"),
    "std": (lambda v: _numbers(v) and all(x > 0 for x in v), "a list of positive numbers"),
    "train_config": (lambda v: isinstance(v, dict), "a table"),
    "data": (lambda v: isinstance(v, dict), "a table"),
}


def _metadata_config(folder: Path) -> Any:
    """The config copy that save_checkpoint puts in the safetensors metadata."""
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS), framework="pt") as fh:
        meta = fh.metadata() or {}
    return json.loads(meta["bvit_edge.config"])


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    folder = resolve_checkpoint(path)
    try:
        return load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / WEIGHTS} is corrupt or truncated ({exc}); use another checkpoint.") from exc


def load_model(path: str | os.PathLike[str], strict: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights. Returns (model in eval mode, config).

    CheckpointError when the weights do not fit the model the config names (e.g. a config.json edited or
    copied from another checkpoint), naming both."""
    from bvit_edge.errors import ConfigError
    from bvit_edge.models import create_model

    cfg = read_config(path)
    folder = resolve_checkpoint(path)
    try:
        model = create_model(cfg["model"], **cfg.get("model_kwargs", {}))
    except ConfigError as exc:
        raise CheckpointError(f"Checkpoint {folder} names a model bvit-edge cannot build: {exc}") from None
    state = load_weights(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches are errors even when strict=False
        first = (str(exc).strip().splitlines() or [""])[-1].strip()[:300]
        raise CheckpointError(
            f"The weights in {folder / WEIGHTS} do not fit model {cfg['model']!r}, the model its {CONFIG} names "
            f"({first}){_saved_as(folder, cfg)}. Restore the checkpoint's own {CONFIG}."
        ) from None
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"Checkpoint {path} does not match model {cfg['model']}: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}{_saved_as(folder, cfg)}."
        )
    _check_fits(model, cfg, folder)
    model.eval()
    return model, cfg


def _check_fits(model: torch.nn.Module, cfg: dict[str, Any], folder: Path) -> None:
    """CheckpointError when the config's image size or classes disagree with the model it builds (a config
    edited by hand or copied from another checkpoint); later steps would fail or mislabel without it."""
    mcfg = getattr(model, "default_cfg", None) or {}
    size = (mcfg.get("input_size") or (None,))[-1]
    classes = mcfg.get("num_classes")
    problems = []
    if size is not None and "image_size" in cfg and cfg["image_size"] != size:
        problems.append(f"image_size {cfg['image_size']} but the model takes {size}x{size} images")
    if classes is not None and "num_classes" in cfg and cfg["num_classes"] != classes:
        problems.append(f"num_classes {cfg['num_classes']} but the model has {classes} outputs")
    if classes is not None and "classes" in cfg and len(cfg["classes"]) != classes:
        problems.append(f"{len(cfg['classes'])} class names but the model has {classes} outputs")
    if problems:
        raise CheckpointError(
            f"The config of {folder} does not fit its model {cfg['model']!r}: {'; '.join(problems)}. "
            f"Restore the checkpoint's own {CONFIG}."
        )


def _saved_as(folder: Path, cfg: dict[str, Any]) -> str:
    """ ", saved as model X" when the weights file's own copy of the config names another model."""
    try:
        saved = _metadata_config(folder).get("model")
    except Exception:  # noqa: BLE001 - no usable metadata: nothing to add
        return ""
    return f"; the weights were saved for model {saved!r}" if isinstance(saved, str) and saved != cfg["model"] else ""


def load_trainer_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The trainer state of a ``last`` checkpoint (see bvit_edge.training.trainer_state); no pickle is run."""
    folder = resolve_checkpoint(path)
    f = folder / STATE
    if f.is_file():
        return load_trainer_state_file(f)
    legacy = folder / LEGACY_STATE
    if legacy.is_file():
        return _load_legacy_state(legacy)
    raise CheckpointError(f"{folder} has no {STATE}: only a `last` checkpoint can be resumed.")


def _load_legacy_state(f: Path) -> dict[str, Any]:
    """An older bvit-edge's trainer_state.pt, only through torch's weights-only loader (tensors and plain
    containers; it refuses to build any other object, so no code in the file can run)."""
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler raises several types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{f} was written by an older bvit-edge as a Python pickle that holds more than tensors ({reason}). "
            "Loading it could run code stored in the file, so it is refused. Continue from its weights with "
            f"`--init {f.parent}` in a new run (a fresh optimizer and schedule), or start the run again with "
            "--overwrite."
        ) from None
    check_trainer_state(state, f)
    return state
