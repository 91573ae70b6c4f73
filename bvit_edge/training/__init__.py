"""Training: config + recipes, the loop, checkpoints, methods' losses, distributed glue."""

from bvit_edge.training.config import RECIPES, TrainConfig, resolve_config
from bvit_edge.training.trainer import TrainResult, train

__all__ = ["RECIPES", "TrainConfig", "TrainResult", "resolve_config", "train"]
