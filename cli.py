"""The ``bvit-edge`` command line: thin Typer wrappers over the library (bvit_edge.*).

Human output (tables, progress) goes to stderr, never cut when it is not a terminal (bvit_edge.terminal);
``--json`` prints only the machine result on stdout. Listings (``models``, ``targets list``) print their rows
on stdout: a table on a terminal, tab-separated lines in a pipe. TVM's C++ log lines go to a log file
(bvit_edge.native_log) unless ``bvit-edge --verbose``.
Exit codes: 0 ok, 2 usage / bad input, 3 validation failure, 4 toolchain / RPC error, 5 missing dependency,
130 interrupted. Heavy imports (torch, onnx, tvm) happen inside the commands so ``--help`` is instant.

With ``--json``, stdout carries exactly one JSON object whatever happens: the result, or on an error
``{"error": ..., "exit_code": ..., "hint": ...}``; anything else written to stdout (by a library, or by C++
code such as TVM's) is sent to stderr instead. Non-finite numbers become ``null``.

Output folders (``--out`` of train, export, compile, report, convert, demo; ``bench --report``) follow one
rule (bvit_edge.output_folder): new, empty, or written by the same command before; ``--overwrite``
replaces anything else as a whole; a file there is an error.
"""

from __future__ import annotations

import json
import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from bvit_edge.errors import BvitEdgeError, Interrupted, UsageError

app = typer.Typer(
    name="bvit-edge",
    help="Binarized Vision Transformers: train (GSB, BiT, BinaryViT, ACD-BiT), export to ONNX, compile with TVM "
    "for ARM and x86, and measure against the full-precision teacher.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Method(str, Enum):
    fp = "fp"
    gsb = "gsb"
    bit = "bit"
    binaryvit = "binaryvit"
    acdbit = "acdbit"


class Stage(str, Enum):
    one = "1"
    two = "2"
    all = "all"


def _console():
    from bvit_edge.terminal import console

    return console()


@app.callback()
def _global_options(
    ctx: typer.Context,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show the native libraries' log lines (TVM's C++ "
            "warnings) on stderr; without it they go to a log file "
            "(~/.local/state/bvit-edge/logs). Also BVIT_EDGE_VERBOSE=1.",
        ),
    ] = False,
) -> None:
    """Options for every command (before the command's name: `bvit-edge --verbose compile ...`)."""
    from bvit_edge.native_log import native_stderr_to_log, verbose_from_env

    if ctx.invoked_subcommand is None or verbose or verbose_from_env():
        return
    note = lambda msg: _console().print(f"[dim]{msg}[/]", highlight=False)  # noqa: E731
    ctx.with_resource(native_stderr_to_log(command=ctx.invoked_subcommand, note=note))


#: where --json output goes: the process's real stdout, set aside by main() (everything else that writes to
#: stdout then reaches stderr); None outside main() (tests calling the app in-process): sys.stdout
_JSON_OUT: Any = None


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN / infinity replaced by None (JSON has no such numbers) and tuples as lists."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(obj: Any) -> None:
    out = _JSON_OUT or sys.stdout
    out.write(json.dumps(_json_safe(obj), indent=2, default=str, allow_nan=False) + "\n")
    out.flush()


def _emit(result: Any, as_json: bool, human: Any = None) -> None:
    """Print ``result`` as JSON on stdout (``--json``) or a human rendering on stderr."""
    if hasattr(result, "to_dict"):
        result = result.to_dict()
    if as_json:
        _write_json(result)
    elif human is not None:
        _console().print(human)
    else:
        _console().print_json(json.dumps(_json_safe(result), default=str))


def _positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{option} must be at least 1, got {value}.")


_OVERWRITE_HELP = (
    "Replace --out when it holds anything but this command's earlier output (the whole folder, atomically)."
)
_RPC_TIMEOUT_HELP = (
    "Seconds one RPC call to the board may take before the board counts as stalled (exit 4); "
    "default: the target preset's rpc_timeout_s."
)


