"""The hardening pieces on their own, in-process: the output-folder rule, the pickle-free trainer state, the
RPC relay's stall detection, the static checks of bvit_edge nodes, the training-option table."""

from __future__ import annotations

import json
import math
import random
import socket
import struct
import threading
import time

import numpy as np
import pytest
import torch

from bvit_edge.errors import CheckpointError, ConfigError, DataError, UsageError
from bvit_edge.output_folder import MARKER, check_output_folder, claim_output_folder, output_folder, written_by


# ----------------------------------------------------------------------------------------------- output folders
def test_output_folder_rule_new_empty_own_foreign_file(tmp_path):
    assert check_output_folder(tmp_path / "absent", "compile") == "new"
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", "compile") == "new"
    with output_folder(tmp_path / "art", "compile") as tmp:
        (tmp / "lib.so").write_bytes(b"x")
    assert written_by(tmp_path / "art") == "compile" and check_output_folder(tmp_path / "art", "compile") == "own"
    with pytest.raises(UsageError, match=r"output of `bvit-edge compile`.*--overwrite"):
        check_output_folder(tmp_path / "art", "export")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    with pytest.raises(UsageError, match=r"did not write \(a.txt\).*--overwrite"):
        check_output_folder(tmp_path / "mine", "compile")
    assert check_output_folder(tmp_path / "mine", "compile", overwrite=True) == "replace"
    (tmp_path / "f").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="is a file"):
            check_output_folder(tmp_path / "f", "compile", overwrite=overwrite)


