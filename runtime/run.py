"""``bvit-edge run``: classify image files (or folders of them) or a data set's val split with a compiled
artifact (TVM runtime, locally or on a board over RPC) or an exported .onnx (onnxruntime). Returns top-k per
image and, on a data set, top-1 / top-5 accuracy. Images are read and preprocessed exactly as on the board
(bvit_edge.runtime.image_input); artifacts are verified at load (bvit_edge.runtime.artifact).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.contract import read_data_metadata
from bvit_edge.errors import UsageError
from bvit_edge.metrics import accuracy
from bvit_edge.runtime.rpc_address import parse_address


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _onnx_meta(path: Path) -> dict[str, Any]:
    """The data description an export recorded (bvit_edge.contract.read_data_metadata)."""
    from bvit_edge.runtime.ort import load_model

    return read_data_metadata({p.key: p.value for p in load_model(path).metadata_props})


def val_images(name: str, root: str | None, image_size: int, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` (all when None) images of data set ``name``'s val split, [N, 3, S, S] float32 in
    [0, 1] before normalisation, and their labels."""
    import torch

    from bvit_edge.data import load_dataset

    val: Any = load_dataset(name, root=root, image_size=image_size).val
    n = len(val) if limit is None else min(limit, len(val))
    xs = torch.stack([val[i][0] for i in range(n)]).numpy()
    ys = np.array([int(val[i][1]) for i in range(n)])
    return xs.astype(np.float32), ys


def predict(
    model: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]] | None = None,
    data: str | None = None,
    data_root: str | None = None,
    limit: int | None = None,
    top_k: int = 3,
    rpc: str | None = None,
    threads: int | None = None,
    session: Any = None,
    return_logits: bool = False,
) -> dict[str, Any]:
    """Top-k classes (softmax probabilities) of each input, plus accuracy when ``data`` is given.

    ``rpc`` ("HOST:PORT") or an already open ``session`` (e.g. from a tracker) runs an artifact on a board.
    ``return_logits`` adds the raw logits (a numpy array) under "logits"."""
    from bvit_edge.runtime.image_input import expand_inputs, load_image

    if limit is not None and int(limit) < 1:
        raise UsageError(f"--limit {limit}: give the number of images to run (>= 1), or leave it out for all.")
    if int(top_k) < 1:
        raise UsageError(f"--top-k {top_k}: give at least 1.")
    path = Path(model)
    is_onnx = path.suffix == ".onnx"
    if not path.exists():
        raise UsageError(f"{path} does not exist: give an artifact folder (bvit-edge compile) or an .onnx file.")
    if is_onnx:
        meta = _onnx_meta(path)
        size = meta.get("image_size")
        classes = meta.get("classes")
        mean, std = meta.get("mean"), meta.get("std")
    else:
        from bvit_edge.runtime.artifact import read_manifest

        manifest = read_manifest(path)
        size = manifest["input"]["shape"][-1]
        classes = manifest.get("classes")
        norm = manifest.get("normalization") or {}
        mean, std = norm.get("mean"), norm.get("std")
    if size is None:
        raise UsageError(f"{path} does not record its input size; export it with `bvit-edge export`.")
    labels = None
    if images:
        files = expand_inputs(images)  # folders -> their images; a missing path or an empty folder: DataError
        x = np.stack([load_image(p, int(size)) for p in files])
        names = [str(p) for p in files]
    else:
        x, labels = val_images(str(data), data_root, int(size), limit)
        names = [f"{data}/val/{i}" for i in range(len(labels))]

    if is_onnx:
        from bvit_edge.runtime.ort import ort_session, run_session

        if mean is not None and std is not None:
            c = (1, -1, 1, 1)
            x = (x - np.asarray(mean, np.float32).reshape(c)) / np.asarray(std, np.float32).reshape(c)
        logits = run_session(ort_session(path, threads=threads), x.astype(np.float32), batch_size=64)[0]
    else:
        from bvit_edge.runtime.artifact import run_artifact

        if rpc and session is None:
            from bvit_edge.targets.rpc import connect

            host, port = parse_address(rpc, "--rpc")
            session = connect(host, port)
        logits = run_artifact(path, x, session=session, threads=threads)
    probs = _softmax(np.asarray(logits, dtype=np.float64))
    k = min(top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1)[:, :k]
    cls = classes or [str(i) for i in range(probs.shape[1])]
    preds = [{"input": n, "top": [(cls[j], float(probs[i, j])) for j in order[i]]} for i, n in enumerate(names)]
    out: dict[str, Any] = {"model": str(path), "num_images": len(names), "predictions": preds}
    if labels is not None:
        out["accuracy"] = accuracy(probs, labels)
    if return_logits:
        out["logits"] = np.asarray(logits)
    return out
