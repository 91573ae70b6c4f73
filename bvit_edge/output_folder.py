"""One rule for every ``--out`` folder: never delete or merge into what the user put there.

A command writes into ``--out`` only when that folder

* does not exist, or is empty, or
* was written by the same bvit-edge command before: a marker file :data:`MARKER` in it says which command
  (``{"written_by": "compile", "bvit_edge": "0.1.0", "created_utc": "..."}``).

Anything else (a folder holding other files, another command's output) is refused with a
:class:`~bvit_edge.errors.UsageError` (exit 2) that names ``--overwrite``; with ``overwrite=True`` the folder
is replaced as a whole, atomically, never merged. A regular file (or anything else that is not a folder) at
``--out`` is always an error: it is never replaced.

Two ways to write:

* :func:`output_folder` for commands that produce their output in one go (compile, export, report, convert):
  the output is built in a temporary folder next to ``--out`` and renamed into place at the end
  (bvit_edge.atomic.atomic_dir), so a failure or a kill leaves the previous content untouched.
* :func:`claim_output_folder` for commands that write into ``--out`` over a long time and can resume (train,
  demo): the folder is checked, (re)created with its marker, and written step by step.

Call :func:`check_output_folder` first, before any long work, so a refusal comes at once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from bvit_edge.atomic import atomic_dir, sweep_stale, write_json
from bvit_edge.errors import UsageError

MARKER = ".bvit-edge-output.json"

#: what :func:`check_output_folder` found: absent or empty, written by this command before, or to be replaced
State = Literal["new", "own", "replace"]


def _written_by(folder: Path) -> str | None:
    """The command the marker of ``folder`` names, or None (no marker, or not one of ours)."""
    try:
        doc = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = doc.get("written_by") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def _listing(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _resolve(path: str | os.PathLike[str]) -> Path:
    """An absolute path; a symbolic link to a folder stands for that folder."""
    p = Path(path).expanduser()
    if p.is_symlink() and p.resolve().is_dir():
        return p.resolve()
    return p.absolute()


def check_output_folder(
    path: str | os.PathLike[str],
    command: str,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    option: str = "--out",
) -> State:
    """What writing ``command``'s output to ``path`` will do, or a UsageError (exit 2) when it must not.

    ``inputs``: files or folders the command reads; one inside an existing ``path`` that would be replaced
    is refused (replacing the folder would delete it)."""
    p = _resolve(path)
    if p.exists() and not p.is_dir():
        kind = "a file" if p.is_file() else "not a folder"
        raise UsageError(
            f"{option} {path} is {kind}: {command} writes a folder there. Give the path of a folder "
            "(new or empty); the file is left as it is."
        )
    if not p.exists():
        return "new"
    if not any(p.iterdir()):
        return "new"
    owner = _written_by(p)
    if owner == command:
        state: State = "own"
    elif overwrite:
        state = "replace"
    else:
        what = f"the output of `bvit-edge {owner}`" if owner else f"files bvit-edge did not write ({_listing(p)})"
        raise UsageError(
            f"{option} {path} already holds {what}. {command} writes only into a new or empty folder, "
            f"or one it wrote itself. Choose another folder, or pass --overwrite to replace the whole "
            "folder (its current content is deleted)."
        )
    for item in inputs:
        if item is None:
            continue
        q = Path(item).expanduser().absolute()
        if q == p or p in q.parents:
            raise UsageError(
                f"{item} lies inside {option} {path}, which {command} replaces as a whole: write the "
                "output to another folder."
            )
    return state


def _marker(command: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import bvit_edge

    return {
        "written_by": command,
        "bvit_edge": bvit_edge.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


@contextlib.contextmanager
def output_folder(
    path: str | os.PathLike[str],
    command: str,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    option: str = "--out",
) -> Iterator[Path]:
    """Yield an empty temporary folder to build ``command``'s output in; on success it replaces ``path``
    as a whole (with the marker), atomically. Refused as :func:`check_output_folder` says."""
    check_output_folder(path, command, overwrite, inputs, option)
    with atomic_dir(_resolve(path)) as tmp:
        yield tmp
        write_json(tmp / MARKER, _marker(command))


def claim_output_folder(
    path: str | os.PathLike[str],
    command: str,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    option: str = "--out",
    keep_own: bool = True,
    extra: dict[str, Any] | None = None,
) -> State:
    """Make ``path`` the folder ``command`` writes into step by step; returns what it was.

    ``"new"``: created (or was empty). ``"own"``: written by ``command`` before, kept as it is when
    ``keep_own`` (to resume), else replaced like a foreign folder under ``overwrite``. ``"replace"``: the old
    folder is moved aside in one rename, a fresh one made, and the old one deleted: never merged. ``extra``:
    more fields for the marker (e.g. the configuration a run was started with)."""
    state = check_output_folder(path, command, overwrite, inputs, option)
    p = _resolve(path)
    if state == "own" and keep_own:
        return state
    if p.exists() and any(p.iterdir()):
        old = p.with_name(f".{p.name}.old-{os.getpid()}")
        os.replace(p, old)
        p.mkdir()
        write_json(p / MARKER, _marker(command, extra))
        shutil.rmtree(old, ignore_errors=True)
        return "replace" if state == "replace" else state
    p.mkdir(parents=True, exist_ok=True)
    sweep_stale(p)
    write_json(p / MARKER, _marker(command, extra))
    return state


def write_marker(folder: str | os.PathLike[str], command: str, extra: dict[str, Any] | None = None) -> Path:
    """Mark ``folder`` (e.g. a temporary folder about to be renamed into place) as written by ``command``."""
    return write_json(Path(folder) / MARKER, _marker(command, extra))


def written_by(path: str | os.PathLike[str]) -> str | None:
    """The bvit-edge command that wrote the folder ``path`` (from its marker), or None."""
    return _written_by(_resolve(path))


__all__ = ["MARKER", "check_output_folder", "claim_output_folder", "output_folder", "write_marker", "written_by"]
