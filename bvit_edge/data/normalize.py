"""Per-channel normalisation as a module: ``y[c] = (x[c] - mean[c]) / std[c]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bvit_edge.errors import UsageError


class Normalize(nn.Module):
    """``y = (x - mean) / std`` per channel, for ``[C, H, W]`` images or ``[B, C, H, W]`` batches.

    Backward (it is affine): ``dL/dx = dL/dy / std``. The statistics are non-persistent buffers: they move with
    ``.to(device)`` but are not part of a model's ``state_dict`` (checkpoints record them as metadata).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor([float(v) for v in mean], dtype=torch.float32)
        std_t = torch.as_tensor([float(v) for v in std], dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise UsageError(
                f"Normalize needs one mean and one std per channel of equal length; got mean {list(mean)} and "
                f"std {list(std)}. Pass e.g. the data set's info.mean and info.std."
            )
        if not bool(torch.all(std_t > 0)):
            raise UsageError(f"Normalize: every std must be > 0, got {list(std)}. Use the data set's info.std.")
        self.register_buffer("mean", mean_t.view(-1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (3, 4) or x.shape[-3] != self.mean.shape[0]:
            raise UsageError(
                f"Normalize expects [C, H, W] or [B, C, H, W] with C = {self.mean.shape[0]}, "
                f"got shape {tuple(x.shape)}."
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
