"""The training loop behind ``bvit-edge train`` and ``bvit_edge.train(...)``.

Deterministic: given the seed, the data order of epoch e is a permutation drawn from a generator seeded
with (seed, e), augmentation draws from torch's global RNG (seeded once, saved in checkpoints), so a run
that is killed and resumed takes exactly the same steps as one that is not. Checkpoints go to
``OUT/last`` (every epoch end, optionally every N steps, and on SIGINT/SIGTERM) and ``OUT/best`` (best val
top-1), each written atomically. Per-epoch metrics are appended to ``OUT/log.jsonl``.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from bvit_edge.atomic import sweep_stale
from bvit_edge.errors import CheckpointError, ConfigError
from bvit_edge.training.checkpoint import (
    load_model,
    load_trainer_state,
    load_weights,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
)
from bvit_edge.training.config import TrainConfig, load_toml, resolve_config
from bvit_edge.training.distributed import World, all_reduce_mean, barrier, init_world, shard_indices, shutdown
from bvit_edge.training.methods import get_method
from bvit_edge.training.run_folder import prepare_run_folder
from bvit_edge.training.schedule import lr_at
from bvit_edge.training.trainer_state import restore_trainer_state


@dataclass
class TrainResult:
    out: str
    best_top1: float | None  # None: no evaluation ran (e.g. stopped before the first epoch ended)
    last_top1: float | None
    epochs_done: int
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    world_size: int = 1
    base_lr: float = 0.0
    ranks_in_sync: bool | None = None  # distributed runs: every rank ended with identical weights
    interrupted_by: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run (after saving last/)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _StopRequested(Exception):
    pass


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's rule: no weight decay on biases, norms, tokens, position embeddings, scalars (ndim <= 1)."""
    skip = {"cls_token", "dist_token", "pos_embed"}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.split(".")[-1] in skip or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load_teacher(path: str | None, num_classes: int, image_size: int, needed: bool) -> nn.Module | None:
    if path is None:
        if needed:
            raise ConfigError(
                "This method distils from a full-precision teacher: pass --teacher RUN_DIR (train one first with "
                "`bvit-edge train --method fp`)."
            )
        return None
    teacher, tcfg = load_model(path)
    if tcfg.get("num_classes", len(tcfg.get("classes", []))) != num_classes:
        raise ConfigError(
            f"The teacher {path} predicts {tcfg.get('num_classes')} classes but the data set has {num_classes}; "
            "train a teacher on the same data set."
        )
    if int(tcfg.get("image_size", image_size)) != image_size:
        raise ConfigError(
            f"The teacher {path} takes {tcfg['image_size']}x{tcfg['image_size']} images but this run uses "
            f"{image_size}x{image_size}; use a teacher of the same input size (or --image-size)."
        )
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def train(
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a model as ``bvit-edge train`` does. Keyword arguments are TrainConfig fields.

    ``out`` is a run folder (bvit_edge.training.run_folder): new or empty, ``resume`` to continue the run in
    it, ``overwrite`` to replace it; anything else is refused."""
    explicit: dict[str, Any] = {}
    if isinstance(config, TrainConfig):
        cfg = config
    else:
        explicit = {
            **(load_toml(config_file) if config_file else {}),
            **(config or {}),
            **{k: v for k, v in overrides.items() if v is not None},
        }
        cfg = resolve_config({**(config or {}), **overrides}, config_file)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    world = init_world(device)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not world.is_main:
        log = lambda msg: None  # noqa: E731
    try:
        run_folder = prepare_run_folder(
            cfg.out, resume, overwrite, cfg.to_dict(), explicit, inputs=(cfg.init, cfg.teacher, cfg.data_root)
        )
        if cfg.method == "gsb" and cfg.stage == "all":
            return _train_gsb_two_stages(cfg, device, world, resume, progress, log, run_folder.claim)
        if cfg.method == "gsb" and cfg.stage == "2" and not cfg.init and not resume:
            raise ConfigError(
                "A GSB stage-2 run starts from a stage-1 checkpoint: pass --init RUN/stage1 (a `--stage 1` run's "
                "folder), or use --stage all to run both stages."
            )
        return _train(cfg, device, world, resume, progress, log, run_folder.claim)
    finally:
        shutdown(world)


def _train_gsb_two_stages(
    cfg: TrainConfig,
    device: torch.device,
    world: World,
    resume: bool,
    progress: bool | None,
    log: Callable[[str], None],
    claim: Callable[[], None] | None = None,
) -> TrainResult:
    """GSB's recipe: stage 1 (binary MLP weights) to OUT/stage1, then stage 2 (full GSB) to OUT/stage2,
    initialised from stage 1's best checkpoint. ``method_options.stage1_epochs`` sets stage 1's length."""
    import dataclasses

    out = Path(cfg.out)
    s1_epochs = int(cfg.method_options.get("stage1_epochs", cfg.epochs))
    s1 = dataclasses.replace(cfg, stage="1", out=str(out / "stage1"), epochs=s1_epochs)
    s2 = dataclasses.replace(cfg, stage="2", out=str(out / "stage2"), init=str(out / "stage1" / "best"))
    s2_started = (out / "stage2" / "last").is_dir()
    r1 = None
    if not (resume and s2_started):
        s1_resume = resume and (out / "stage1" / "last").is_dir()
        r1 = _train(s1, device, world, s1_resume, progress, log, claim)
        if r1.stopped_early:
            return r1
    r2 = _train(s2, device, world, resume and s2_started, progress, log, claim)
    if r1 is not None:
        r2.history = [{**h, "stage": 1} for h in r1.history] + [{**h, "stage": 2} for h in r2.history]
    return r2


def _train(
    cfg: TrainConfig,
    device: torch.device,
    world: World,
    resume: bool,
    progress: bool | None,
    log: Callable[[str], None],
    claim: Callable[[], None] | None = None,
) -> TrainResult:
    """One training run into ``cfg.out``; ``claim`` (bvit_edge.training.run_folder) is called just before the
    first write."""
    from bvit_edge.data import AugmentConfig, Normalize, build_train_augment, load_dataset
    from bvit_edge.evaluation import evaluate_model
    from bvit_edge.models import model_default_cfg

    out = Path(cfg.out)
    state: dict[str, Any] | None = None
    if resume:
        try:
            last = resolve_checkpoint(out / "last")
        except CheckpointError as exc:
            raise CheckpointError(
                f"--resume: nothing to resume in {out} (no last/ checkpoint). Start without --resume."
            ) from exc
        state = load_trainer_state(last)
        saved = TrainConfig.from_dict(read_config(last).get("train_config"), f"the train_config of {last}")
        # The run continues with the config it started with; only the stopping point may change.
        saved.max_steps = cfg.max_steps
        saved.threads = cfg.threads
        cfg = saved
        log(f"resuming {out} from epoch {state['epoch']} step {state['step']}")
    method = get_method(cfg.method)  # of the run's own config when resuming
    mcfg = model_default_cfg(cfg.model)
    image_size = int(cfg.image_size or mcfg["input_size"][-1])

    _seed_all(cfg.seed)
    splits = load_dataset(
        cfg.data,
        root=cfg.data_root,
        image_size=image_size,
        per_class=cfg.per_class,
        seed=cfg.seed,
        skip_bad=cfg.skip_bad,
    )
    info = splits.info
    if info.skipped_bad:
        log(f"skipped {info.skipped_bad} bad file(s) (--skip-bad)")
    num_classes = len(info.classes)
    teacher = _load_teacher(cfg.teacher, num_classes, image_size, method.needs_teacher)
    if teacher is not None:
        teacher.to(device)

    model = method.build(cfg, num_classes, image_size, teacher).to(device)
    if cfg.init and state is None:
        _init_from(model, cfg.init, log)
    aug_name = cfg.augment or info.default_augment
    augment = build_train_augment(AugmentConfig.preset(aug_name), image_size).to(device)
    normalize = Normalize(info.mean, info.std).to(device)

    steps_per_epoch = max(1, math.ceil(len(splits.train) / (cfg.batch_size * world.size)))
    total_steps = cfg.total_epochs * steps_per_epoch
    base_lr = cfg.effective_lr(world.size)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=base_lr)
    else:
        opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=base_lr, momentum=0.9)

    step, start_epoch, skip_batches = 0, 0, 0
    best_top1, history = -1.0, []
    if state is not None:
        try:
            model.load_state_dict(load_weights(out / "last"))
        except RuntimeError as exc:  # weights of another shape than the run's own model
            raise CheckpointError(
                f"{out / 'last'}: the weights do not fit the model the run was started with "
                f"({str(exc).strip().splitlines()[-1].strip()[:200]})."
            ) from None
        restore_trainer_state(state, opt, out / "last")
        step, start_epoch, skip_batches = int(state["step"]), int(state["epoch"]), int(state.get("batch_in_epoch", 0))
        best_top1, history = float(state.get("best_top1", -1.0)), list(state.get("history", []))

    train_model: nn.Module = model
    if world.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    use_amp = bool(cfg.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp else nullcontext

    run_meta = {
        "model": cfg.model,
        "model_kwargs": getattr(model, "model_kwargs", {}),
        "method": cfg.method,
        "num_classes": num_classes,
        "classes": list(info.classes),
        "image_size": image_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "data": info.to_dict(),
        "train_config": cfg.to_dict(),
    }

    def trainer_state(epoch: int, batch_in_epoch: int) -> dict[str, Any]:
        return {
            "optimizer": opt.state_dict(),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "best_top1": best_top1,
            "history": history,
            "rng_torch": torch.get_rng_state(),
            "rng_numpy": np.random.get_state(),
            "rng_python": random.getstate(),
        }

    def save_last(epoch: int, batch_in_epoch: int, metrics: dict[str, Any]) -> None:
        if world.is_main:
            save_checkpoint(
                out / "last",
                model,
                {**run_meta, "epoch": epoch, "step": step, "metrics": metrics},
                trainer_state(epoch, batch_in_epoch),
            )

    stop: dict[str, Any] = {"flag": False, "signal": None}

    def _on_signal(signum: int, frame: Any) -> None:
        stop["flag"] = True
        stop["signal"] = signal.Signals(signum).name

    old_handlers = {}
    if world.size == 1:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, _on_signal)
            except ValueError:  # not the main thread
                pass

    show = progress if progress is not None else sys.stderr.isatty()
    t0 = time.time()
    last_top1 = next((h["val_top1"] for h in reversed(history) if "val_top1" in h), None)
    stopped = False
    if world.is_main:
        if claim is not None:
            claim()  # create or replace the run folder now that everything it needs has loaded
        out.mkdir(parents=True, exist_ok=True)
        for name in ("last", "best"):  # what a killed earlier run left half-written (bvit_edge.atomic)
            sweep_stale(out / name)
    log(
        f"training {cfg.model} ({cfg.method}) on {info.name}: {len(splits.train)} train / {len(splits.val)} val images, "
        f"{num_classes} classes, {image_size}px, {cfg.total_epochs} epochs x {steps_per_epoch} steps, lr {base_lr:.3g}, "
        f"world {world.size}"
    )
    bar = _Bar(show and world.is_main, total_steps, step)
    try:
        for epoch in range(start_epoch, cfg.total_epochs):
            train_model.train()
            g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            perm = shard_indices(torch.randperm(len(splits.train), generator=g), world)
            batches = [perm[i : i + cfg.batch_size] for i in range(0, perm.numel(), cfg.batch_size)]
            loss_sum, seen, correct = 0.0, 0, 0
            loader = DataLoader(
                splits.train,
                batch_sampler=[b.tolist() for b in batches[skip_batches:]],
                num_workers=cfg.workers,
                generator=torch.Generator().manual_seed(cfg.seed),
            )  # private: keeps the global RNG untouched
            for bi, (images, labels) in enumerate(loader, start=skip_batches):
                images, labels = images.to(device), torch.as_tensor(labels, device=device)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, steps_per_epoch, base_lr, cfg.min_lr, cfg.epochs, cfg.warmup_epochs)
                with torch.no_grad():
                    x = normalize(augment(images))
                with autocast():
                    loss, logits = method.loss(train_model, x, labels, teacher, cfg)
                if not torch.isfinite(loss):
                    raise ConfigError(f"The loss became {loss.item()} at step {step}: lower the learning rate (--lr).")
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                step += 1
                loss_sum += float(loss.detach()) * labels.numel()
                seen += labels.numel()
                correct += int((logits.argmax(1) == labels).sum())
                bar.advance(f"epoch {epoch + 1}/{cfg.total_epochs} loss {loss_sum / seen:.3f}")
                if cfg.save_every_steps and step % cfg.save_every_steps == 0 and bi + 1 < len(batches):
                    save_last(epoch, bi + 1, {})
                if stop["flag"] or (cfg.max_steps is not None and step >= cfg.max_steps):
                    save_last(epoch, bi + 1, {})
                    raise _StopRequested
            skip_batches = 0
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": all_reduce_mean(loss_sum / max(seen, 1), world),
                "train_top1": all_reduce_mean(correct / max(seen, 1), world),
                "lr": opt.param_groups[0]["lr"],
                "seconds": round(time.time() - t0, 2),
            }
            is_eval_epoch = (epoch + 1) % max(cfg.eval_every, 1) == 0 or epoch + 1 == cfg.total_epochs
            if is_eval_epoch and world.is_main:
                res = evaluate_model(model, splits.val, info.mean, info.std, list(info.classes), device=device)
                record.update(val_top1=res.top1, val_top5=res.top5, val_loss=res.loss)
                last_top1 = res.top1
            history.append(record)
            if world.is_main:
                metrics = {k: v for k, v in record.items() if k.startswith("val_") or k.startswith("train_")}
                if "val_top1" in record and record["val_top1"] > best_top1:
                    best_top1 = record["val_top1"]
                    save_checkpoint(
                        out / "best",
                        model,
                        {
                            **run_meta,
                            "epoch": epoch + 1,
                            "step": step,
                            "metrics": {**metrics, "per_class": res.per_class},
                        },
                    )
                save_last(epoch + 1, 0, metrics)
                with (out / "log.jsonl").open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                msg = f"epoch {epoch + 1}/{cfg.total_epochs} step {step} loss {record['train_loss']:.4f}"
                if "val_top1" in record:
                    msg += f" val top-1 {record['val_top1'] * 100:.2f}% (best {best_top1 * 100:.2f}%)"
                bar.log(msg) if bar.active else log(msg)
            barrier(world)
    except _StopRequested:
        stopped = True
        log(f"stopped at step {step}; `--resume` continues from {out / 'last'}")
    finally:
        bar.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    return TrainResult(
        out=str(out),
        best_top1=best_top1 if best_top1 >= 0 else None,
        last_top1=last_top1,
        epochs_done=len(history),
        steps=step,
        seconds=round(time.time() - t0, 2),
        history=history,
        stopped_early=stopped,
        world_size=world.size,
        base_lr=base_lr,
        ranks_in_sync=_ranks_in_sync(model, world),
        interrupted_by=stop["signal"] if stopped else None,
    )


def _ranks_in_sync(model: nn.Module, world: World) -> bool | None:
    """Distributed runs: whether every rank holds bit-identical parameters (max over ranks of the
    absolute difference to rank 0's parameters is 0)."""
    if not world.distributed:
        return None
    import torch.distributed as dist

    flat = torch.cat([p.detach().float().reshape(-1).cpu() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = torch.tensor([float((flat - ref).abs().max())])
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return bool(diff.item() == 0.0)


def _init_from(model: nn.Module, path: str, log: Callable[[str], None]) -> None:
    """Non-strict initialisation from another checkpoint (e.g. GSB stage 2 from stage 1)."""
    loader = getattr(model, "load_from_checkpoint_state", None)
    state = load_weights(path)
    if loader is not None:
        log(f"initialised from {path}: {loader(state)}")
        return
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    log(f"initialised {len(usable)}/{len(own)} tensors from {path}")


class _Bar:
    """A rich progress bar on a terminal; nothing otherwise (epoch lines are logged instead)."""

    def __init__(self, active: bool, total: int, done: int) -> None:
        self.active = active
        self._p = None
        if active:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._p.start()
            self._task = self._p.add_task("training", total=total, completed=done)

    def advance(self, desc: str) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1, description=desc)

    def log(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.log(msg)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
