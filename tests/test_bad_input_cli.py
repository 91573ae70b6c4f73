"""Bad input, case by case, as a user meets it: each runs the CLI in a subprocess and checks the exit code, the
message, that there is no traceback (nor an abort, nor a hang), and that nothing the user had changed.

The cases are those of the hardening issue: code run from a data file, user files deleted or replaced, hangs
on a stalled board, aborts inside onnxruntime ops, silent wrong results, tracebacks, ``--json`` errors.
tests/bad_input_table.py prints the same cases as a before/after table.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bvit_edge.output_folder import MARKER

TINY_TRAIN = (
    "--model",
    "deit_test_patch4_16",
    "--image-size",
    "16",
    "--per-class",
    "2",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--threads",
    "1",
)


def _user_folder(path: Path) -> Path:
    """A folder of the user's own files (what no command may delete or merge into)."""
    (path / "notes").mkdir(parents=True)
    (path / "thesis.tex").write_text("my own work\n")
    (path / "notes" / "a.txt").write_text("keep me\n")
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    return dst


def _json_error(proc: subprocess.CompletedProcess) -> dict:
    """stdout must be exactly one JSON object {"error", "exit_code", "hint"} matching the exit code."""
    obj = json.loads(proc.stdout)  # raises if anything else is on stdout
    assert set(obj) == {"error", "exit_code", "hint"} and obj["exit_code"] == proc.returncode, proc.stdout
    assert obj["error"] and isinstance(obj["hint"], str)
    return obj


# ------------------------------------------------------------------------------------------------ item 1
class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a crafted pickle does: call os.system when it is loaded
        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_pickled_trainer_state_and_runs_no_code(cli, tiny_pipeline, tmp_path):
    run = _copy(tiny_pipeline["teacher"], tmp_path / "run")
    (run / "last" / "trainer_state.safetensors").unlink()
    marker = tmp_path / "CODE_RAN"
    torch.save({"optimizer": _RunsCode(marker)}, run / "last" / "trainer_state.pt")
    before = cli.snapshot(run)
    proc = cli.run("train", "--out", run, "--resume")
    cli.refused(proc, 2, "trainer_state.pt", "pickle", "refused", "--init")
    assert not marker.exists(), "code stored in the checkpoint ran"
    assert cli.snapshot(run) == before


def test_resume_refuses_an_old_pickled_state_even_without_code(cli, tiny_pipeline, tmp_path):
    """What bvit-edge 0.1 wrote (numpy RNG arrays inside a torch pickle): never unpickled beyond weights_only."""
    run = _copy(tiny_pipeline["teacher"], tmp_path / "run")
    (run / "last" / "trainer_state.safetensors").unlink()
    torch.save({"step": 3, "epoch": 1, "rng_numpy": np.random.get_state()}, run / "last" / "trainer_state.pt")
    proc = cli.run("train", "--out", run, "--resume")
    cli.refused(proc, 2, "trainer_state.pt", "older bvit-edge", "--overwrite")


def test_a_damaged_trainer_state_is_a_clear_checkpoint_error(cli, tiny_pipeline, tmp_path):
    run = _copy(tiny_pipeline["teacher"], tmp_path / "run")
    state = run / "last" / "trainer_state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    before = cli.snapshot(run)
    cli.refused(cli.run("train", "--out", run, "--resume"), 2, "trainer_state.safetensors", "not a readable")
    assert cli.snapshot(run) == before


# ------------------------------------------------------------------------------------------------ item 2
def test_compile_refuses_a_folder_of_the_users_files(cli, tiny_pipeline, tmp_path):
    out = _user_folder(tmp_path / "mine")
    before = cli.snapshot(out)
    proc = cli.run("compile", tiny_pipeline["packed"], "--target", "host", "--out", out)
    cli.refused(proc, 2, "--overwrite", "thesis.tex")
    assert cli.snapshot(out) == before and cli.leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["compile", "export", "report", "train", "convert", "demo"])
