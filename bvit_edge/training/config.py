"""Training configuration: one dataclass, recipes as named defaults, overrides from CLI and TOML.

Resolution order (later wins): the recipe preset (``gsb`` = the GSB paper's recipe; ``digits`` = the
calibrated recipe for the built-in digits default) -> a TOML file (``--config``) -> explicit arguments.
The resolved config is saved inside every checkpoint.

Learning rate: ``lr`` if given, else ``lr_base * batch_size * world_size / 512`` (the GSB / DeiT rule).
Schedule: cosine from lr to ``min_lr`` over ``epochs`` epochs (per step, after ``warmup_epochs`` of linear
warm-up), then ``cooldown_epochs`` at ``min_lr``; total epochs = epochs + cooldown_epochs.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bvit_edge.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI (a dependency with a python_version marker)
    import tomli as tomllib

METHODS = ("fp", "gsb", "bit", "binaryvit", "acdbit")

RECIPES: dict[str, dict[str, Any]] = {
    # GSB paper / official code (docs/methods.md, "GSB"): AdamW, lr = 1e-3 * batch * world / 512, wd 0.05,
    # cosine to 1e-6, no warm-up, cooldown 10, batch 64, AMP, RandAugment + colour jitter + random erase.
    "gsb": dict(
        optimizer="adamw", lr_base=1e-3, weight_decay=0.05, min_lr=1e-6, warmup_epochs=0,
        cooldown_epochs=10, batch_size=64, amp=True, augment="deit", epochs=300, label_smoothing=0.0,
        drop_path=0.1,
    ),
    # Calibrated on these machines for the digits default (docs/methods.md, "Training recipes"): AdamW 1e-3
    # at batch 64, cosine, small shifts; the demo geometry trains to >95% in minutes on 2 cores.
    "digits": dict(
        optimizer="adamw", lr=1e-3, weight_decay=0.05, min_lr=1e-6, warmup_epochs=0, cooldown_epochs=0,
        batch_size=64, amp=False, augment="light", epochs=60, label_smoothing=0.0, drop_path=0.0,
    ),
}


@dataclass
class TrainConfig:
    """Everything a training run depends on. JSON-able via :meth:`to_dict`."""

    method: str = "fp"
    model: str | None = None  # default: the method's demo model on digits, its DeiT-S variant elsewhere
    data: str = "digits"
    data_root: str | None = None
    per_class: int | None = None
    skip_bad: bool = False
    image_size: int | None = None  # default: the model's input size
    recipe: str | None = None  # default: "digits" for the digits data set, else "gsb"
    epochs: int = 60
    batch_size: int = 64
    lr: float | None = None
    lr_base: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: int = 0
    cooldown_epochs: int = 0
    optimizer: str = "adamw"
    label_smoothing: float = 0.0
    drop_path: float = 0.0
    amp: bool = False
    augment: str | None = None  # "deit" | "light" | "none"; default from the recipe / data set
    seed: int = 0
    workers: int = 0
    out: str = "runs/run"
    teacher: str | None = None  # checkpoint of the full-precision teacher (distillation methods)
    stage: str = "all"  # gsb: "1" | "2" | "all"
    init: str | None = None  # checkpoint to initialise from (e.g. stage 1 for stage 2)
    eval_every: int = 1
    save_every_steps: int = 0  # 0: checkpoint at every epoch end only
    max_steps: int | None = None  # stop after this many optimizer steps (tests, smoke runs)
    threads: int | None = None
    device: str = "auto"
    method_options: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"Unknown training option(s) {', '.join(unknown)}. Known options: {', '.join(sorted(known))}."
            )
        return cls(**d)

    def effective_lr(self, world_size: int = 1) -> float:
        """``lr`` if set, else ``lr_base * batch_size * world_size / 512``."""
        if self.lr is not None:
            return float(self.lr)
        return float(self.lr_base) * self.batch_size * world_size / 512.0

    @property
    def total_epochs(self) -> int:
        return int(self.epochs) + int(self.cooldown_epochs)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file (keys are TrainConfig fields; a [method_options] table is allowed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist. Pass an existing TOML file to --config.")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}.") from exc
    # Accept an optional [train] table.
    if "train" in data and isinstance(data["train"], dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    return data


def resolve_config(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None) -> TrainConfig:
    """Recipe defaults, then the TOML file, then ``overrides`` (None values are ignored)."""
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_file = load_toml(config_file) if config_file else {}
    merged_user = {**from_file, **explicit}
    if "method_options" in from_file and "method_options" in explicit:  # a flag adds to the file's table
        merged_user["method_options"] = {**from_file["method_options"], **explicit["method_options"]}
    method = merged_user.get("method", "fp")
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}. Choose one of: {', '.join(METHODS)}.")
    data = merged_user.get("data", "digits")
    recipe = merged_user.get("recipe") or ("digits" if data == "digits" else "gsb")
    if recipe not in RECIPES:
        raise ConfigError(f"Unknown recipe {recipe!r}. Choose one of: {', '.join(RECIPES)}.")
    base = dict(RECIPES[recipe])
    base["recipe"] = recipe
    if "lr" in merged_user or "lr_base" in merged_user:
        base.pop("lr", None)
    cfg_dict = {**base, **merged_user}
    if not cfg_dict.get("model"):
        cfg_dict["model"] = default_model(method, data)
    cfg = TrainConfig.from_dict(cfg_dict)
    _check(cfg)
    return cfg


_PREFIX = {"fp": "deit", "gsb": "gsb", "bit": "bit", "binaryvit": "binaryvit", "acdbit": "acdbit"}


def default_model(method: str, data: str) -> str:
    """The model a method trains when --model is not given: the demo geometry on digits, DeiT-S elsewhere."""
    prefix = _PREFIX[method]
    if data == "digits":
        return f"{prefix}_demo_patch4_32"
    return f"{prefix}_deit_small_patch16_224" if method != "fp" else "deit_small_patch16_224"


def _check(cfg: TrainConfig) -> None:
    bits = cfg.method_options.get("act_bits")
    if bits is not None:
        if cfg.method != "bit":
            raise ConfigError(f"act_bits applies to --method bit (its W1A2 distillation step), not {cfg.method!r}.")
        if bits not in (1, 2):
            raise ConfigError(f"act_bits must be 1 (the W1A1 student) or 2 (the W1A2 step), got {bits!r}.")
    if cfg.epochs < 0 or cfg.batch_size < 1:
        raise ConfigError(f"epochs must be >= 0 and batch_size >= 1 (got {cfg.epochs}, {cfg.batch_size}).")
    if cfg.per_class is not None and cfg.per_class < 1:
        raise ConfigError(f"--per-class must be a positive number of images (got {cfg.per_class}).")
    if cfg.stage not in ("1", "2", "all"):
        raise ConfigError(f"--stage must be 1, 2 or all (got {cfg.stage!r}).")
    if cfg.optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"Unknown optimizer {cfg.optimizer!r}: use adamw or sgd.")
