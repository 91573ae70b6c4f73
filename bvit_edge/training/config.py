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
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable
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
        optimizer="adamw",
        lr_base=1e-3,
        weight_decay=0.05,
        min_lr=1e-6,
        warmup_epochs=0,
        cooldown_epochs=10,
        batch_size=64,
        amp=True,
        augment="deit",
        epochs=300,
        label_smoothing=0.0,
        drop_path=0.1,
    ),
    # Calibrated on these machines for the digits default (docs/methods.md, "Training recipes"): AdamW 1e-3
    # at batch 64, cosine, small shifts; the demo geometry trains to >95% in minutes on 2 cores.
    "digits": dict(
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        min_lr=1e-6,
        warmup_epochs=0,
        cooldown_epochs=0,
        batch_size=64,
        amp=False,
        augment="light",
        epochs=60,
        label_smoothing=0.0,
        drop_path=0.0,
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
    def from_dict(cls, d: dict[str, Any], source: str = "the training config") -> TrainConfig:
        """A config from a dict of options; ConfigError naming ``source`` for unknown keys and wrong types."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source} must be a table of training options, not a {type(d).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"Unknown training option(s) {', '.join(unknown)} in {source}. "
                f"Known options: {', '.join(sorted(known))}."
            )
        return cls(**check_options(d, lambda key: f"in {source}"))

    def effective_lr(self, world_size: int = 1) -> float:
        """``lr`` if set, else ``lr_base * batch_size * world_size / 512``."""
        if self.lr is not None:
            return float(self.lr)
        return float(self.lr_base) * self.batch_size * world_size / 512.0

    @property
    def total_epochs(self) -> int:
        return int(self.epochs) + int(self.cooldown_epochs)


# ----------------------------------------------------------------------------------------------------------
# validation: types come from TrainConfig's annotations; limits, choices and method options are tables, so a
# new option is one line (its dataclass field) plus, if it has a range, one line in LIMITS.
# ----------------------------------------------------------------------------------------------------------


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _at_least_one(v: float) -> bool:
    return v >= 1


def _fraction(v: float) -> bool:
    return 0 <= v < 1


#: option -> (test, what it must be): applied after the type check
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (_at_least_one, "at least 1"),
    "batch_size": (_at_least_one, "at least 1"),
    "per_class": (_at_least_one, "a positive number of images"),
    "image_size": (_at_least_one, "a positive number of pixels"),
    "lr": (_positive, "positive"),
    "lr_base": (_positive, "positive"),
    "min_lr": (_non_negative, ">= 0"),
    "weight_decay": (_non_negative, ">= 0"),
    "warmup_epochs": (_non_negative, ">= 0"),
    "cooldown_epochs": (_non_negative, ">= 0"),
    "label_smoothing": (_fraction, "in [0, 1)"),
    "drop_path": (_fraction, "in [0, 1)"),
    "seed": (_non_negative, ">= 0"),
    "workers": (_non_negative, ">= 0"),
    "eval_every": (_at_least_one, "at least 1"),
    "save_every_steps": (_non_negative, ">= 0 (0: only at epoch ends)"),
    "max_steps": (_at_least_one, "at least 1"),
    "threads": (_at_least_one, "at least 1"),
    "device": (lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v) is not None, "auto, cpu, cuda, cuda:N or mps"),
}

#: option -> the values it may take
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "recipe": tuple(RECIPES),
    "optimizer": ("adamw", "sgd"),
    "augment": ("deit", "light", "none"),
    "stage": ("1", "2", "all"),
}

#: method -> its [method_options]: name -> (type, test, what it must be)
METHOD_OPTIONS: dict[str, dict[str, tuple[type, Callable[[Any], bool], str]]] = {
    "fp": {},
    "gsb": {
        "stage1_epochs": (int, _at_least_one, "an integer >= 1 (stage 1's epochs with --stage all)"),
        "corrected_grads": (bool, lambda v: True, "true or false (false: the ablation without GSB's gradients)"),
    },
    "bit": {
        "act_bits": (int, lambda v: v in (1, 2), "1 (the W1A1 student) or 2 (the W1A2 step)"),
        "w_logit": (float, _non_negative, "a weight >= 0"),
        "w_hidden": (float, _non_negative, "a weight >= 0"),
        "w_attn": (float, _non_negative, "a weight >= 0"),
    },
    "binaryvit": {
        "model_flags": (dict, lambda v: all(isinstance(k, str) for k in v), "a table of model arguments"),
    },
    "acdbit": {
        "w_qk": (float, _non_negative, "a weight >= 0"),
        "w_ce": (float, _non_negative, "a weight >= 0"),
    },
}


def _field_types() -> dict[str, tuple[tuple[type, ...], bool]]:
    """option -> (accepted Python types, None allowed), from TrainConfig's annotations."""
    out = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        args = typing.get_args(hint) if union else (hint,)
        optional = type(None) in args
        base = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
        out[name] = (base, optional)
    return out


def _type_name(types_: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}
    return " or ".join(names.get(t, t.__name__) for t in types_)


def _fits(value: Any, want: type) -> bool:
    if want is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # a TOML true is not an integer or a number
        return False
    if want is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, want)


