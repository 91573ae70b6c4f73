"""The emulated board's cache and process bookkeeping, without building anything: a missing, half-built
or stale image is refused with exit code 4 and the `--rebuild` fix; stop() signals only a PID that
still runs qemu on this board's rootfs; status() reads the records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bvit_edge.errors import ConfigError, ToolchainError
from bvit_edge.targets import board


def _fake_image(root, recipe):
    """The files a complete image has, empty, and a stamp with ``recipe``."""
    for rel in (
        "rootfs/usr/bin/python3.11",
        "site/tvm/__init__.py",
        "site/tvm_ffi/__init__.py",
        "site/numpy/__init__.py",
        "site/cloudpickle/__init__.py",
        "site/sitecustomize.py",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    (root / "stamp.json").write_text(json.dumps({"recipe": recipe}))


def test_a_complete_image_is_reported_built(tmp_path):
    _fake_image(tmp_path / "aarch64", board.RECIPES["aarch64"])
    info = board.status("aarch64", tmp_path)
    assert info.built and not info.running and info.root == (tmp_path / "aarch64").resolve()
    assert info.to_dict()["root"] == str(info.root)


def test_missing_image_says_how_to_build_it(tmp_path):
    with pytest.raises(ToolchainError, match="bvit-edge board emulate") as err:
        board.start("aarch64", tmp_path)
    assert err.value.exit_code == 4


def test_half_built_image_without_stamp_is_refused_with_the_rebuild_fix(tmp_path):
    _fake_image(tmp_path / "aarch64", board.RECIPES["aarch64"])
    (tmp_path / "aarch64" / "stamp.json").unlink()
    for call in (lambda: board.start("aarch64", tmp_path), lambda: board.build("aarch64", tmp_path)):
        with pytest.raises(ToolchainError, match="--rebuild") as err:
            call()
        assert err.value.exit_code == 4 and "half-built" in str(err.value)


def test_stale_recipe_is_refused(tmp_path):
    old = dict(board.RECIPES["aarch64"], recipe_version=0)
    _fake_image(tmp_path / "aarch64", old)
    with pytest.raises(ToolchainError, match="stale") as err:
        board.build("aarch64", tmp_path)
    assert "--rebuild" in str(err.value)
    assert not board.status("aarch64", tmp_path).built


def test_missing_files_are_named(tmp_path):
    _fake_image(tmp_path / "aarch64", board.RECIPES["aarch64"])
    (tmp_path / "aarch64" / "site/tvm/__init__.py").unlink()
    with pytest.raises(ToolchainError, match=r"site/tvm/__init__\.py"):
        board.start("aarch64", tmp_path)


def test_unknown_arch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="aarch64"):
        board.build("riscv64", tmp_path)


def test_stop_without_a_server_is_a_no_op(tmp_path):
    assert board.stop("aarch64", tmp_path) is False


def test_stop_never_signals_a_pid_that_is_not_our_qemu(tmp_path):
    """A recycled PID (here: a plain sleep) in server.json must not be killed."""
    root = tmp_path / "aarch64"
    _fake_image(root, board.RECIPES["aarch64"])
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (root / "server.json").write_text(json.dumps({"pid": proc.pid, "port": 1, "host": "127.0.0.1"}))
        assert not board.status("aarch64", tmp_path).running
        assert board.stop("aarch64", tmp_path) is False
        assert proc.poll() is None  # still alive
        assert not (root / "server.json").exists()  # the stale record is dropped
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("record", ['{"port": 9090}', "[1, 2]", '{"pid": "12", "port": 9090}', "{"])
def test_a_damaged_server_record_reads_as_no_server(tmp_path, record):
    """server.json without an integer pid (hand-edited, cut by a full disk) is no running server, not a crash."""
    root = tmp_path / "aarch64"
    _fake_image(root, board.RECIPES["aarch64"])
    (root / "server.json").write_text(record)
    info = board.status("aarch64", tmp_path)
    assert info.built and not info.running and info.pid is None and info.port is None
    assert board.stop("aarch64", tmp_path) is False


def test_default_cache_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("BVIT_EDGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert board.default_cache_dir() == tmp_path / "xdg" / "bvit-edge" / "board"
    monkeypatch.setenv("BVIT_EDGE_CACHE", str(tmp_path / "c"))
    assert board.default_cache_dir() == tmp_path / "c" / "board"
    monkeypatch.delenv("BVIT_EDGE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert board.default_cache_dir() == __import__("pathlib").Path(os.path.expanduser("~/.cache/bvit-edge/board"))