# ----------------------------------------------------------------------------------------------- train
@app.command()
def train(
    method: Annotated[Method | None, typer.Option(help="Training method (default: fp).", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Registered model name (see `bvit-edge models`).")] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Data set: digits (built-in, the default), cifar100, imagefolder/flowers102, chaoyang."),
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder of a local data set.")] = None,
    per_class: Annotated[
        int | None, typer.Option(help="Keep N training images per class (limited-sample regime).")
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Leave out corrupt files / bad labels instead of failing (counted).")
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="Epochs (before cooldown).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per process.")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: lr_base * batch * world / 512, or the recipe's).")
    ] = None,
    lr_base: Annotated[float | None, typer.Option(help="Base learning rate per 512 images.")] = None,
    min_lr: Annotated[float | None, typer.Option(help="Final learning rate of the cosine schedule.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    warmup_epochs: Annotated[int | None, typer.Option(help="Linear warm-up epochs.")] = None,
    cooldown_epochs: Annotated[int | None, typer.Option(help="Epochs at min_lr after the cosine.")] = None,
    drop_path: Annotated[float | None, typer.Option(help="Stochastic depth rate.")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing of the CE terms.")] = None,
    augment: Annotated[str | None, typer.Option(help="Augmentation preset: deit | light | none.")] = None,
    amp: Annotated[bool | None, typer.Option(help="Mixed precision where the device supports it.")] = None,
    recipe: Annotated[str | None, typer.Option(help="Defaults preset: gsb (paper) or digits (calibrated).")] = None,
    teacher: Annotated[
        Path | None, typer.Option(help="Full-precision teacher checkpoint (distillation methods).")
    ] = None,
    stage: Annotated[Stage | None, typer.Option(help="GSB stage: 1, 2 or all (default).", show_default=False)] = None,
    act_bits: Annotated[
        int | None,
        typer.Option(
            help=(
                "--method bit: activation bits, 2 for the W1A2 step of BiT's chain FP -> W1A2 -> W1A1 (then train the "
                "W1A1 student with --teacher on that run)."
            )
        ),
    ] = None,
    init: Annotated[Path | None, typer.Option(help="Initialise from this checkpoint (non-strict).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size (default: the model's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (data order, init, augmentation; 0).")] = None,
    out: Annotated[
        Path, typer.Option(help="Run folder: last/, best/, log.jsonl. New or empty, unless --resume or --overwrite.")
    ] = Path("runs/run"),
    config: Annotated[Path | None, typer.Option(help="TOML file of training options (CLI flags win).")] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue the run in --out from its last checkpoint (with the options it was started with)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace --out (a finished or unfinished run, or any other folder) with a new run.")
    ] = False,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    save_every_steps: Annotated[int | None, typer.Option(help="Also checkpoint every N steps inside an epoch.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N epochs.")] = None,
    workers: Annotated[int | None, typer.Option(help="Data loader worker processes.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[str | None, typer.Option(help="auto (default) | cpu | cuda | cuda:N.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Train a teacher (--method fp) or a binary student; checkpoints go to --out/{last,best}.

    Ctrl-C (or SIGTERM) saves --out/last and exits with code 130; `--resume` continues from there."""
    from bvit_edge.training import train as run_train

    overrides: dict[str, Any] = dict(
        method=method.value if method else None,
        model=model,
        data=data,
        data_root=str(data_root) if data_root else None,
        per_class=per_class,
        skip_bad=skip_bad or None,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_base=lr_base,
        min_lr=min_lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        cooldown_epochs=cooldown_epochs,
        drop_path=drop_path,
        label_smoothing=label_smoothing,
        augment=augment,
        amp=amp,
        recipe=recipe,
        teacher=str(teacher) if teacher else None,
        stage=stage.value if stage else None,
        init=str(init) if init else None,
        image_size=image_size,
        seed=seed,
        out=str(out),
        max_steps=max_steps,
        save_every_steps=save_every_steps,
        eval_every=eval_every,
        workers=workers,
        threads=threads,
        device=device,
        method_options={"act_bits": act_bits} if act_bits is not None else None,
    )
    result = run_train(config_file=config, resume=resume, overwrite=overwrite, **overrides)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # torchrun: only rank 0 reports
    if result.interrupted_by:
        raise Interrupted(
            f"Training stopped by {result.interrupted_by} at step {result.steps}; the checkpoint "
            f"{Path(result.out) / 'last'} is saved.",
            hint=f"Continue the run with `bvit-edge train --out {out} --resume`.",
        )
    if as_json:
        _emit(result, True)
    else:
        best = f"{result.best_top1 * 100:.2f}%" if result.best_top1 is not None else "not evaluated yet"
        _console().print(
            f"[bold]done[/]: {result.epochs_done} epochs, {result.steps} steps in {result.seconds:.0f}s; "
            f"best val top-1 {best}  -> {result.out}"
        )


# ------------------------------------------------------------------------------------------------ eval
@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder, run folder (uses best/) or .safetensors.")],
    data: Annotated[str | None, typer.Option(help="Data set (default: the checkpoint's).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder of a local data set.")] = None,
    split: Annotated[str, typer.Option(help="val or train.")] = "val",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Top-1 / top-5 / per-class accuracy of a checkpoint."""
    from rich.table import Table

    from bvit_edge.evaluation import evaluate

    _positive(batch_size, "--batch-size")
    _positive(threads, "--threads")
    res = evaluate(
        checkpoint,
        data=data,
        data_root=str(data_root) if data_root else None,
        split=split,
        batch_size=batch_size,
        threads=threads,
    )
    table = Table(title=f"{res.model} on {res.data} ({res.split}, {res.num_images} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("top-1", f"{res.top1 * 100:.2f}%")
    table.add_row("top-5", f"{res.top5 * 100:.2f}%")
    table.add_row("loss", f"{res.loss:.4f}")
    for c, acc in res.per_class.items():
        table.add_row(f"class {c}", f"{acc * 100:.1f}%")
    _emit(res, as_json, table)


# ---------------------------------------------------------------------------------------------- models
@app.command()
def models(
    pattern: Annotated[str, typer.Argument(help="Shell pattern, e.g. 'gsb_*'.")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print the names as JSON on stdout.")] = False,
) -> None:
    """List the registered models."""
    from bvit_edge.models import list_models

    names = list_models(pattern)
    if as_json:
        _emit(names, True)
    else:
        for n in names:
            typer.echo(n)


# ---------------------------------------------------------------------------------------------- convert
class ConvertFrom(str, Enum):
    gsb_official = "gsb-official"


@app.command()
def convert(
    source: Annotated[
        Path,
        typer.Argument(help="Checkpoint file to convert (e.g. the GSB authors' .pth).", exists=True, dir_okay=False),
    ],
    from_: Annotated[ConvertFrom, typer.Option("--from", help="Format of the source.")] = ConvertFrom.gsb_official,
    out: Annotated[Path, typer.Option(help="bvit-edge checkpoint folder to write.")] = Path("converted"),
    data: Annotated[
        str | None, typer.Option(help="Data set it was trained on (records classes / normalisation).")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder of that data set.")] = None,
    overwrite: Annotated[bool, typer.Option(help=_OVERWRITE_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Convert a checkpoint released by the GSB authors into a bvit-edge checkpoint (every key mapped)."""
    from bvit_edge.models.convert_gsb import convert_to_checkpoint

    kw: dict[str, Any] = {}
    if data:
        from bvit_edge.data import load_dataset

        info = load_dataset(data, root=str(data_root) if data_root else None).info
        kw = dict(classes=list(info.classes), mean=tuple(info.mean), std=tuple(info.std))
    rep = convert_to_checkpoint(source, out, overwrite=overwrite, **kw)
    d = {
        "out": str(out),
        "stage": rep.stage,
        "geometry": rep.geometry,
        "renamed": len(rep.renamed),
        "dropped": rep.dropped,
    }
    _emit(d, as_json, f"converted {source} (GSB stage {rep.stage}, {len(rep.renamed)} keys renamed) -> {out}")


# ---------------------------------------------------------------------------------------------- summary
@app.command()
def summary(
    model: Annotated[str, typer.Argument(help="Registered model name or a checkpoint folder.")],
    stage: Annotated[int | None, typer.Option(help="GSB stage (1 or 2) when MODEL is a gsb_* name.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classes (default: the model's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Per-layer 1/8/32-bit parameters, BOPs and FLOPs, packed bytes and the compression vs the FP teacher."""
    from bvit_edge.models import create_model
    from bvit_edge.summary import summary as model_summary

    if Path(model).exists():
        from bvit_edge.training.checkpoint import load_model

        net, _ = load_model(model)
    else:
        kw: dict[str, Any] = {}
        if stage is not None:
            kw["stage"] = stage
        if num_classes is not None:
            kw["num_classes"] = num_classes
        net = create_model(model, **kw)
    res = model_summary(net)
    _emit(res, as_json, res)


# ----------------------------------------------------------------------------------------------- export
class Ops(str, Enum):
    packed = "packed"
    standard = "standard"
    both = "both"


class AttBias(str, Enum):
    float32 = "float32"
    int16 = "int16"
    float16 = "float16"
    int8 = "int8"
    int4 = "int4"


class FloatParams(str, Enum):
    float32 = "float32"
    float16 = "float16"


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder or run folder (uses best/).")],
    out: Annotated[Path, typer.Option(help="Output folder: student.<ops>.onnx, teacher.onnx, export.json.")] = Path(
        "export"
    ),
    ops: Annotated[
        Ops,
        typer.Option(
            help="packed: bvit_edge binary ops with bit-packed weights; standard: standard ONNX ops only; both."
        ),
    ] = Ops.both,
    teacher: Annotated[
        Path | None, typer.Option(help="Teacher checkpoint (default: the one the student was trained with).")
    ] = None,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the validation.")] = 0.0,
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the validation.")] = 1e-5,
    validate: Annotated[bool, typer.Option(help="Validate against the frozen torch model on the val split.")] = True,
    limit: Annotated[int | None, typer.Option(help="Validate on the first N val images only.")] = None,
    max_outliers: Annotated[
        int, typer.Option(help="Images allowed beyond the tolerance (top-1 must agree on all): threshold ties.")
    ] = 0,
    att_bias: Annotated[
        AttBias | None,
        typer.Option(
            help=(
                "Storage of GSB's attention bias B: float32, int16, float16, int8 or int4 (integer codes with per-row "
                "scales). Default: int16, chosen by measured fidelity."
            )
        ),
    ] = None,
    float_params: Annotated[
        FloatParams | None,
        typer.Option(
            help=(
                "Storage of the other float parameters (position embedding, LayerNorm, biases, shifts): float32 or "
                "float16."
            )
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help=_OVERWRITE_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Export a trained model to ONNX (frozen, bit-packed), validate it and report sizes (exit 3 beyond tolerance)."""
    from bvit_edge.pipeline import export_checkpoint

    _positive(limit, "--limit")
    if max_outliers < 0:
        raise UsageError(f"--max-outliers must be >= 0, got {max_outliers}.")
    flavours = ("packed", "standard") if ops == Ops.both else (ops.value,)
    res = export_checkpoint(
        checkpoint,
        out,
        ops=flavours,
        teacher=teacher,
        validate=validate,
        rtol=rtol,
        atol=atol,
        limit=limit,
        max_outliers=max_outliers,
        att_bias=att_bias.value if att_bias else None,
        float_params=float_params.value if float_params else None,
        overwrite=overwrite,
    )
    if as_json:
        _emit(res, True)
        return
    from rich.table import Table

    table = Table(title=f"export of {checkpoint} -> {out}")
    for col in ("file", "bytes", "1-bit", "8-bit", "32-bit", "vs teacher", "max rel diff", "top-1 agree"):
        table.add_column(col, justify="right")
    for flavour, info in res.student.items():
        size, val = res.size.get(flavour, {}), res.validation.get(flavour, {})
        ratio = size.get("compression_ratio")
        table.add_row(
            Path(info["path"]).name,
            f"{info['bytes']:,}",
            f"{size.get('weights_1bit', 0):,}",
            f"{size.get('weights_8bit', 0):,}",
            f"{size.get('weights_32bit', 0):,}",
            f"{ratio:.1f}x" if ratio else "-",
            f"{val['max_rel_diff']:.2e}" if val else "-",
            f"{val['top1_agreement'] * 100:.2f}%" if val else "-",
        )
    if res.teacher:
        val = res.validation.get("teacher", {})
        table.add_row(
            Path(res.teacher["path"]).name,
            f"{res.teacher['bytes']:,}",
            "",
            "",
            "",
            "1.0x",
            f"{val['max_rel_diff']:.2e}" if val else "-",
            f"{val['top1_agreement'] * 100:.2f}%" if val else "-",
        )
    _console().print(table)
    _storage_table(res.storage)


def _storage_table(storage: dict) -> None:
    """Bytes of each exported file under every storage choice, and each choice's fidelity."""
    from rich.table import Table

    if not storage or not storage.get("bytes"):
        return
    fid = storage.get("fidelity") or {}
    keys = list(next(iter(storage["bytes"].values())).keys())
    table = Table(
        title=f"storage of the float parameters (this export: att_bias={storage['att_bias']}, "
        f"float_params={storage['float_params']})"
    )
    table.add_column("att_bias, float_params")
    for flavour in storage["bytes"]:
        table.add_column(f"{flavour} bytes", justify="right")
    table.add_column("max |d logit| vs float32", justify="right")
    table.add_column("top-1 agree", justify="right")
    for key in keys:
        f = fid.get(key) or {}
        table.add_row(
            key.replace("att_bias=", "").replace("float_params=", ""),
            *(f"{storage['bytes'][fl][key]:,}" for fl in storage["bytes"]),
            f"{f['max_abs_logit_diff']:.3g}" if f else "-",
            f"{f['top1_agreement'] * f['n_images']:.0f}/{f['n_images']}" if f else "-",
        )
    _console().print(table)


@app.command("validate")
def validate_cmd(
    onnx_path: Annotated[Path, typer.Argument(help="An exported .onnx file.")],
    checkpoint: Annotated[Path, typer.Option(help="The checkpoint it was exported from.")],
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 0.0,
    rtol: Annotated[float, typer.Option(help="Relative tolerance.")] = 1e-5,
    limit: Annotated[int | None, typer.Option(help="First N val images only.")] = None,
    max_outliers: Annotated[
        int, typer.Option(help="Images allowed beyond the tolerance (top-1 must agree on all): threshold ties.")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Check an .onnx against its frozen torch model on the val split: names, shapes, values, top-1 (exit 3)."""
    from bvit_edge.export import validate_onnx
    from bvit_edge.export.onnxruntime_session import load_model as load_onnx
    from bvit_edge.pipeline import load_frozen, val_inputs

    _positive(limit, "--limit")
    proto = load_onnx(onnx_path)  # a clear error for a missing, corrupt or truncated file
    model, cfg = load_frozen(checkpoint)
    x, _ = val_inputs(cfg, limit)
    rep = validate_onnx(model, onnx_path, x, rtol=rtol, atol=atol, max_outliers=max_outliers, proto=proto)
    _emit(
        rep,
        as_json,
        f"valid: {rep.num_inputs} images, max abs diff {rep.max_abs_diff:.3e}, max rel diff "
        f"{rep.max_rel_diff:.3e}, top-1 agreement {rep.top1_agreement * 100:.2f}%",
    )


# ---------------------------------------------------------------------------------------------- compile
@app.command("compile")
def compile_cmd(
    onnx_path: Annotated[Path, typer.Argument(help="Exported .onnx (student.packed.onnx, or a teacher's plain ONNX).")],
    target: Annotated[
        str, typer.Option(help="Target preset (bvit-edge targets list), a .toml file, or a raw TVM target JSON dict.")
    ] = "host",
    out: Annotated[Path, typer.Option(help="Artifact folder to write (lib.so, params.npz, manifest.json).")] = Path(
        "artifact"
    ),
    threads: Annotated[int | None, typer.Option(help="Default threads recorded for the artifact.")] = None,
    tune: Annotated[
        int,
        typer.Option(
            help=(
                "Re-tune the binary kernels: measure up to N schedule candidates each (0: apply the shipped tuning "
                "database)."
            )
        ),
    ] = 0,
    tuning_db: Annotated[
        Path | None,
        typer.Option(help="Tuning database JSON to apply (over the shipped one) and, with --tune, to update."),
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option(help="With --tune for a board target: time the candidates on the board's RPC server HOST:PORT."),
    ] = None,
    tracker: Annotated[
        str | None, typer.Option(help="With --tune: get the board from a TVM RPC tracker HOST:PORT (with --key).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Board kind registered with the tracker, e.g. rpi4.")] = None,
    fast_math: Annotated[
        bool,
        typer.Option(
            "--fast-math/--exact-math",
            help=(
                "Vectorized approximations of exp/erf/softmax (TVM fast_exp, fast_erf; the default) or exact libm "
                "calls (scalar: slower end to end; the README gives the figures)."
            ),
        ),
    ] = True,
    params: Annotated[
        str,
        typer.Option(help="Where the weights go: 'file' (params.npz next to lib.so) or 'embedded' (inside lib.so)."),
    ] = "file",
    rpc_timeout: Annotated[float | None, typer.Option(help=_RPC_TIMEOUT_HELP)] = None,
    overwrite: Annotated[bool, typer.Option(help=_OVERWRITE_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")] = False,
) -> None:
    """Lower an exported model through TVM into native code for a target (our popcount kernels inside)."""
    from bvit_edge.runtime.artifact import read_manifest
    from bvit_edge.runtime.compile import compile_model

    _positive(threads, "--threads")

    tgt: Any = target
    if target.lstrip().startswith("{"):
        try:
            tgt = json.loads(target)
        except json.JSONDecodeError as exc:
            raise BvitEdgeError(f"--target looks like JSON but does not parse: {exc}.") from exc
    if (rpc is not None or tracker is not None) and not tune:
        raise BvitEdgeError("--rpc/--tracker are used to time tuning candidates on a board: add --tune N.")
    from bvit_edge.output_folder import check_output_folder

    check_output_folder(out, "compile", overwrite, inputs=(onnx_path, tuning_db))  # at once, not after the work
    session = None
    if rpc is not None or tracker is not None:
        from bvit_edge.targets import load_target
        from bvit_edge.targets.rpc import call_timeout, preset_call_timeout

        with call_timeout(rpc_timeout if rpc_timeout is not None else preset_call_timeout(load_target(tgt))):
            session = _tracker_session(tracker, key)
            if rpc is not None:
                if session is not None:
                    raise BvitEdgeError("Give either --rpc HOST:PORT or --tracker HOST:PORT --key KIND, not both.")
                from bvit_edge.runtime.rpc_address import parse_address
                from bvit_edge.targets.rpc import connect

                host, port = parse_address(rpc, "--rpc")
                session = connect(host, port)
    folder = compile_model(
        onnx_path,
        tgt,
        out,
        threads=threads,
        tune=tune,
        params_storage=params,
        tuning_db=tuning_db,
        session=session,
        fast_math=fast_math,
        overwrite=overwrite,
        log=None if as_json else (lambda m: typer.echo(m, err=True)),
    )
    manifest = read_manifest(folder)
    _emit(manifest, as_json, f"compiled {onnx_path} for {manifest.get('target', {}).get('name', target)} -> {folder}")


# -------------------------------------------------------------------------------------------------- run
@app.command()
def run(
    model: Annotated[Path, typer.Argument(help="A compiled artifact folder (or an .onnx file, run in onnxruntime).")],
    image: Annotated[
        list[Path] | None, typer.Option(help="Image file(s) or folder(s) of images to classify (PNG/JPEG).")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Run on a data set's val split instead (e.g. digits) and report accuracy.")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder of that data set.")] = None,
    limit: Annotated[int | None, typer.Option(help="First N images of the data set only.")] = None,
    top_k: Annotated[int, typer.Option(help="How many classes to show per image.")] = 3,
    rpc: Annotated[str | None, typer.Option(help="Run on a board's RPC server HOST:PORT.")] = None,
    tracker: Annotated[
        str | None, typer.Option(help="Get a board from a TVM RPC tracker HOST:PORT (with --key).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Board kind registered with the tracker, e.g. rpi4.")] = None,
    threads: Annotated[int | None, typer.Option(help="Runtime threads.")] = None,
    rpc_timeout: Annotated[float | None, typer.Option(help=_RPC_TIMEOUT_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Run an artifact on images or a data set and print the top-k classes (and accuracy on a data set)."""
    from bvit_edge.runtime.run import predict

    if not image and not data:
        raise UsageError("Give --image FILE (one or more) or --data NAME to run on.")
    _positive(threads, "--threads")
    with _rpc_call_timeout(rpc_timeout, model if (rpc or tracker) else None):
        res = predict(
            model,
            images=image or None,
            data=data,
            data_root=str(data_root) if data_root else None,
            limit=limit,
            top_k=top_k,
            rpc=rpc,
            threads=threads,
            session=_tracker_session(tracker, key),
        )
    if as_json:
        _emit(res, True)
        return
    for item in res["predictions"][:20]:
        guesses = ", ".join(f"{c} {p * 100:.1f}%" for c, p in item["top"])
        _console().print(f"{item['input']}: {guesses}")
    if len(res["predictions"]) > 20:
        _console().print(f"... {len(res['predictions']) - 20} more")
    if res.get("accuracy"):
        a = res["accuracy"]
        _console().print(f"top-1 {a['top1'] * 100:.2f}%  top-5 {a['top5'] * 100:.2f}% on {res['num_images']} images")


@app.command(
    "device", add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def device(ctx: typer.Context) -> None:
    """Run an artifact on this machine with the board-side runtime: run | bench | check | info (= bvit-edge-device)."""
    from bvit_edge.runtime.device_cli import main as device_main

    device_main(ctx.args)


# ---------------------------------------------------------------------------------------------- targets
targets_app = typer.Typer(help="Board presets (targets/*.toml) and user presets.", no_args_is_help=True)
app.add_typer(targets_app, name="targets")


@targets_app.command("list")
def targets_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False) -> None:
    """The target presets and what this machine can do with each (compiler found, runs natively).

    On a terminal a table; in a pipe one tab-separated line per preset after a header line."""
    from bvit_edge.targets import list_targets, load_target
    from bvit_edge.targets.toolchain import availability

    rows = []
    for name in list_targets():
        spec = load_target(name)
        rows.append(
            {
                **{
                    k: v
                    for k, v in spec.to_dict().items()
                    if k in ("name", "arch", "family", "word_bits", "threads", "cross_compiler")
                },
                **availability(spec),
            }
        )
    if as_json:
        _emit(rows, True)
        return
    from bvit_edge.terminal import print_rows

    print_rows(
        ("name", "arch", "family", "word bits", "threads", "compiler", "runs natively"),
        [
            (
                r["name"],
                r["arch"],
                r["family"],
                r["word_bits"],
                r["threads"],
                (r.get("cross_compiler") or "host") + ("" if r["compiler_found"] else " (missing)"),
                "yes" if r["runs_natively"] else "no",
            )
            for r in rows
        ],
        title="bvit-edge targets",
    )


@targets_app.command("show")
def targets_show(
    name: Annotated[str, typer.Argument(help="Preset name or path to a .toml file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """One target: its TVM target dict, toolchain, word size, threads."""
    from bvit_edge.targets import load_target
    from bvit_edge.targets.toolchain import availability

    spec = load_target(name)
    _emit({**spec.to_dict(), **availability(spec)}, as_json)


# ------------------------------------------------------------------------------------------------ board
board_app = typer.Typer(
    help="The emulated aarch64 board (qemu user mode + TVM RPC on 127.0.0.1).", no_args_is_help=True
)
app.add_typer(board_app, name="board")


@board_app.command("emulate")
def board_emulate(
    arch: Annotated[str, typer.Option(help="Board architecture.")] = "aarch64",
    rebuild: Annotated[bool, typer.Option(help="Rebuild the cached root file system and wheels.")] = False,
    port: Annotated[int, typer.Option(help="RPC port on 127.0.0.1 (the next free one is used if taken).")] = 9090,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder (default ~/.cache/bvit-edge/board).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Build (once) and start the emulated board; prints where its RPC server listens."""
    from bvit_edge.targets import board

    info = board.emulate(arch, cache_dir, rebuild=rebuild, port=port, log=_console().print)
    _emit(info, as_json)


@board_app.command("status")
def board_status(
    arch: Annotated[str, typer.Option(help="Board architecture.")] = "aarch64",
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Whether the emulated board is built and serving."""
    from bvit_edge.targets import board

    _emit(board.status(arch, cache_dir), as_json)


@board_app.command("stop")
def board_stop(
    arch: Annotated[str, typer.Option(help="Board architecture.")] = "aarch64",
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder.")] = None,
) -> None:
    """Stop the emulated board's RPC server (by its recorded PID)."""
    from bvit_edge.targets import board

    stopped = board.stop(arch, cache_dir)
    _console().print("stopped" if stopped else "no emulated board was running")


# ------------------------------------------------------------------------------------------------ bench
@app.command()
def bench(
    student: Annotated[Path, typer.Argument(help="Compiled student artifact folder (bvit-edge compile).")],
    teacher_onnx: Annotated[Path | None, typer.Option(help="Teacher .onnx (run in onnxruntime locally).")] = None,
    teacher_artifact: Annotated[
        Path | None, typer.Option(help="Teacher compiled for the same target (needed over RPC).")
    ] = None,
    student_onnx: Annotated[
        Path | None, typer.Option(help="The student's .onnx, for its 1/8/32-bit weight counts.")
    ] = None,
    teacher_int8_onnx: Annotated[
        Path | None,
        typer.Option(
            help=(
                "The teacher quantized by onnxruntime (default: made from --teacher-onnx with quantize_dynamic "
                "for this run)."
            )
        ),
    ] = None,
    int8_teacher: Annotated[
        bool,
        typer.Option(
            "--int8-teacher/--no-int8-teacher",
            help="Also measure the teacher quantized to int8 by onnxruntime (locally).",
        ),
    ] = True,
    rounds: Annotated[
        int, typer.Option(help="Alternating blocks: the models take turns, each block after its own warm-up.")
    ] = 5,
    target: Annotated[
        str | None, typer.Option(help="Target the artifacts must be built for (default: the student's).")
    ] = None,
    rpc: Annotated[
        str | None, typer.Option(help="Board RPC server HOST:PORT (an emulated board is labelled emulated).")
    ] = None,
    tracker: Annotated[
        str | None, typer.Option(help="Get a board from a TVM RPC tracker HOST:PORT (with --key).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Board kind registered with the tracker.")] = None,
    data: Annotated[
        str | None, typer.Option(help="Also measure accuracy and fidelity on this data set's val split.")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder of that data set.")] = None,
    limit: Annotated[int | None, typer.Option(help="Accuracy on the first N val images only.")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report", help="Write report.json, report.md and PNG plots here.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Threads for both models.")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up runs (discarded, counted).")] = 5,
    runs: Annotated[int, typer.Option(help="Timed runs.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the input image.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the result JSON here.")] = None,
    rpc_timeout: Annotated[float | None, typer.Option(help=_RPC_TIMEOUT_HELP)] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the --report folder when it holds anything but an earlier report.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Latency of a student artifact vs its teacher on one target (batch 1, same process run)."""
    from bvit_edge.runtime.bench import bench as run_bench

    _positive(limit, "--limit")
    if report_dir is not None:
        from bvit_edge.output_folder import check_output_folder

        check_output_folder(report_dir, "report", overwrite, option="--report")  # at once, not after the runs
    with _rpc_call_timeout(rpc_timeout, student if (rpc or tracker) else None):
        session = _tracker_session(tracker, key)
        res = run_bench(
            student,
            teacher_onnx=teacher_onnx,
            teacher_artifact=teacher_artifact,
            target=target,
            threads=threads,
            rpc=session if session is not None else rpc,
            warmup=warmup,
            runs=runs,
            seed=seed,
            student_onnx=student_onnx,
            emulated=False if session is not None else None,
            teacher_int8_onnx=teacher_int8_onnx,
            int8_teacher=int8_teacher,
            rounds=rounds,
        )
        if out is not None:
            res.save(out)
        if report_dir is not None:
            from bvit_edge.pipeline import bench_report

            bench_report(
                res,
                report_dir,
                student,
                teacher_onnx=teacher_onnx,
                student_onnx=student_onnx,
                data=data,
                data_root=str(data_root) if data_root else None,
                limit=limit,
                rpc=rpc,
                session=session,
                teacher_int8_onnx=teacher_int8_onnx,
                overwrite=overwrite,
            )
    d = res.to_dict()
    if as_json:
        _emit(d, True)
        return
    from rich.table import Table

    table = Table(
        title=(
            f"bench on {(d.get('target') or {}).get('name', '?')} ({d.get('timing_kind', '?')}, "
            f"{d.get('threads')} threads)"
        )
    )
    for col in ("model", "median ms", "p90 ms", "min ms", "runs"):
        table.add_column(col)
    for role, label in (("student", "student"), ("teacher", "teacher"), ("teacher_int8", "teacher int8 (onnxruntime)")):
        t = (d.get(role) or {}).get("steady") or {}
        if t:
            table.add_row(label, f"{t['median_ms']:.3f}", f"{t['p90_ms']:.3f}", f"{t['min_ms']:.3f}", str(t["runs"]))
    _console().print(table)
    if d.get("ratio_teacher_over_student_median") is not None:
        _console().print(f"teacher / student median: {d['ratio_teacher_over_student_median']:.2f}x")
    if d.get("ratio_teacher_int8_over_student_median") is not None:
        _console().print(f"int8 teacher / student median: {d['ratio_teacher_int8_over_student_median']:.2f}x")


# ----------------------------------------------------------------------------------------------- report
@app.command()
def report(
    json_paths: Annotated[
        list[Path],
        typer.Argument(
            help="Report JSON document(s), and/or bench JSON files (e.g. "
            "from bvit-edge-device bench on a board) to merge into it.",
            exists=True,
            dir_okay=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder for report.md and the PNG plots.")] = Path("report"),
    overwrite: Annotated[bool, typer.Option(help=_OVERWRITE_HELP)] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {kind: path} of the written files as JSON on stdout.")
    ] = False,
) -> None:
    """Render a report JSON to Markdown and PNG plots (latency, size by precision, accuracy vs latency); several
    files (the host's report and boards' bench JSONs) are merged into one report first (OUT/report.json)."""
    from bvit_edge.report import render_report
    from bvit_edge.report.merge import merge_reports
    from bvit_edge.runtime.bench import is_bench_file, report_of

    json_path = json_paths[0]
    if len(json_paths) > 1 or is_bench_file(json_path):  # merged first, into a file the report folder keeps
        import tempfile

        from bvit_edge.report import write_report

        with tempfile.TemporaryDirectory() as tmp:
            merged = write_report(Path(tmp) / "report.json", merge_reports([report_of(p) for p in json_paths]))
            written = render_report(merged, out, overwrite=overwrite, keep_json=True)
    else:
        written = render_report(json_path, out, overwrite=overwrite)
    if as_json:
        _emit({kind: str(path) for kind, path in written.items()}, True)
        return
    for kind, path in written.items():
        _console().print(f"{kind}: {path}", highlight=False)


# -------------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("bvit-edge-demo"),
    quick: Annotated[bool, typer.Option(help="A shorter run with fewer epochs.")] = False,
    per_class: Annotated[
        int, typer.Option(help="Training images per class for the GSB student (limited samples).")
    ] = 30,
    board: Annotated[
        bool, typer.Option(help="Run the aarch64 artifact on the emulated board (builds it once).")
    ] = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    deit_s: Annotated[
        bool,
        typer.Option(
            "--deit-s/--no-deit-s",
            help=(
                "Add the DeiT-S-geometry row (random non-zero weights: compile, bench and size vs DeiT-S fp32/int8 in "
                "onnxruntime; a few minutes)."
            ),
        ),
    ] = True,
    overwrite: Annotated[
        bool, typer.Option(help="Replace --out when it is not a demo folder (a demo folder is resumed).")
    ] = False,
) -> None:
    """The whole pipeline on the built-in digits data (what `make demo` runs); re-running resumes."""
    from bvit_edge.demo import run_demo

    _positive(per_class, "--per-class")
    _positive(threads, "--threads")
    run_demo(
        out=out, quick=quick, threads=threads, per_class=per_class, board=board, deit_s=deit_s, overwrite=overwrite
    )


def _tracker_session(tracker: str | None, key: str | None) -> Any:
    """An RPC session from a tracker (--tracker HOST:PORT --key KIND), or None without --tracker."""
    if tracker is None:
        if key is not None:
            raise BvitEdgeError("--key goes with --tracker HOST:PORT.")
        return None
    if not key:
        raise BvitEdgeError("--tracker needs --key: the kind of board to ask the tracker for (e.g. rpi4).")
    from bvit_edge.runtime.rpc_address import parse_address
    from bvit_edge.targets.rpc import connect_tracker

    host, port = parse_address(tracker, "--tracker")
    return connect_tracker(host, port, key)


def _rpc_call_timeout(seconds: float | None, artifact: Path | None) -> Any:
    """The per-call RPC timeout for sessions opened inside: --rpc-timeout, else the artifact's target preset
    (its manifest), else the default. A no-op context when nothing runs over RPC (``artifact`` None)."""
    import contextlib

    if artifact is None:
        if seconds is not None:
            raise UsageError("--rpc-timeout goes with --rpc HOST:PORT or --tracker HOST:PORT.")
        return contextlib.nullcontext()
    from bvit_edge.targets.rpc import artifact_call_timeout, call_timeout

    return call_timeout(seconds if seconds is not None else artifact_call_timeout(artifact))


def _split(message: str) -> tuple[str, str]:
    """(the problem, what to do): a message's first sentence and the rest ("" when it is one sentence)."""
    parts = re.split(r"(?<=[a-z0-9)\]'\"`%])\.\s+(?=[A-Z`(-])", message.strip(), maxsplit=1)
    return (parts[0] + ".", parts[1].strip()) if len(parts) == 2 else (message.strip(), "")


def _stall() -> str | None:
    """The message of a board that stopped answering during this command, if any RPC session stalled."""
    mod = sys.modules.get("bvit_edge.targets.rpc")
    return mod.stalled() if mod is not None else None


def _isolate_stdout() -> None:
    """For --json: keep the real stdout for the one JSON object and send every other write to fd 1 (Python's
    or C++'s, e.g. TVM printing a failed operator) to stderr."""
    global _JSON_OUT
    sys.stdout.flush()
    _JSON_OUT = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)


def _fail(message: str, exit_code: int, as_json: bool, hint: str | None = None) -> None:
    """Report an error (on stderr; with --json also as one JSON object on stdout) and exit with its code."""
    problem, rest = (message.strip(), hint) if hint is not None else _split(message)
    hint = rest
    _console().print(f"[bold red]error:[/] {problem}" + (f" {hint}" if hint else ""), highlight=False)
    if as_json:
        _write_json({"error": problem, "exit_code": exit_code, "hint": hint})
    sys.exit(exit_code)


def main() -> None:
    """Console-script entry point: runs the app, turning every error into a message and its exit code (and,
    with --json, into the one JSON object on stdout)."""
    import warnings

    from typer import _click

    # Deprecation chatter of torch.onnx / onnxscript is not the user's business.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    as_json = "--json" in sys.argv[1:]
    if as_json:
        _isolate_stdout()
    try:
        rv = app(standalone_mode=False)
    except _click.exceptions.NoArgsIsHelpError as exc:  # the help was printed: nothing more to say
        if as_json:
            _write_json({"error": "No command given.", "exit_code": exc.exit_code, "hint": "Run `bvit-edge --help`."})
        sys.exit(exc.exit_code)
    except _click.exceptions.ClickException as exc:  # bad options and arguments
        _fail(
            exc.format_message(), exc.exit_code, as_json, hint="Run `bvit-edge --help`, or `bvit-edge COMMAND --help`."
        )
    except _click.exceptions.Abort:
        _fail("Interrupted.", 130, as_json, hint="")
    except BvitEdgeError as exc:
        # whatever call noticed it first, a stalled board is the cause (unless the error already says so)
        stall = None if type(exc).__name__ == "StalledBoard" else _stall()
        _fail(stall or str(exc), 4 if stall else exc.exit_code, as_json, hint=None if stall else exc.hint)
    except KeyboardInterrupt:
        _fail("Interrupted.", 130, as_json, hint="")
    except Exception as exc:
        stall = _stall()
        if stall is not None:  # TVM's own error for the connection the relay closed
            _fail(stall, 4, as_json)
        if as_json:  # a bug: the traceback goes to stderr, stdout still gets its one JSON object
            _write_json(
                {
                    "error": f"internal error: {type(exc).__name__}: {exc}",
                    "exit_code": 1,
                    "hint": "This is a bug in bvit-edge; the traceback is on stderr.",
                }
            )
        raise
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
