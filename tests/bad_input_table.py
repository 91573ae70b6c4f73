"""Reproduce every case of the hardening issue against the CLI and print a table: exit code, the error
message, and what else happened (a traceback, files deleted or replaced, code run from a data file, a hang,
stdout that is not JSON).

    python tests/bad_input_table.py --work /tmp/bad-input [--tree PATH] [--json table.json]

``--tree`` is the source tree put first on PYTHONPATH (default: this repository), so the same script
measures an old checkout and the current one. Tiny fixtures (a teacher, a GSB student, its packed export,
a host artifact, a bench JSON) are built once under ``--work/fix`` with that tree. A case that hangs is
killed after ``--hang-s`` seconds and reported as such. Not a test: the bad-input suite
(tests/test_bad_input_*.py) asserts the fixed behaviour; this script shows before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass
class Ctx:
    work: Path
    fix: Path
    env: dict[str, str]
    has_rpc_timeout: bool
    hang_s: float


@dataclass
class Outcome:
    rc: int | str
    message: str
    notes: list[str]


def _cli(ctx: Ctx, *args: str) -> list[str]:
    return [sys.executable, "-m", "bvit_edge", *map(str, args)]


def _run(ctx: Ctx, args: list[str], timeout: float = 600, cwd: Path | None = None) -> tuple[Any, float]:
    t0 = time.time()
    proc = subprocess.Popen(
        args,
        env=ctx.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd or ctx.work,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(args, proc.returncode, out, err), time.time() - t0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(args, f"hang (killed after {timeout:.0f} s)", out, err), time.time() - t0


def _message(proc: Any) -> str:
    err = proc.stderr or ""
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("error:"):
            idx = lines.index(ln)
            return " ".join(lines[idx : idx + 3])[:160]
    if "Traceback" in err:
        return "traceback: " + (lines[-1] if lines else "")[:140]
    for ln in reversed(lines):
        if "terminate called" in ln or "Abort" in ln:
            return ln[:160]
    return (lines[-1] if lines else "(no message)")[:160]


def _notes(proc: Any) -> list[str]:
    notes = []
    if "Traceback (most recent call last)" in (proc.stderr or ""):
        notes.append("traceback on stderr")
    if isinstance(proc.returncode, int) and proc.returncode < 0:
        notes.append(f"killed by signal {-proc.returncode}")
    return notes


def _tree_digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------
# fixtures


def build_fixtures(ctx: Ctx) -> None:
    f = ctx.fix
    if (f / "done").is_file():
        return
    f.mkdir(parents=True, exist_ok=True)
    tiny = ["--image-size", "16", "--per-class", "4", "--epochs", "1", "--batch-size", "16", "--threads", "1"]
    steps = [
        ["train", "--model", "deit_test_patch4_16", *tiny, "--out", f / "teacher"],
        [
            "train",
            "--method",
            "gsb",
            "--stage",
            "1",
            "--model",
            "gsb_test_patch4_16",
            "--teacher",
            f / "teacher",
            *tiny,
            "--out",
            f / "s1",
        ],
        [
            "train",
            "--method",
            "gsb",
            "--stage",
            "2",
            "--init",
            f / "s1" / "best",
            "--model",
            "gsb_test_patch4_16",
            "--teacher",
            f / "teacher",
            *tiny,
            "--out",
            f / "student",
        ],
        ["export", f / "student", "--out", f / "export", "--limit", "16"],
        ["compile", f / "export" / "student.packed.onnx", "--target", "host", "--out", f / "art"],
        [
            "bench",
            f / "art",
            "--teacher-onnx",
            f / "export" / "teacher.onnx",
            "--warmup",
            "1",
            "--runs",
            "3",
            "--out",
            f / "bench.json",
            "--report",
            f / "report",
        ],
    ]
    for step in steps:
        proc, _ = _run(ctx, _cli(ctx, *step))
        if proc.returncode != 0:
            raise SystemExit(f"fixture step {step[0]} failed:\n{proc.stderr[-3000:]}")
    from PIL import Image

    Image.new("RGB", (16, 16), (120, 30, 200)).save(f / "img.png")
    (f / "done").write_text("ok\n")


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("my own work\n")
    (path / "notes").mkdir()
    (path / "notes" / "a.txt").write_text("keep me\n")
    return path


def _swapped_wbits(ctx: Ctx, dst: Path) -> Path:
    import onnx

    proto = onnx.load(str(ctx.fix / "export" / "student.packed.onnx"))
    node = next(n for n in proto.graph.node if n.op_type == "BinaryLinear")
    init = next(i for i in proto.graph.initializer if i.name == node.input[3])
    d0, d1 = init.dims
    init.dims[:] = [d1, d0]
    onnx.save(proto, str(dst))
    return dst


def _domain_version(ctx: Ctx, dst: Path, version: int) -> Path:
    import onnx

    proto = onnx.load(str(ctx.fix / "export" / "student.packed.onnx"))
    for imp in proto.opset_import:
        if imp.domain == "bvit_edge":
            imp.version = version
    onnx.save(proto, str(dst))
    return dst


def _edit_params(art: Path, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    import numpy as np

    with np.load(art / "params.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(art / "params.npz", **fn(arrays))


# ---------------------------------------------------------------------------------------------------------
# cases: each returns an Outcome


def case_resume_pickle(ctx: Ctx, d: Path) -> Outcome:
    import torch

    run = _copy(ctx.fix / "teacher", d / "run")
    (run / "last" / "trainer_state.safetensors").unlink(missing_ok=True)  # the state of an older run: a pickle
    marker = d / "CODE_RAN"

    class Evil:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    torch.save({"optimizer": Evil()}, run / "last" / "trainer_state.pt")
    proc, _ = _run(ctx, _cli(ctx, "train", "--out", run, "--resume"))
    notes = _notes(proc) + (["CODE FROM THE DATA FILE RAN"] if marker.exists() else ["no code ran"])
    return Outcome(proc.returncode, _message(proc), notes)


def _compile_into(ctx: Ctx, out: Path, extra: tuple[str, ...] = ()) -> tuple[Any, float]:
    return _run(
        ctx, _cli(ctx, "compile", ctx.fix / "export" / "student.packed.onnx", "--target", "host", "--out", out, *extra)
    )


def case_compile_user_folder(ctx: Ctx, d: Path) -> Outcome:
    out = _user_folder(d / "mine")
    before = _tree_digest(out)
    proc, _ = _compile_into(ctx, out)
    after = _tree_digest(out) if out.is_dir() else {}
    lost = sorted(set(before) - set(after))
    notes = _notes(proc) + ([f"USER FILES DELETED: {', '.join(lost)}"] if lost else ["user files kept"])
    return Outcome(proc.returncode, _message(proc), notes)


def case_compile_out_file(ctx: Ctx, d: Path) -> Outcome:
    out = d / "report.pdf"
    out.write_text("a user's file\n")
    proc, _ = _compile_into(ctx, out)
    kept = out.is_file() and out.read_text() == "a user's file\n"
    return Outcome(
        proc.returncode, _message(proc), _notes(proc) + (["file kept"] if kept else ["FILE REPLACED BY A FOLDER"])
    )


def _train_tiny(ctx: Ctx, out: Path, *extra: Any) -> tuple[Any, float]:
    return _run(
        ctx,
        _cli(
            ctx,
            "train",
            "--model",
            "deit_test_patch4_16",
            "--image-size",
            "16",
            "--per-class",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--out",
            out,
            *extra,
        ),
    )


def case_train_existing_run(ctx: Ctx, d: Path) -> Outcome:
    run = _copy(ctx.fix / "teacher", d / "run")
    before = _tree_digest(run)
    proc, _ = _train_tiny(ctx, run, "--seed", "7")
    after = _tree_digest(run)
    changed = sorted(k for k in before if after.get(k) != before[k])
    return Outcome(
        proc.returncode,
        _message(proc),
        _notes(proc)
        + ([f"RUN OVERWRITTEN: {len(changed)} files changed (log.jsonl mixed)"] if changed else ["run kept"]),
    )


def case_train_user_last(ctx: Ctx, d: Path) -> Outcome:
    out = d / "mine"
    _user_folder(out / "last")
    before = _tree_digest(out)
    proc, _ = _train_tiny(ctx, out)
    after = _tree_digest(out)
    lost = sorted(set(before) - set(after))
    return Outcome(
        proc.returncode,
        _message(proc),
        _notes(proc) + ([f"USER FILES DELETED: {', '.join(lost)}"] if lost else ["user files kept"]),
    )


def _stalled_server(ctx: Ctx) -> tuple[subprocess.Popen, int]:
    srv = subprocess.Popen(
        [sys.executable, str(HERE / "stalled_rpc_server.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    port = int(srv.stdout.readline())
    return srv, port


def _stop(srv: subprocess.Popen) -> str:
    os.killpg(srv.pid, signal.SIGKILL)
    _, err = srv.communicate()
    return err


def _rpc_case(ctx: Ctx, args: list[Any]) -> Outcome:
    srv, port = _stalled_server(ctx)
    try:
        extra = ["--rpc-timeout", "5"] if ctx.has_rpc_timeout else []
        proc, secs = _run(ctx, _cli(ctx, *args, "--rpc", f"127.0.0.1:{port}", *extra), timeout=ctx.hang_s)
    finally:
        events = _stop(srv)
    notes = [*_notes(proc), f"{secs:.0f} s"]
    handshakes = events.count("handshake")
    notes.append(f"board connections closed by the client: {events.count('closed')}/{handshakes}")
    return Outcome(proc.returncode, _message(proc), notes)


def case_run_stalled(ctx: Ctx, d: Path) -> Outcome:
    return _rpc_case(ctx, ["run", ctx.fix / "art", "--image", ctx.fix / "img.png"])


def case_bench_stalled(ctx: Ctx, d: Path) -> Outcome:
    return _rpc_case(ctx, ["bench", ctx.fix / "art", "--warmup", "1", "--runs", "2"])


def case_validate_swapped(ctx: Ctx, d: Path) -> Outcome:
    bad = _swapped_wbits(ctx, d / "bad.onnx")
    proc, _ = _run(ctx, _cli(ctx, "validate", bad, "--checkpoint", ctx.fix / "student", "--limit", "4"))
    return Outcome(proc.returncode, _message(proc), _notes(proc))


def case_run_swapped(ctx: Ctx, d: Path) -> Outcome:
    bad = _swapped_wbits(ctx, d / "bad.onnx")
    proc, _ = _run(ctx, _cli(ctx, "run", bad, "--image", ctx.fix / "img.png"))
    return Outcome(proc.returncode, _message(proc), _notes(proc))


def case_compile_swapped(ctx: Ctx, d: Path) -> Outcome:
    bad = _swapped_wbits(ctx, d / "bad.onnx")
    proc, _ = _run(ctx, _cli(ctx, "compile", bad, "--target", "host", "--out", d / "art"))
    return Outcome(proc.returncode, _message(proc), _notes(proc))


def _predictions(proc: Any) -> Any:
    try:
        return json.loads(proc.stdout)["predictions"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def case_params_tampered(ctx: Ctx, d: Path) -> Outcome:
    art = _copy(ctx.fix / "art", d / "art")
    ref, _ = _run(ctx, _cli(ctx, "run", art, "--image", ctx.fix / "img.png", "--json"))
    _edit_params(art, lambda a: {k: (v * -3 if v.dtype.kind == "f" else v) for k, v in a.items()})
    proc, _ = _run(ctx, _cli(ctx, "run", art, "--image", ctx.fix / "img.png", "--json"))
    notes = _notes(proc)
    if proc.returncode == 0:
        notes.append("PREDICTS DIFFERENTLY, SILENTLY" if _predictions(proc) != _predictions(ref) else "same prediction")
    return Outcome(proc.returncode, _message(proc), notes)


def case_epochs_zero(ctx: Ctx, d: Path) -> Outcome:
    proc, _ = _train_tiny(ctx, d / "run", "--epochs", "0", "--json")
    notes = _notes(proc)
    if "NaN" in (proc.stdout or ""):
        notes.append("stdout JSON holds NaN")
    if proc.returncode == 0 and not (d / "run" / "last").exists():
        notes.append("NO CHECKPOINT")
    return Outcome(
        proc.returncode,
        _message(proc) if proc.returncode else (proc.stderr.strip().splitlines() or [""])[-1][:160],
        notes,
    )


def case_ctrl_c(ctx: Ctx, d: Path) -> Outcome:
    out = d / "run"
    args = _cli(
        ctx,
        "train",
        "--model",
        "deit_test_patch4_16",
        "--image-size",
        "16",
        "--per-class",
        "20",
        "--epochs",
        "50",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--out",
        out,
    )
    proc = subprocess.Popen(args, env=ctx.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ctx.work)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "last" / "config.json").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out_s, err = proc.communicate(timeout=120)
    cp = subprocess.CompletedProcess(args, proc.returncode, out_s, err)
    notes = _notes(cp) + (["checkpoint saved"] if (out / "last" / "model.safetensors").is_file() else ["NO CHECKPOINT"])
    return Outcome(proc.returncode, (err.strip().splitlines() or [""])[-1][:160], notes)


def _validate_version(ctx: Ctx, d: Path, version: int) -> Outcome:
    bad = _domain_version(ctx, d / f"v{version}.onnx", version)
    proc, _ = _run(ctx, _cli(ctx, "validate", bad, "--checkpoint", ctx.fix / "student", "--limit", "4"))
    return Outcome(proc.returncode, _message(proc) if proc.returncode else "passed: " + _message(proc), _notes(proc))


def case_manifest(ctx: Ctx, d: Path, text: str) -> Outcome:
    art = _copy(ctx.fix / "art", d / "art")
    (art / "manifest.json").write_text(text)
    proc, _ = _run(ctx, _cli(ctx, "run", art, "--image", ctx.fix / "img.png"))
    return Outcome(proc.returncode, _message(proc), _notes(proc))


def case_params_shape(ctx: Ctx, d: Path, kind: str) -> Outcome:
    import numpy as np

    art = _copy(ctx.fix / "art", d / "art")

    def edit(a: dict[str, Any]) -> dict[str, Any]:
        k = max(a, key=lambda n: a[n].size)
        a[k] = (
            a[k].reshape(-1)[:-1]
            if kind == "shape"
            else a[k].astype(np.float64 if a[k].dtype.kind == "f" else np.int32)
        )
        return a

    _edit_params(art, edit)
    proc, _ = _run(ctx, _cli(ctx, "run", art, "--image", ctx.fix / "img.png"))
    return Outcome(proc.returncode, _message(proc), _notes(proc))


def case_toml(ctx: Ctx, d: Path, text: str) -> Outcome:
    cfg = d / "c.toml"
    cfg.write_text(text)
    out = d / "run"
    proc, _ = _run(
        ctx,
        _cli(
            ctx,
            "train",
            "--config",
            cfg,
            "--model",
            "deit_test_patch4_16",
            "--image-size",
            "16",
            "--per-class",
            "2",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--max-steps",
            "1",
            "--out",
            out,
        ),
    )
    notes = _notes(proc)
    saved = out / "last" / "config.json"
    if proc.returncode == 0 and saved.is_file():
        tc = json.loads(saved.read_text()).get("train_config", {})
        notes.append(f"ACCEPTED AND SAVED: epochs={tc.get('epochs')!r} method_options={tc.get('method_options')!r}")
    return Outcome(proc.returncode, _message(proc), notes)


def case_run_limit0(ctx: Ctx, d: Path) -> Outcome:
    proc, _ = _run(ctx, _cli(ctx, "run", ctx.fix / "art", "--data", "digits", "--limit", "0"))
    return Outcome(proc.returncode, _message(proc), _notes(proc))


def case_out_file(ctx: Ctx, d: Path, command: str) -> Outcome:
    target = d / "existing.txt"
    target.write_text("a user's file\n")
    if command == "train":
        proc, _ = _train_tiny(ctx, target)
    elif command == "export":
        proc, _ = _run(ctx, _cli(ctx, "export", ctx.fix / "student", "--out", target, "--limit", "4"))
    else:
        proc, _ = _run(ctx, _cli(ctx, "report", ctx.fix / "report" / "report.json", "--out", target))
    kept = target.is_file() and target.read_text() == "a user's file\n"
    return Outcome(proc.returncode, _message(proc), _notes(proc) + (["file kept"] if kept else ["FILE REPLACED"]))


def case_resume_other_model(ctx: Ctx, d: Path) -> Outcome:
    run = _copy(ctx.fix / "teacher", d / "run")
    proc, _ = _run(
        ctx,
        _cli(
            ctx,
            "train",
            "--model",
            "deit_tiny_patch16_224",
            "--image-size",
            "16",
            "--per-class",
            "4",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--out",
            run,
            "--resume",
        ),
    )
    return Outcome(proc.returncode, _message(proc), _notes(proc))


def case_eval_other_model(ctx: Ctx, d: Path) -> Outcome:
    ck = _copy(ctx.fix / "teacher" / "best", d / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"] = "deit_tiny_patch16_224"
    (ck / "config.json").write_text(json.dumps(cfg))
    proc, _ = _run(ctx, _cli(ctx, "eval", ck))
    return Outcome(proc.returncode, _message(proc), _notes(proc))


def _chaoyang(ctx: Ctx, d: Path, evil_name: Callable[[Path], str]) -> Outcome:
    from PIL import Image

    root = d / "chaoyang"
    (root / "train").mkdir(parents=True)
    outside = d / "outside.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(outside)
    entries = []
    for label in range(4):
        name = f"train/{label}.png"
        Image.new("RGB", (16, 16), (label * 40, 10, 10)).save(root / name)
        entries.append({"name": name, "label": label})
    bad = [*entries, {"name": evil_name(outside), "label": 0}]
    (root / "train.json").write_text(json.dumps(bad))
    (root / "test.json").write_text(json.dumps(entries))
    proc, _ = _run(
        ctx,
        _cli(
            ctx,
            "train",
            "--data",
            "chaoyang",
            "--data-root",
            root,
            "--model",
            "deit_test_patch4_16",
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--threads",
            "1",
            "--max-steps",
            "1",
            "--out",
            d / "run",
        ),
    )
    notes = _notes(proc)
    if proc.returncode == 0:
        notes.append("READ AN IMAGE OUTSIDE THE DATA ROOT")
    return Outcome(proc.returncode, _message(proc), notes)


def case_empty_folder(ctx: Ctx, d: Path) -> Outcome:
    empty = d / "empty"
    empty.mkdir()
    proc, _ = _run(ctx, _cli(ctx, "run", ctx.fix / "art", "--image", empty))
    return Outcome(proc.returncode, _message(proc), _notes(proc))


def _json_stdout(proc: Any) -> str:
    text = (proc.stdout or "").strip()
    if not text:
        return "stdout EMPTY"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return f"stdout NOT JSON: {text[:80]!r}"
    if isinstance(obj, dict) and {"error", "exit_code", "hint"} <= set(obj):
        return f"stdout: one JSON error object (exit_code {obj['exit_code']})"
    return f"stdout JSON without error keys: {text[:80]!r}"


def case_json_error(ctx: Ctx, d: Path) -> Outcome:
    proc, _ = _run(ctx, _cli(ctx, "run", ctx.fix / "art", "--image", d / "missing.png", "--json"))
    return Outcome(proc.returncode, _message(proc), [*_notes(proc), _json_stdout(proc)])


def case_compile_json_swapped(ctx: Ctx, d: Path) -> Outcome:
    bad = _swapped_wbits(ctx, d / "bad.onnx")
    proc, _ = _run(ctx, _cli(ctx, "compile", bad, "--target", "host", "--out", d / "art", "--json"))
    return Outcome(proc.returncode, _message(proc), [*_notes(proc), _json_stdout(proc)])


def case_compile_json(ctx: Ctx, d: Path) -> Outcome:
    proc, _ = _run(
        ctx,
        _cli(
            ctx,
            "compile",
            ctx.fix / "export" / "student.packed.onnx",
            "--target",
            '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "no-such-cpu"}',
            "--out",
            d / "art",
            "--json",
        ),
    )
    return Outcome(proc.returncode, _message(proc), [*_notes(proc), _json_stdout(proc)])


CASES: list[tuple[str, str, Callable[[Ctx, Path], Outcome]]] = [
    ("1", "train --resume, trainer_state.pt holds a pickle that runs os.system", case_resume_pickle),
    ("2", "compile --out DIR holding the user's files", case_compile_user_folder),
    ("2", "compile --out FILE (a regular file)", case_compile_out_file),
    ("2", "train --out EXISTING_RUN without --resume", case_train_existing_run),
    ("2", "train --out DIR whose last/ is the user's", case_train_user_last),
    ("3", "run ART --rpc STALLED_BOARD", case_run_stalled),
    ("3", "bench ART --rpc STALLED_BOARD", case_bench_stalled),
    ("5", "validate packed ONNX, w_bits dims swapped", case_validate_swapped),
    ("5", "run packed ONNX, w_bits dims swapped", case_run_swapped),
    ("5", "compile packed ONNX, w_bits dims swapped", case_compile_swapped),
    ("5", "validate, bvit_edge domain version 2", lambda c, d: _validate_version(c, d, 2)),
    ("5", "validate, bvit_edge domain version 0", lambda c, d: _validate_version(c, d, 0)),
    ("4", "run ART, params.npz values x -3", case_params_tampered),
    ("4", "run ART, manifest.json bad JSON", lambda c, d: case_manifest(c, d, "{not json")),
    ("4", "run ART, manifest.json empty", lambda c, d: case_manifest(c, d, "")),
    ("4", "run ART, manifest.json a list", lambda c, d: case_manifest(c, d, "[1, 2]")),
    ("4", "run ART, params.npz array of the wrong shape", lambda c, d: case_params_shape(c, d, "shape")),
    ("4", "run ART, params.npz array of the wrong dtype", lambda c, d: case_params_shape(c, d, "dtype")),
    ("6", "train --epochs 0 --json", case_epochs_zero),
    ("6", "Ctrl-C during train", case_ctrl_c),
    ("6", 'train --config: epochs = "three"', lambda c, d: case_toml(c, d, 'epochs = "three"\n')),
    ("6", 'train --config: lr = "fast"', lambda c, d: case_toml(c, d, 'lr = "fast"\n')),
    ("6", "train --config: epochs = 1.5", lambda c, d: case_toml(c, d, "epochs = 1.5\n")),
    ("6", "train --config: epochs = true", lambda c, d: case_toml(c, d, "epochs = true\n")),
    (
        "6",
        "train --config: unknown [method_options] key",
        lambda c, d: case_toml(c, d, "[method_options]\nbogus = 3\n"),
    ),
    ("6", "run ART --data digits --limit 0", case_run_limit0),
    ("6", "train --out EXISTING_FILE", lambda c, d: case_out_file(c, d, "train")),
    ("6", "export --out EXISTING_FILE", lambda c, d: case_out_file(c, d, "export")),
    ("6", "report --out EXISTING_FILE", lambda c, d: case_out_file(c, d, "report")),
    ("6", "train --resume with another --model", case_resume_other_model),
    ("6", "eval, checkpoint config.json names another model", case_eval_other_model),
    ("6", "chaoyang train.json name is absolute", lambda c, d: _chaoyang(c, d, lambda p: str(p))),
    ("6", "chaoyang train.json name contains ..", lambda c, d: _chaoyang(c, d, lambda p: "../outside.png")),
    ("6", "run --image EMPTY_FOLDER", case_empty_folder),
    ("7", "run --json on an error (missing image)", case_json_error),
    ("7", "compile --json, packed ONNX with w_bits dims swapped", case_compile_json_swapped),
    ("7", "compile --json with a CPU LLVM does not know", case_compile_json),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tree", type=Path, default=HERE.parent)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--hang-s", type=float, default=60.0)
    ap.add_argument("--only", default=None, help="Run only the cases whose description contains this text.")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.tree.resolve()), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    helps = subprocess.run(
        [sys.executable, "-m", "bvit_edge", "run", "--help"], env=env, capture_output=True, text=True
    )
    ctx = Ctx(args.work.resolve(), args.work.resolve() / "fix", env, "--rpc-timeout" in helps.stdout, args.hang_s)
    ctx.work.mkdir(parents=True, exist_ok=True)
    build_fixtures(ctx)
    rows = []
    for i, (item, desc, fn) in enumerate(CASES):
        if args.only and args.only not in desc:
            continue
        d = ctx.work / f"case{i:02d}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        t0 = time.time()
        res = fn(ctx, d)
        rows.append(
            {
                "item": item,
                "case": desc,
                "exit": res.rc,
                "message": res.message,
                "notes": res.notes,
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(f"| {item} | {desc} | {res.rc} | {res.message} | {'; '.join(res.notes)} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
