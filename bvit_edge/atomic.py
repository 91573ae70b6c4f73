"""Atomic file writing: write to a temporary file in the same folder, fsync, then rename.

A reader (or a killed process) therefore sees either the old file or the complete new one, never a
half-written file. Use these for every artifact and checkpoint bvit-edge writes.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _tmp_prefix(path: Path) -> str:
    """Temporary names are ``.NAME.PID.<random>[suffix].tmp``: the writer's PID lets a later writer of the
    same target remove what a killed one left (:func:`sweep_stale`)."""
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale(path: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed writer of ``path`` left next to it: temporaries ``.NAME.PID.*.tmp`` and, once
    ``path`` exists, a previous version ``.NAME.old-PID``, whose PID is no longer running; the paths
    removed. A kill cannot clean up after itself; the next atomic write of the same target does."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    head = f".{path.name}."
    for cand in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid_text = cand.name[len(head) :].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _alive(int(pid_text)):
            continue
        if cand.is_dir() and not cand.is_symlink():
            shutil.rmtree(cand, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                cand.unlink()
        removed.append(cand)
    # a kill between atomic_dir's two renames leaves the previous version as ".NAME.old-PID"; once the new
    # ``path`` is in place it is garbage (while ``path`` is missing it is the only copy: left for recovery)
    if path.exists():
        for old in path.parent.glob(f".{glob.escape(path.name)}.old-*"):
            pid_text = old.name.rsplit("old-", 1)[1]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and not _alive(int(pid_text)):
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
                removed.append(old)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. Leftovers of killed
    earlier writers of ``path`` are removed first (:func:`sweep_stale`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON (sorted keys off, trailing newline)."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None], suffix: str = "") -> Path:
    """Atomically create ``path`` by calling ``writer(tmp_path)`` (e.g. ``safetensors.save_file``)."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` as a whole.

    On an exception the temporary folder is removed; an existing ``path`` is untouched. Used for
    artifact folders (lib.so + params.npz + manifest.json) so no half-written folder is ever left; what a
    killed earlier writer of ``path`` left is removed first (:func:`sweep_stale`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