def test_out_naming_a_file_is_an_error_and_the_file_is_kept(cli, tiny_pipeline, tmp_path, command):
    target = tmp_path / "existing.txt"
    target.write_text("a user's file\n")
    args = {
        "compile": ("compile", tiny_pipeline["packed"], "--target", "host"),
        "export": ("export", tiny_pipeline["student"], "--no-validate"),
        "report": ("report", tiny_pipeline["report"]),
        "train": ("train", *TINY_TRAIN),
        "convert": ("convert", tiny_pipeline["report"]),  # the source is never read: --out is refused first
        "demo": ("demo", "--quick"),
    }[command]
    for extra in ((), ("--overwrite",)):  # not even --overwrite replaces a file
        proc = cli.run(*args, "--out", target, *extra)
        cli.refused(proc, 2, "existing.txt", "is a file")
        assert target.read_text() == "a user's file\n" and target.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]


@pytest.mark.parametrize("command", ["export", "report", "convert", "demo", "bench"])
def test_every_command_refuses_a_folder_of_the_users_files(cli, tiny_pipeline, tmp_path, command):
    out = _user_folder(tmp_path / "mine")
    before = cli.snapshot(out)
    args = {
        "export": ("export", tiny_pipeline["student"], "--no-validate", "--out", out),
        "report": ("report", tiny_pipeline["report"], "--out", out),
        "convert": ("convert", tiny_pipeline["report"], "--out", out),
        "demo": ("demo", "--quick", "--out", out),
        "bench": ("bench", tiny_pipeline["art"], "--runs", "1", "--report", out),
    }[command]
    cli.refused(cli.run(*args), 2, "--overwrite", "did not write")
    assert cli.snapshot(out) == before and cli.leftovers(tmp_path) == []


def test_train_into_an_existing_run_asks_for_resume_or_overwrite(cli, tiny_pipeline, tmp_path):
    run = _copy(tiny_pipeline["teacher"], tmp_path / "run")
    before = cli.snapshot(run)
    proc = cli.run("train", *TINY_TRAIN, "--seed", "7", "--out", run)
    cli.refused(proc, 2, "already holds a training run", "--resume", "--overwrite")
    assert cli.snapshot(run) == before


def test_train_refuses_a_folder_whose_last_is_the_users(cli, tmp_path):
    out = tmp_path / "mine"
    _user_folder(out / "last")
    before = cli.snapshot(out)
    cli.refused(cli.run("train", *TINY_TRAIN, "--out", out), 2, "--overwrite")
    assert cli.snapshot(out) == before


