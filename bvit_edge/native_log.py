"""Native libraries' log lines (TVM's C++ warnings) kept off the user's terminal, in a log file.

TVM 0.27 writes the LOG(INFO) / LOG(WARNING) lines of its C++ code straight to ``std::cerr``
(``tvm/runtime/logging.h``: ``LogMessage``'s destructor), i.e. to file descriptor 2. There is no Python
logger, callback or level to turn them down (``TVM_LOG_DEBUG`` only switches the DLOG/VLOG debug lines on).
Lowering one ViT prints dozens of "Fast mode segfaults when there are out-of-bounds indices ..." lines
(topi's ``take`` in fast mode, which the Gather lowering uses) that tell a user nothing.

:func:`native_stderr_to_log` therefore points descriptor 2 at a log file for the duration of a command,
while Python's ``sys.stderr`` (rich tables, progress, error messages) keeps writing to the original
stderr, and so does ``faulthandler``, so a crash inside native code still shows a traceback. Child
processes (the linker, TVM's tuning workers) inherit the log file. Afterwards an empty log is removed; a
non-empty one is named in one line. ``bvit-edge --verbose COMMAND`` (or ``BVIT_EDGE_VERBOSE=1``) skips all
this and shows the lines as they come.

Log folder: ``$BVIT_EDGE_LOG_DIR``, else ``$XDG_STATE_HOME/bvit-edge/logs``, else
``~/.local/state/bvit-edge/logs``. The newest :data:`KEEP_LOGS` logs bvit-edge wrote there are kept; older
ones of its own naming (``<command>-<UTC time>-<pid>.log``) are removed, nothing else.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

#: How many native logs to keep in the log folder (the newest).
KEEP_LOGS = 50
_OUR_LOG = re.compile(r"[A-Za-z0-9_-]+-\d{8}T\d{6}Z-\d+\.log")


def log_dir() -> Path:
    """The folder native logs go to (module docstring)."""
    if os.environ.get("BVIT_EDGE_LOG_DIR"):
        return Path(os.environ["BVIT_EDGE_LOG_DIR"]).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "bvit-edge" / "logs"


def default_log_path(command: str) -> Path:
    """``<log_dir>/<command>-<UTC time>-<pid>.log``: one file per command run."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in command) or "bvit-edge"
    return log_dir() / f"{safe}-{stamp}-{os.getpid()}.log"


def prune_logs(folder: Path, keep: int = KEEP_LOGS) -> None:
    """Remove all but the ``keep`` newest logs of bvit-edge's naming in ``folder`` (other files untouched)."""
    try:
        ours = [p for p in folder.iterdir() if p.is_file() and _OUR_LOG.fullmatch(p.name)]
        for old in sorted(ours, key=lambda p: p.stat().st_mtime, reverse=True)[keep:]:
            old.unlink()
    except OSError:
        pass


def _writes_to_fd2(stream: object) -> bool:
    fileno = getattr(stream, "fileno", None)
    try:
        return fileno is not None and fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))


@contextlib.contextmanager
def native_stderr_to_log(
    path: str | os.PathLike[str] | None = None, command: str = "bvit-edge", note: Callable[[str], None] | None = None
) -> Iterator[Path | None]:
    """Within the block, what native code writes to descriptor 2 goes to ``path`` (default:
    :func:`default_log_path`); Python's ``sys.stderr`` still reaches the original stderr. Yields the log path,
    or None when no log file can be opened (then nothing is redirected). On exit an empty log is removed and
    ``note`` (if given) is told where a non-empty one is."""
    log = Path(path) if path is not None else default_log_path(command)
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        yield None
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved_fd = os.dup(2)
    python_stderr = sys.stderr
    swapped = _writes_to_fd2(python_stderr)
    faults_were_on = faulthandler.is_enabled()
    if swapped:  # Python's own stderr keeps going to the terminal through a copy of the original descriptor
        encoding = getattr(python_stderr, "encoding", None) or "utf-8"
        sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=encoding, errors="backslashreplace")
        faulthandler.enable(file=sys.stderr)  # a crash in native code still shows where, on the terminal
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        yield log
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved_fd, 2)
        if swapped:
            ours, sys.stderr = sys.stderr, python_stderr
            if faults_were_on:
                faulthandler.enable(file=python_stderr)
            else:
                faulthandler.disable()
            ours.close()
        os.close(saved_fd)
        try:
            lines = _count_lines(log) if log.stat().st_size else 0
            if not lines and not log.stat().st_size:
                log.unlink()  # (no return here: it would swallow an exception of the block)
            else:
                if path is None:
                    prune_logs(log.parent, KEEP_LOGS)
                if note is not None:
                    note(
                        f"{lines} line{'s' if lines != 1 else ''} of native (TVM) log went to {log}; "
                        "`bvit-edge --verbose ...` shows them instead."
                    )
        except OSError:
            pass


def verbose_from_env() -> bool:
    """``BVIT_EDGE_VERBOSE`` set to 1/true/yes: show native log lines (as ``--verbose``)."""
    return os.environ.get("BVIT_EDGE_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


__all__ = ["KEEP_LOGS", "default_log_path", "log_dir", "native_stderr_to_log", "prune_logs", "verbose_from_env"]
