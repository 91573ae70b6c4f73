"""Learning-rate schedule, computed per optimizer step (so resuming mid-run gives the same values).

lr(t) for step t with S steps per epoch, W = warmup_epochs*S, C = epochs*S:
  t < W:        lr * (t + 1) / W                             (linear warm-up)
  W <= t < C:   min_lr + (lr - min_lr) * (1 + cos(pi * (t - W) / (C - W))) / 2
  t >= C:       min_lr                                       (cooldown)
"""

from __future__ import annotations

import math


def lr_at(step: int, steps_per_epoch: int, lr: float, min_lr: float, epochs: int, warmup_epochs: int = 0) -> float:
    warm = warmup_epochs * steps_per_epoch
    total = max(epochs * steps_per_epoch, 1)
    if step < warm:
        return lr * (step + 1) / warm
    if step >= total:
        return min_lr
    span = max(total - warm, 1)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / span))
