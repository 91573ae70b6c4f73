"""Evaluation: top-1 / top-5 / per-class accuracy of a model or checkpoint on a data split.

``evaluate("runs/teacher")`` reloads the checkpoint, its data set (the one it was trained on unless another
is given) and the normalisation it recorded; eval-mode logits are the mean of both heads for distilled models.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    num_images: int
    per_class: dict[str, float] = field(default_factory=dict)
    data: str = ""
    split: str = "val"
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):
        return (out[0] + out[1]) / 2
    return out


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: Dataset,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    classes: list[str],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Any = None,
) -> EvalResult:
    """Accuracy of ``model`` (put in eval mode) on ``dataset`` (images in [0, 1], normalised here)."""
    was_training = model.training
    model.eval()
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    n_cls = len(classes)
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    hits = torch.zeros(n_cls, dtype=torch.long)
    counts = torch.zeros(n_cls, dtype=torch.long)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, generator=torch.Generator())
    for images, labels in loader:
        images = (images.to(device) - m) / s
        labels = labels.to(device)
        logits = _logits(model, images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        ok1 = topk[:, 0] == labels
        correct1 += int(ok1.sum())
        correct5 += int((topk == labels[:, None]).any(dim=1).sum())
        total += labels.numel()
        counts += torch.bincount(labels.cpu(), minlength=n_cls)
        hits += torch.bincount(labels[ok1].cpu(), minlength=n_cls)
        if progress is not None:
            progress(labels.numel())
    model.train(was_training)
    per_class = {c: (float(hits[i]) / float(counts[i]) if counts[i] else float("nan")) for i, c in enumerate(classes)}
    return EvalResult(
        top1=correct1 / max(total, 1),
        top5=correct5 / max(total, 1),
        loss=loss_sum / max(total, 1),
        num_images=total,
        per_class=per_class,
    )


def evaluate(
    checkpoint: str | os.PathLike[str],
    data: str | None = None,
    data_root: str | None = None,
    split: str = "val",
    batch_size: int = 256,
    threads: int | None = None,
) -> EvalResult:
    """Evaluate a checkpoint (folder, run folder or .safetensors) on ``split`` of its data set."""
    from bvit_edge.data import load_dataset
    from bvit_edge.errors import UsageError
    from bvit_edge.training.checkpoint import load_model

    if threads:
        torch.set_num_threads(threads)
    model, cfg = load_model(checkpoint)
    dcfg = cfg.get("data", {})
    name = data or dcfg.get("name", "digits")
    root = data_root if data_root is not None else (dcfg.get("root") if name == dcfg.get("name") else None)
    splits = load_dataset(name, root=root, image_size=cfg["image_size"])
    if split not in ("val", "train"):
        raise UsageError(f"Unknown split {split!r}: use val or train.")
    classes = list(cfg.get("classes") or splits.info.classes)
    if len(classes) != len(splits.info.classes):
        raise UsageError(
            f"The checkpoint has {len(classes)} classes but data set {name!r} has {len(splits.info.classes)}; "
            "evaluate on the data set the model was trained for."
        )
    ds = splits.val if split == "val" else splits.train
    res = evaluate_model(model, ds, tuple(cfg["mean"]), tuple(cfg["std"]), classes, batch_size=batch_size)
    res.data, res.split, res.model = name, split, cfg["model"]
    return res
