"""The trainer state ``--resume`` needs (optimizer, step, epoch, RNG states, history), stored without pickle.

One safetensors file: every tensor and numpy array of the state is a tensor of the file, everything else
(numbers, strings, lists, tuples, dicts with int keys) a JSON document in the file's metadata under
``bvit_edge.trainer_state`` whose leaves point at those tensors. Reading it runs no code from the file:
safetensors parses a header and copies bytes, the JSON is data. Types come back exactly (a tuple stays a
tuple, an int dict key stays an int, a float is written with ``repr``, which round-trips every float64),
so a resumed run continues bit for bit.

JSON forms (a ``$`` key marks a non-JSON value)::

    {"$tensor": "t0"}                                  a torch tensor, stored as tensor t0
    {"$ndarray": "t1", "dtype": "<u4", "shape": [624]} a numpy array, its bytes stored as uint8 tensor t1
    {"$tuple": [...]}                                  a tuple
    {"$dict": [[key, value], ...]}                     a dict whose keys are not all plain strings
    {"$float": "nan" | "inf" | "-inf"}                 a non-finite float
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bvit_edge.errors import CheckpointError

FORMAT = "bvit-edge-trainer-state/1"
META_KEY = "bvit_edge.trainer_state"
#: keys every trainer state holds, and the Python types they must have after decoding
REQUIRED: dict[str, tuple[type, ...]] = {
    "optimizer": (dict,),
    "step": (int,),
    "epoch": (int,),
    "batch_in_epoch": (int,),
    "best_top1": (float, int),
    "history": (list,),
    "rng_torch": (torch.Tensor,),
    "rng_numpy": (tuple, dict),
    "rng_python": (tuple,),
}


# ----------------------------------------------------------------------------------------------------- encode
def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"$tensor": name}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("a numpy array of Python objects cannot be stored in a trainer state")
        name = f"t{len(tensors)}"
        arr = np.ascontiguousarray(obj)
        tensors[name] = torch.from_numpy(arr.view(np.uint8).reshape(-1).copy())
        return {"$ndarray": name, "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"$dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a trainer state")


def save_trainer_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` (a .safetensors file; write it inside an atomic folder or via a temp file)."""
    tensors: dict[str, torch.Tensor] = {}
    doc = _encode(state, tensors)
    meta = {"format": FORMAT, META_KEY: json.dumps(doc, allow_nan=False)}
    save_file(tensors, str(path), metadata=meta)
    return Path(path)


# ----------------------------------------------------------------------------------------------------- decode
class _Bad(Exception):
    pass


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        if isinstance(obj, (bool, int, float, str)) or obj is None:
            return obj
        raise _Bad(f"unexpected JSON value {obj!r}")
    if "$tensor" in obj:
        return _tensor(obj["$tensor"], tensors)
    if "$ndarray" in obj:
        raw = _tensor(obj["$ndarray"], tensors)
        try:
            dtype = np.dtype(str(obj["dtype"]))
            if dtype.hasobject:
                raise _Bad("a numpy array of Python objects")
            return raw.numpy().view(dtype).reshape([int(d) for d in obj["shape"]]).copy()
        except (TypeError, ValueError, KeyError) as exc:
            raise _Bad(f"a numpy array that does not fit its dtype/shape ({exc})") from None
    if "$tuple" in obj:
        return tuple(_decode(_list(obj["$tuple"]), tensors))
    if "$dict" in obj:
        pairs = _list(obj["$dict"])
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise _Bad("a $dict entry that is not a [key, value] pair")
        out = {}
        for k, v in pairs:
            key = _decode(k, tensors)
            if not isinstance(key, (int, str)):
                raise _Bad(f"a dict key {key!r}")
            out[key] = _decode(v, tensors)
        return out
    if "$float" in obj:
        text = obj["$float"]
        if text not in ("nan", "inf", "-inf"):
            raise _Bad(f"a non-finite float {text!r}")
        return float(text)
    if any(k.startswith("$") for k in obj):
        raise _Bad(f"an unknown form {sorted(obj)}")
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(f"{value!r} where a list was expected")
    return value


def _tensor(name: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    if not isinstance(name, str) or name not in tensors:
        raise _Bad(f"a reference to a missing tensor {name!r}")
    return tensors[name]


def load_trainer_state_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a trainer state written by :func:`save_trainer_state`; CheckpointError for anything else."""
    path = Path(path)
    fix = "The file is damaged: resume from an intact copy, or start the run again with --overwrite."
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in list(fh.keys())}  # a safe_open handle is not iterable
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable trainer state ({exc}). {fix}") from None
    if meta.get("format") != FORMAT or META_KEY not in meta:
        raise CheckpointError(
            f"{path} is not a bvit-edge trainer state (format {meta.get('format')!r}, expected {FORMAT!r}). {fix}"
        )
    try:
        state = _decode(json.loads(meta[META_KEY]), tensors)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its state document is not valid JSON ({exc}). {fix}") from None
    except _Bad as exc:
        raise CheckpointError(f"{path}: its state document holds {exc}. {fix}") from None
    check_trainer_state(state, path)
    return state


def check_trainer_state(state: Any, where: str | os.PathLike[str]) -> None:
    """CheckpointError unless ``state`` has every key :data:`REQUIRED` names, with the right types."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{where}: the trainer state is a {type(state).__name__}, not a table; start the run "
            "again with --overwrite."
        )
    problems = []
    for key, types in REQUIRED.items():
        if key not in state:
            problems.append(f"{key} is missing")
        elif not isinstance(state[key], types) or (isinstance(state[key], bool) and bool not in types):
            problems.append(f"{key} is a {type(state[key]).__name__}")
    if not problems and (state["step"] < 0 or state["epoch"] < 0 or state["batch_in_epoch"] < 0):
        problems.append("step, epoch or batch_in_epoch is negative")
    if problems:
        raise CheckpointError(
            f"{where}: the trainer state is incomplete ({'; '.join(problems)}); resume from an "
            "intact copy, or start the run again with --overwrite."
        )


def restore_trainer_state(
    state: dict[str, Any], optimizer: torch.optim.Optimizer, where: str | os.PathLike[str]
) -> None:
    """Load the optimizer state and the torch / numpy / Python RNG states; CheckpointError when they do not
    fit (another model, another optimizer, a damaged RNG state)."""
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise CheckpointError(
            f"{where}: the optimizer state does not fit this model and optimizer ({exc}). The run "
            "was started with other options; resume it with the same ones, or start again "
            "with --overwrite."
        ) from None
    try:
        torch.set_rng_state(state["rng_torch"])
        np.random.set_state(state["rng_numpy"])
        random.setstate(state["rng_python"])
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError, OverflowError) as exc:
        raise CheckpointError(
            f"{where}: the saved random-number-generator states are damaged ({exc}); resume "
            "from an intact copy, or start the run again with --overwrite."
        ) from None
