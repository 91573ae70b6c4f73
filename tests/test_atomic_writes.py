"""Atomic writes (bvit_edge.atomic): a killed writer's temporary file or folder is removed by the next
atomic write of the same target; live writers' and other targets' temporaries are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bvit_edge.atomic import atomic_dir, sweep_stale, write_text


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)  # that process has exited


def test_a_killed_writers_leftovers_go_with_the_next_write(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale_dir = tmp_path / f".last.{dead}.abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    stale_file = tmp_path / f".log.jsonl.{dead}.x1.tmp"
    stale_file.write_text("half")
    live = tmp_path / f".last.{os.getppid()}.zz.tmp"  # a running process (our parent) may still be writing
    live.mkdir()
    other = tmp_path / f".best.{dead}.q.tmp"  # another target: swept only when that target is written

    other.mkdir()
    with atomic_dir(tmp_path / "last") as tmp:
        (tmp / "model.safetensors").write_bytes(b"full")
    assert not stale_dir.exists() and live.is_dir() and other.is_dir()
    assert (tmp_path / "last" / "model.safetensors").read_bytes() == b"full"
    write_text(tmp_path / "log.jsonl", "ok\n")
    assert not stale_file.exists() and (tmp_path / "log.jsonl").read_text() == "ok\n"
    assert sweep_stale(tmp_path / "best") == [other] and not other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last", "log.jsonl", live.name])


def test_temporary_names_carry_the_writers_pid(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "art") as tmp:
        assert tmp.name.startswith(f".art.{os.getpid()}.") and tmp.name.endswith(".tmp")


def test_a_previous_version_left_by_a_kill_between_renames_is_kept_until_a_new_one_exists(tmp_path: Path) -> None:
    dead = _dead_pid()
    old = tmp_path / f".last.old-{dead}"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"previous")
    assert sweep_stale(tmp_path / "last") == [] and old.is_dir()  # "last" missing: the only copy
    with atomic_dir(tmp_path / "last") as tmp:
        (tmp / "model.safetensors").write_bytes(b"new")
    assert sweep_stale(tmp_path / "last") == [old] and not old.exists()