def test_overwrite_replaces_the_whole_folder_never_merges(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with output_folder(out, "export", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "new.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old copy left


def test_a_failed_command_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, "export") as tmp:
        (tmp / "a.onnx").write_text("1")
    before = (out / "a.onnx").read_text()
    with pytest.raises(RuntimeError), output_folder(out, "export") as tmp:
        (tmp / "a.onnx").write_text("2")
        raise RuntimeError("the export failed half-way")
    assert (out / "a.onnx").read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_input_inside_a_folder_that_would_be_replaced_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("x")
    with pytest.raises(UsageError, match="lies inside"):
        check_output_folder(out, "compile", overwrite=True, inputs=[out / "model.onnx"])


def test_claim_keeps_its_own_folder_and_replaces_a_foreign_one_whole(tmp_path):
    run = tmp_path / "run"
    assert claim_output_folder(run, "train") == "new" and written_by(run) == "train"
    (run / "log.jsonl").write_text("1\n")
    assert claim_output_folder(run, "train") == "own" and (run / "log.jsonl").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x").write_text("x")
    with pytest.raises(UsageError):
        claim_output_folder(mine, "demo")
    assert claim_output_folder(mine, "demo", overwrite=True) == "replace"
    assert sorted(p.name for p in mine.iterdir()) == [MARKER]


def test_a_symlinked_out_folder_is_written_where_it_points(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with output_folder(tmp_path / "link", "report") as tmp:
        (tmp / "report.md").write_text("r")
    assert (real / "report.md").is_file() and (tmp_path / "link").is_symlink()


# ----------------------------------------------------------------------------------------------- trainer state
def test_trainer_state_round_trips_exactly_without_pickle(tmp_path):
    from bvit_edge.training.trainer_state import load_trainer_state_file, save_trainer_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    random.seed(5)
    np.random.seed(7)
    np.random.normal()  # a cached gaussian in numpy's state
    state = {
        "optimizer": opt.state_dict(),
        "step": 3,
        "epoch": 1,
        "batch_in_epoch": 2,
        "best_top1": float("nan"),
        "history": [{"epoch": 1, "val_top1": 0.5, "lr": 1e-3}],
        "rng_torch": torch.get_rng_state(),
        "rng_numpy": np.random.get_state(),
        "rng_python": random.getstate(),
    }
    save_trainer_state(tmp_path / "s.safetensors", state)
    raw = (tmp_path / "s.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])  # safetensors: a JSON header, then bytes
    json.loads(header["__metadata__"]["bvit_edge.trainer_state"])  # the rest of the state: JSON, not a pickle
    back = load_trainer_state_file(tmp_path / "s.safetensors")
    assert isinstance(back["rng_python"], tuple) and back["rng_python"] == random.getstate()
    kind, keys, pos, has_gauss, cached = back["rng_numpy"]
    ref = np.random.get_state()
    assert kind == ref[0] and keys.dtype == ref[1].dtype and (keys == ref[1]).all()
    assert (pos, has_gauss, cached) == ref[2:]
    assert torch.equal(back["rng_torch"], torch.get_rng_state()) and math.isnan(back["best_top1"])
    assert list(back["optimizer"]["state"]) == list(opt.state_dict()["state"])  # int keys stay ints
    assert back["optimizer"]["param_groups"][0]["betas"] == opt.state_dict()["param_groups"][0]["betas"]
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])


@pytest.mark.parametrize("damage", ["truncate", "not json", "unknown form", "missing key", "wrong format"])
def test_a_damaged_trainer_state_is_a_checkpoint_error(tmp_path, damage):
    from safetensors.torch import save_file

    from bvit_edge.training.trainer_state import FORMAT, META_KEY, load_trainer_state_file, save_trainer_state

    path = tmp_path / "s.safetensors"
    good = {
        "optimizer": {},
        "step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "best_top1": -1.0,
        "history": [],
        "rng_torch": torch.get_rng_state(),
        "rng_numpy": np.random.get_state(),
        "rng_python": random.getstate(),
    }
    save_trainer_state(path, good)
    t = {"t0": torch.zeros(1)}
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "not json":
        save_file(t, str(path), metadata={"format": FORMAT, META_KEY: "{"})
    elif damage == "unknown form":
        save_file(t, str(path), metadata={"format": FORMAT, META_KEY: json.dumps({"$pickle": "x"})})
    elif damage == "missing key":
        save_file(t, str(path), metadata={"format": FORMAT, META_KEY: json.dumps({"step": 1})})
    else:
        save_file(t, str(path), metadata={"format": "something else"})
    with pytest.raises(CheckpointError):
        load_trainer_state_file(path)


# ----------------------------------------------------------------------------------------------- RPC relay
def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    return a, b


def _handshake_reply() -> bytes:
    key = b"server:x"
    return struct.pack("<ii", 0xFF271, len(key)) + key


def _run_pump(timeout_s: float, script) -> tuple[bool, float]:
    """pump() between a fake client and a fake board driven by ``script(client_end, board_end)``."""
    from bvit_edge.targets.rpc_relay import pump

    client_in, client_out = _pair()  # the relay's client socket <-> the test's "TVM client" end
    board_in, board_out = _pair()  # the relay's board socket <-> the test's "board" end
    result: dict = {}
    t0 = time.monotonic()
    th = threading.Thread(target=lambda: result.update(stalled=pump(client_in, board_in, timeout_s)))
    th.start()
    try:
        script(client_out, board_out)
        th.join(timeout=30)
    finally:
        for s in (client_out, board_out):
            s.close()
        th.join(timeout=30)
    return result.get("stalled"), time.monotonic() - t0


def test_relay_times_out_a_request_the_board_never_answers():
    def script(client, board):
        board.sendall(_handshake_reply())
        client.recv(100)
        client.sendall(struct.pack("<Q", 4) + b"call")  # a request; the board stays silent
        time.sleep(2.5)

    stalled, secs = _run_pump(1.0, script)
    assert stalled is True and secs < 5


def test_relay_times_out_a_reply_that_stops_half_way():
    def script(client, board):
        board.sendall(_handshake_reply())
        client.sendall(struct.pack("<Q", 4) + b"call")
        board.recv(100)
        board.sendall(struct.pack("<Q", 100) + b"partial")  # 7 of 100 bytes, then nothing
        time.sleep(2.5)

    assert _run_pump(1.0, script)[0] is True


def test_relay_never_times_out_an_idle_session_nor_a_slow_but_moving_reply():
    def script(client, board):
        board.sendall(_handshake_reply())
        time.sleep(2.0)  # idle: nothing owed
        client.sendall(struct.pack("<Q", 4) + b"call")
        board.recv(100)
        board.sendall(struct.pack("<Q", 6))
        for ch in b"answer":  # one byte every 0.4 s: slower than nothing but always moving
            time.sleep(0.4)
            board.sendall(bytes([ch]))
        time.sleep(0.3)
        assert client.recv(1000).endswith(b"answer")
        client.shutdown(socket.SHUT_RDWR)  # the session ends normally

    stalled, _ = _run_pump(1.0, script)
    assert stalled is False


# ----------------------------------------------------------------------------------------------- ONNX checks
def _binary_linear_model(w_dims, mode="signed", k=32, version=1):
    from onnx import TensorProto, helper, numpy_helper

    import bvit_edge.export.ops  # noqa: F401 - registers the schemas

    inits = [
        numpy_helper.from_array(np.zeros(k, np.float32), "shift"),
        numpy_helper.from_array(np.array(1.0, np.float32), "alpha"),
        numpy_helper.from_array(np.zeros(w_dims, np.uint8), "w"),
        numpy_helper.from_array(np.ones(w_dims[0], np.float32), "s"),
    ]
    node = helper.make_node(
        "BinaryLinear", ["x", "shift", "alpha", "w", "s"], ["y"], domain="bvit_edge", mode=mode, in_features=k
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w_dims[0]])],
        initializer=inits,
    )
    imports = [helper.make_opsetid("", 18), helper.make_opsetid("bvit_edge", version)]
    return helper.make_model(graph, opset_imports=imports, ir_version=10)


@pytest.mark.parametrize(
    "w_dims, mode, version, words",
    [
        ((8, 4), "signed", 1, "W_bits has shape [8, 4]"),
        ((4, 8), "ternary", 1, "mode is 'ternary'"),
        ((4, 8), "signed", 2, "version 2"),
    ],
)
def test_static_checks_name_the_node_and_the_problem(w_dims, mode, version, words):
    from bvit_edge.export.ops.checks import check_bvit_nodes

    check_bvit_nodes(_binary_linear_model((4, 8)))  # the well-formed model passes
    with pytest.raises(DataError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_bvit_nodes(_binary_linear_model(w_dims, mode=mode, version=version))


# ----------------------------------------------------------------------------------------------- options table
def test_every_training_option_has_a_checked_type():
    """A new TrainConfig field is validated by its annotation alone (one line); a value of the wrong type for
    any field is refused naming it."""
    from dataclasses import fields

    from bvit_edge.training.config import TrainConfig, check_options

    for f in fields(TrainConfig):
        bad = {"x": "text"} if f.name != "method_options" else "text"
        if f.type in ("str", "str | None"):
            bad = 12
        with pytest.raises(ConfigError, match=f.name):
            check_options({f.name: bad}, lambda key: "in a test")
