"""Which code produced a result: the git revision of the checkout bvit_edge runs from.

:func:`git_revision` is what benchmark and demo reports record as ``environment.git_revision``. The package
must be imported from a git checkout of bvit-edge (an editable install, ``make install``, or the source tree
itself); an installed wheel has no revision and says "unknown". It asks ``git`` first (allowing the
checkout even when another user owns it: reading a revision runs none of the repository's hooks or
filters), and reads ``.git`` directly when git is not installed, worktrees and packed refs included.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

UNKNOWN = "unknown"
_HASH = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _checkout_root(pkg: Path) -> Path | None:
    """The folder above ``pkg`` holding ``.git`` (a folder, or a file in a worktree), when ``pkg`` is its
    ``bvit_edge`` package; else None (e.g. site-packages inside some other repository)."""
    top = pkg.parent
    if (top / ".git").exists() and pkg == top / "bvit_edge":
        return top
    return None


def _git_dir(top: Path) -> Path | None:
    dot = top / ".git"
    if dot.is_dir():
        return dot
    try:
        text = dot.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    path = Path(text[len("gitdir:") :].strip())
    return path if path.is_absolute() else (top / path).resolve()


def _read_ref(git_dir: Path, ref: str) -> str | None:
    """A ref's hash from loose refs or packed-refs; a worktree's refs live in its common dir."""
    dirs = [git_dir]
    common = git_dir / "commondir"
    if common.is_file():
        c = Path(common.read_text(encoding="utf-8").strip())
        dirs.append(c if c.is_absolute() else (git_dir / c).resolve())
    for d in dirs:
        loose = d / ref
        if loose.is_file():
            value = loose.read_text(encoding="utf-8").strip()
            if _HASH.fullmatch(value):
                return value
        packed = d / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and _HASH.fullmatch(parts[0]):
                    return parts[0]
    return None


def read_head(top: Path) -> str | None:
    """HEAD's commit of the checkout at ``top`` read from its files, without git (None if unreadable)."""
    git_dir = _git_dir(top)
    if git_dir is None:
        return None
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
        if _HASH.fullmatch(head):
            return head
        if head.startswith("ref:"):
            return _read_ref(git_dir, head[len("ref:") :].strip())
    except OSError:
        return None
    return None


def git_revision(pkg: Path | None = None) -> str:
    """HEAD's commit hash of the checkout the package ``pkg`` (default: the imported bvit_edge) lives in, or
    "unknown" outside a bvit-edge checkout."""
    if pkg is None:
        import bvit_edge

        pkg = Path(bvit_edge.__file__).resolve().parent
    top = _checkout_root(Path(pkg).resolve())
    if top is None:
        return UNKNOWN
    try:
        rev = subprocess.run(
            ["git", "-c", f"safe.directory={top}", "-C", str(top), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if _HASH.fullmatch(rev):
            return rev
    except (OSError, subprocess.SubprocessError):
        pass
    return read_head(top) or UNKNOWN


__all__ = ["UNKNOWN", "git_revision", "read_head"]
