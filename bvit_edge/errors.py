"""Errors a user can act on.

Every error bvit-edge raises on purpose is a :class:`BvitEdgeError`: one clear paragraph naming the
problem and what to do, with the process exit code the CLI uses (docs/architecture.md, "Conventions"):

0 ok, 2 usage / bad input, 3 validation failure, 4 toolchain / RPC error, 5 missing optional dependency,
130 interrupted (Ctrl-C).
The CLI prints ``str(error)`` and exits with ``error.exit_code``; it never shows a traceback for these.
"""

from __future__ import annotations


class BvitEdgeError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI exits with.

    ``hint`` (optional): what to do about it, when the message keeps it apart; ``--json`` reports it as
    ``"hint"`` (without one, the message's sentences after the first are the hint)."""

    exit_code: int = 2

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint


class UsageError(BvitEdgeError):
    """Bad arguments or bad input files (exit code 2)."""

    exit_code = 2


class DataError(UsageError):
    """A data set on disk is missing, malformed or inconsistent (exit code 2). Names the file."""


class ConfigError(UsageError):
    """A model / training / target configuration does not fit (exit code 2)."""


class CheckpointError(UsageError):
    """A checkpoint is missing, corrupt or does not match the model (exit code 2)."""


class ValidationError(BvitEdgeError):
    """An exported or compiled model disagrees with its reference beyond tolerance (exit code 3)."""

    exit_code = 3


class ToolchainError(BvitEdgeError):
    """A compiler, cross toolchain, TVM or RPC step failed (exit code 4)."""

    exit_code = 4


class MissingDependencyError(BvitEdgeError):
    """An optional dependency is not installed (exit code 5)."""

    exit_code = 5


class Interrupted(BvitEdgeError):
    """The user stopped a command (Ctrl-C / SIGTERM) after it saved what it could (exit code 130)."""

    exit_code = 130