def test_train_overwrite_replaces_the_run_without_mixing(cli, tiny_pipeline, tmp_path):
    run = _copy(tiny_pipeline["teacher"], tmp_path / "run")
    (run / "log.jsonl").write_text('{"epoch": 99, "old": true}\n')
    proc = cli.run("train", *TINY_TRAIN, "--out", run, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [1] and not any(ln.get("old") for ln in lines)
    assert json.loads((run / MARKER).read_text())["written_by"] == "train"
    assert cli.leftovers(tmp_path) == []


def test_train_overwrite_refuses_to_delete_its_own_inputs(cli, tiny_pipeline, tmp_path):
    run = _copy(tiny_pipeline["teacher"], tmp_path / "run")
    before = cli.snapshot(run)
    proc = cli.run("train", *TINY_TRAIN, "--out", run, "--overwrite", "--init", run / "last")
    cli.refused(proc, 2, "lies inside")
    assert cli.snapshot(run) == before


@pytest.mark.slow
def test_compile_overwrite_replaces_whole_and_a_recompile_needs_no_flag(cli, tiny_pipeline, tmp_path):
    out = _user_folder(tmp_path / "mine")
    proc = cli.run("compile", tiny_pipeline["packed"], "--target", "host", "--out", out, "--overwrite", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["schema_version"] >= 2  # stdout: the manifest and nothing else (TVM talks)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "lib.so", "manifest.json", "params.npz"])
    first = (out / "manifest.json").read_text()
    proc = cli.run("compile", tiny_pipeline["packed"], "--target", "host", "--out", out)
    assert proc.returncode == 0, proc.stderr  # its own earlier output: replaced without --overwrite
    assert json.loads(first)["model"] == json.loads((out / "manifest.json").read_text())["model"]
    assert cli.leftovers(tmp_path) == []


def test_report_into_its_own_folder_again_keeps_the_json_it_reads(cli, tiny_pipeline, tmp_path):
    out = tmp_path / "rep"
    assert cli.run("report", tiny_pipeline["report"], "--out", out).returncode == 0
    shutil.copy2(tiny_pipeline["report"], out / "report.json")
    proc = cli.run("report", out / "report.json", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.json").read_bytes() == tiny_pipeline["report"].read_bytes()
    assert (out / "report.md").is_file() and cli.leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ item 3
@pytest.mark.parametrize("command", ["run", "bench", "compile"])
def test_a_stalled_board_is_exit_4_within_the_timeout_and_is_left_usable(
    cli, tiny_pipeline, stalled_board, tmp_path, command
):
    port, events = stalled_board
    args = {
        "run": ("run", tiny_pipeline["art"], "--image", tiny_pipeline["image"]),
        "bench": ("bench", tiny_pipeline["art"], "--runs", "2"),
        "compile": ("compile", tiny_pipeline["packed"], "--target", "host", "--tune", "1", "--out", tmp_path / "a"),
    }[command]
    t0 = time.monotonic()
    proc = cli.run(*args, "--rpc", f"127.0.0.1:{port}", "--rpc-timeout", "3", "--json", timeout=240)
    cli.refused(proc, 4, "stopped answering", "within 3 s", "--rpc-timeout", "rpc server")
    assert time.monotonic() - t0 < 200
    assert _json_error(proc)["exit_code"] == 4
    handshakes = [e for e in events() if e.startswith("handshake")]
    assert handshakes and all(f"closed {h.split()[1]}" in events() for h in handshakes), events()
    from bvit_edge.targets.rpc import probe

    probe("127.0.0.1", port, 5)  # the board still accepts and answers the handshake
    assert not (tmp_path / "a").exists()


def test_the_rpc_timeout_comes_from_the_target_preset(tmp_path):
    from bvit_edge.targets import load_target
    from bvit_edge.targets.rpc import artifact_call_timeout, preset_call_timeout

    assert preset_call_timeout(load_target("rpi4-aarch64")) == 120
    assert preset_call_timeout(load_target("rpi3-armv7")) == 180
    (tmp_path / "manifest.json").write_text(json.dumps({"target": load_target("rpi5-aarch64").to_dict()}))
    assert artifact_call_timeout(tmp_path) == 120
    preset = tmp_path / "slow.toml"
    preset.write_text(
        'name = "slow"\narch = "aarch64"\nfamily = "aarch64-neon"\nrpc_timeout_s = "long"\n'
        '[tvm_target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n'
    )
    from bvit_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="rpc_timeout_s"):
        load_target(str(preset))


# ------------------------------------------------------------------------------------------------ item 5
def _swapped_wbits(src: Path, dst: Path) -> Path:
    proto = onnx.load(str(src))
    node = next(n for n in proto.graph.node if n.op_type == "BinaryLinear")
    init = next(i for i in proto.graph.initializer if i.name == node.input[3])
    init.dims[:] = list(reversed(init.dims))
    onnx.save(proto, str(dst))
    return dst


def _domain_version(src: Path, dst: Path, version: int) -> Path:
    proto = onnx.load(str(src))
    for imp in proto.opset_import:
        if imp.domain == "bvit_edge":
            imp.version = version
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_packed_onnx_with_swapped_wbits_dims_is_refused_not_aborted(cli, tiny_pipeline, tmp_path, command):
    bad = _swapped_wbits(tiny_pipeline["packed"], tmp_path / "bad.onnx")
    before = cli.snapshot(bad)
    args = (
        ("validate", bad, "--checkpoint", tiny_pipeline["student"], "--limit", "2")
        if command == "validate"
        else ("run", bad, "--image", tiny_pipeline["image"])
    )
    cli.refused(cli.run(*args), 2, "W_bits", "expected [N, 8]", "export it again")
    assert cli.snapshot(bad) == before


@pytest.mark.parametrize("version", [0, 2])
def test_validate_refuses_a_bvit_edge_domain_version_other_than_1(cli, tiny_pipeline, tmp_path, version):
    bad = _domain_version(tiny_pipeline["packed"], tmp_path / "v.onnx", version)
    proc = cli.run("validate", bad, "--checkpoint", tiny_pipeline["student"], "--limit", "2")
    cli.refused(proc, 2, f"version {version}", "only version 1")


def test_an_error_inside_an_onnxruntime_op_is_an_error_not_an_abort(tmp_path):
    """An input that only fails at run time (X has 5 features, the node says 32): the Python op catches it."""
    from onnx import TensorProto, helper, numpy_helper

    import bvit_edge.export.ops  # noqa: F401 - registers the schemas

    k, n = 32, 4
    inits = [
        numpy_helper.from_array(np.zeros(k, np.float32), "shift"),
        numpy_helper.from_array(np.array(1.0, np.float32), "alpha"),
        numpy_helper.from_array(np.zeros((n, 8), np.uint8), "w"),
        numpy_helper.from_array(np.ones(n, np.float32), "s"),
    ]
    node = helper.make_node(
        "BinaryLinear", ["x", "shift", "alpha", "w", "s"], ["y"], domain="bvit_edge", mode="signed", in_features=k
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("bvit_edge", 1)], ir_version=10
    )
    onnx.save(model, str(tmp_path / "bl.onnx"))
    code = (
        "import numpy as np, sys\n"
        "from bvit_edge.errors import DataError\n"
        "from bvit_edge.runtime.ort import ort_session\n"
        f"s = ort_session({str(tmp_path / 'bl.onnx')!r})\n"
        "assert (s.run(None, {'x': np.ones((1, 32), np.float32)})[0] == 32).all()\n"
        "try:\n    s.run(None, {'x': np.ones((1, 5), np.float32)})\n"
        "except DataError as e:\n    print(e); sys.exit(2)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "X has 5 features but in_features is 32" in proc.stdout


# ------------------------------------------------------------------------------------------------ item 4
def _edit_params(art: Path, edit) -> None:
    with np.load(art / "params.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(art / "params.npz", **edit(arrays))


def _largest(arrays: dict) -> str:
    return max(arrays, key=lambda k: arrays[k].size)


@pytest.mark.parametrize(
    "damage, words",
    [
        ("manifest bad json", ("manifest.json",)),
        ("manifest empty", ("manifest.json",)),
        ("manifest a list", ("manifest.json",)),
        ("params values x -3", ("params.npz", "recompile")),
        ("params wrong shape", ("params.npz",)),
        ("params wrong dtype", ("params.npz",)),
    ],
)
def test_a_damaged_artifact_is_refused_before_it_runs(cli, tiny_pipeline, tmp_path, damage, words):
    """The artifact's manifest schema, the sha256 of params.npz and its shapes and dtypes are checked at load."""
    art = _copy(tiny_pipeline["art"], tmp_path / "art")
    manifest = {"manifest bad json": "{not json", "manifest empty": "", "manifest a list": "[1, 2]"}.get(damage)
    if manifest is not None:
        (art / "manifest.json").write_text(manifest)
    elif damage == "params values x -3":
        _edit_params(art, lambda a: {k: (v * -3 if v.dtype.kind == "f" else v) for k, v in a.items()})
    elif damage == "params wrong shape":
        _edit_params(art, lambda a: {**a, _largest(a): a[_largest(a)].reshape(-1)[:-1]})
    else:
        _edit_params(art, lambda a: {**a, _largest(a): a[_largest(a)].astype(np.float64)})
    before = cli.snapshot(art)
    cli.refused(cli.run("run", art, "--image", tiny_pipeline["image"]), 2, *words)
    assert cli.snapshot(art) == before


# ------------------------------------------------------------------------------------------------ item 6
@pytest.mark.parametrize(
    "toml, words",
    [
        ('epochs = "three"\n', ("epochs must be an integer", '"three"', "(a string)")),
        ('lr = "fast"\n', ("lr must be a number", '"fast"')),
        ("epochs = 1.5\n", ("epochs must be an integer", "1.5", "(a float)")),
        ("epochs = true\n", ("epochs must be an integer", "true", "(a boolean)")),
        ("[method_options]\nbogus = 3\n", ("unknown method option", "bogus", "--method fp")),
        ('method = "gsb"\n[method_options]\nstage1_epochs = 0\n', ("stage1_epochs", "integer >= 1")),
        ("lr_decay = 0.1\n", ("unknown training option", "lr_decay")),
        ("epochs = [", ("not valid toml",)),
    ],
)
def test_bad_training_configs_name_the_key_and_what_it_must_be(cli, tmp_path, toml, words):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    out = tmp_path / "run"
    cli.refused(cli.run("train", "--config", cfg, "--out", out), 2, *words)
    assert not out.exists()


def test_epochs_zero_is_refused(cli, tmp_path):
    proc = cli.run("train", "--epochs", "0", "--out", tmp_path / "run")
    cli.refused(proc, 2, "epochs must be at least 1", "--epochs")
    assert not (tmp_path / "run").exists()


def test_json_result_has_null_where_nothing_was_measured(cli, tmp_path):
    """Stopped before the first evaluation: best / last top-1 are null, never NaN."""
    proc = cli.run("train", *TINY_TRAIN, "--max-steps", "1", "--out", tmp_path / "run", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert res["best_top1"] is None and res["last_top1"] is None and res["steps"] == 1


def test_ctrl_c_saves_the_run_and_exits_130(cli, tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "bvit_edge",
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
        str(out),
        "--json",
    ]
    proc = subprocess.Popen(args, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / "last" / "config.json").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    cli.refused(done, 130, "stopped by sigint", "--resume")
    assert _json_error(done)["exit_code"] == 130
    assert (out / "last" / "trainer_state.safetensors").is_file() and cli.leftovers(out) == []


def test_resume_needs_no_options_but_out(cli, tmp_path):
    """--resume continues with the run's own options: the model and image size are not asked again."""
    run = tmp_path / "run"
    first = cli.run("train", *TINY_TRAIN, "--max-steps", "1", "--out", run)
    assert first.returncode == 0, first.stderr
    proc = cli.run("train", "--out", run, "--resume", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"] == 2 and cli.leftovers(run) == []  # 20 images, batch 16: 2 steps


def test_resume_with_another_model_names_the_difference(cli, tiny_pipeline, tmp_path):
    run = _copy(tiny_pipeline["teacher"], tmp_path / "run")
    before = cli.snapshot(run)
    proc = cli.run("train", "--model", "deit_tiny_patch16_224", "--out", run, "--resume")
    cli.refused(proc, 2, "deit_tiny_patch16_224", "started with 'deit_test_patch4_16'")
    assert cli.snapshot(run) == before


def test_a_checkpoint_config_naming_another_model_is_a_clear_error(cli, tiny_pipeline, tmp_path):
    ck = _copy(tiny_pipeline["teacher"] / "best", tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"] = "deit_tiny_patch16_224"
    (ck / "config.json").write_text(json.dumps(cfg))
    cli.refused(
        cli.run("eval", ck), 2, "do not fit model 'deit_tiny_patch16_224'", "saved for model 'deit_test_patch4_16'"
    )


@pytest.mark.parametrize("option", ["--limit", "--top-k"])
def test_run_limit_zero_is_refused(cli, tiny_pipeline, option):
    proc = cli.run("run", tiny_pipeline["art"], "--data", "digits", option, "0")
    cli.refused(proc, 2, f"{option} 0", "at least 1" if option == "--top-k" else ">= 1")


@pytest.mark.parametrize("evil", ["absolute", "dotdot"])
def test_chaoyang_names_outside_the_data_root_are_refused(cli, tmp_path, evil):
    from PIL import Image

    root = tmp_path / "chaoyang"
    (root / "train").mkdir(parents=True)
    outside = tmp_path / "outside.png"
    Image.new("RGB", (16, 16)).save(outside)
    entries = []
    for label in range(4):
        Image.new("RGB", (16, 16), (label * 40, 0, 0)).save(root / "train" / f"{label}.png")
        entries.append({"name": f"train/{label}.png", "label": label})
    name = str(outside) if evil == "absolute" else "../outside.png"
    (root / "train.json").write_text(json.dumps([*entries, {"name": name, "label": 0}]))
    (root / "test.json").write_text(json.dumps(entries))
    proc = cli.run("train", "--data", "chaoyang", "--data-root", root, *TINY_TRAIN[:4], "--out", tmp_path / "run")
    cli.refused(proc, 2, "entry 4", name, "inside the data root")
    assert not (tmp_path / "run").exists()


def test_run_on_an_empty_folder_says_it_is_empty(cli, tiny_pipeline, tmp_path):
    (tmp_path / "empty").mkdir()
    cli.refused(cli.run("run", tiny_pipeline["art"], "--image", tmp_path / "empty"), 2, "holds no images")


# ------------------------------------------------------------------------------------------------ item 7
@pytest.mark.parametrize("case", ["missing image", "bad config", "unknown option", "tvm prints"])
def test_json_errors_are_one_object_on_stdout(cli, tiny_pipeline, tmp_path, case):
    if case == "missing image":
        proc = cli.run("run", tiny_pipeline["art"], "--image", tmp_path / "none.png", "--json")
    elif case == "bad config":
        (tmp_path / "c.toml").write_text("epochs = 1.5\n")
        proc = cli.run("train", "--config", tmp_path / "c.toml", "--out", tmp_path / "r", "--json")
    elif case == "unknown option":
        proc = cli.run("export", tiny_pipeline["student"], "--bogus", "--json")
    else:  # TVM's ONNX importer prints the failing operator on stdout
        bad = _swapped_wbits(tiny_pipeline["packed"], tmp_path / "bad.onnx")
        proc = cli.run("compile", bad, "--target", "host", "--out", tmp_path / "a", "--json")
    assert proc.returncode == 2
    obj = _json_error(proc)
    assert "Traceback" not in proc.stderr and obj["error"] in " ".join(proc.stderr.split())


# ------------------------------------------------------------------------------------------------ item 8
def test_the_rpc_relay_process_ends_with_the_process_that_started_it(stalled_board, tmp_path):
    """A command killed while it waits on a board leaves no relay process behind."""
    import psutil

    port, _ = stalled_board
    code = f"from bvit_edge.targets import rpc\nrpc.connect('127.0.0.1', {port}, timeout_s=5, call_timeout_s=600)\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        relays: list = []
        while time.monotonic() < deadline and not relays:
            relays = [c for c in psutil.Process(proc.pid).children() if "rpc_relay" in " ".join(c.cmdline())]
            time.sleep(0.2)
        assert relays, "no relay process was started"
        proc.kill()
        proc.wait(timeout=30)
        _gone, alive = psutil.wait_procs(relays, timeout=15)
        assert not alive, "the relay outlived the process that started it"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