_KINDS = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list", dict: "a table"}


def _show(value: Any) -> str:
    """A value as the user wrote it (TOML / JSON spelling: true, "three", 1.5)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _check_value(key: str, value: Any, want: tuple[type, ...], where: str) -> Any:
    if not any(_fits(value, t) for t in want):
        got = _KINDS.get(type(value), f"a {type(value).__name__}")
        raise ConfigError(f"{key} must be {_type_name(want)}, got {_show(value)} ({got}) {where}.")
    return float(value) if float in want and int not in want else value


def check_options(values: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """``values`` with types checked (ints given for numbers become floats), limits and choices enforced;
    ConfigError naming the option, what it must be, the value and ``where(option)`` it came from."""
    spec = _field_types()
    out = dict(values)
    for key, value in values.items():
        if key not in spec:
            continue  # unknown keys are reported by TrainConfig.from_dict, with the list of known ones
        want, optional = spec[key]
        if value is None:
            if not optional:
                raise ConfigError(f"{key} needs a value ({_type_name(want)}), got none {where(key)}.")
            continue
        value = out[key] = _check_value(key, value, want, where(key))
        if key in CHOICES and value not in CHOICES[key]:
            choices = ", ".join(map(_show, CHOICES[key]))
            raise ConfigError(f"{key} must be one of {choices}, got {_show(value)} {where(key)}.")
        if key in LIMITS and not LIMITS[key][0](value):
            raise ConfigError(f"{key} must be {LIMITS[key][1]}, got {_show(value)} {where(key)}.")
    return out


def check_method_options(method: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """The [method_options] of ``method``: unknown keys refused (naming the known ones), types and limits checked."""
    table = METHOD_OPTIONS.get(method, {})
    unknown = sorted(set(options) - set(table))
    for key in unknown:
        owners = [m for m, opts in METHOD_OPTIONS.items() if key in opts]
        if owners:
            raise ConfigError(f"{key} applies to --method {' or '.join(owners)}, not {method!r} ({where}).")
    if unknown:
        known = ", ".join(sorted(table)) or "none"
        raise ConfigError(
            f"Unknown method option(s) {', '.join(unknown)} for --method {method} {where}. Its options: {known}."
        )
    out = dict(options)
    for key, value in options.items():
        want, test, what = table[key]
        value = out[key] = _check_value(f"method_options.{key}", value, (want,), where)
        if not test(value):
            raise ConfigError(f"method_options.{key} must be {what}, got {_show(value)} {where}.")
    return out


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


def _flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def resolve_config(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None) -> TrainConfig:
    """Recipe defaults, then the TOML file, then ``overrides`` (None values are ignored). Every value is
    checked (type, range, choices; method options against the method's table): ConfigError names the
    option and where it came from (the file, or the command-line flag)."""
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_file = load_toml(config_file) if config_file else {}
    from_file = check_options(from_file, lambda key: f"in config file {config_file}")
    explicit = check_options(explicit, lambda key: f"(from {_flag(key)})")
    for name, src in (("config file", from_file), ("arguments", explicit)):
        if "method_options" in src and not isinstance(src["method_options"], dict):
            raise ConfigError(f"method_options must be a table in the {name}.")
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
    source = f"config file {config_file}" if config_file else "the arguments"
    where = f"in {source}"
    if "method_options" in from_file:
        check_method_options(method, from_file["method_options"], f"in config file {config_file}")
    if "method_options" in explicit:
        check_method_options(method, explicit["method_options"], "in the arguments")
    cfg_dict["method_options"] = check_method_options(method, dict(cfg_dict.get("method_options") or {}), where)
    cfg = TrainConfig.from_dict(cfg_dict, source)
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
    """Checks across options (each option alone is checked by check_options / check_method_options)."""
    if cfg.method_options.get("act_bits") is not None and cfg.method != "bit":
        raise ConfigError(f"act_bits applies to --method bit (its W1A2 distillation step), not {cfg.method!r}.")
