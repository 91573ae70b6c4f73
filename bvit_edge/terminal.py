"""Human output that stays whole when it is not read on a terminal.

rich lays a table out for the terminal's width, and for a pipe, a file or a CI log it assumes 80 columns:
a wider table gets its cells cut ("rpi3-arm…"), so ``bvit-edge targets list | grep rpi3-armv7`` found
nothing. Here:

- :func:`console` is the rich console every command prints its human output with (stderr by default). On a
  terminal it behaves as usual. Elsewhere a table (or anything rich can measure) is printed at its natural
  width, however wide, and colour codes are left out, so nothing is cut; plain lines are not wrapped.
- :func:`print_rows` prints a listing (the rows of ``targets list``): a rich table on a terminal; on a pipe
  or file, tab-separated lines with a header line, for ``grep``, ``cut`` and ``awk``.

Imports rich on first use only (``--help`` stays instant).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any

#: Width for plain text on a non-terminal: wide enough that log lines are never wrapped in practice.
PIPE_WIDTH = 200


def is_terminal(stream: IO[str] | None) -> bool:
    """True when ``stream`` is an interactive terminal (not a pipe, a file, or a test's capture)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def console(stderr: bool = True, file: IO[str] | None = None) -> Any:
    """A rich ``Console`` on stderr (``stderr=False``: stdout; or ``file``) that never cuts a table when its
    stream is not a terminal (module docstring)."""
    return _console_class()(stderr=stderr, file=file)


def _console_class() -> type:
    from rich.console import Console
    from rich.measure import Measurement

    class WholeConsole(Console):
        """rich's Console, printing measurable renderables at their natural width off a terminal."""

        def __init__(self, stderr: bool, file: IO[str] | None) -> None:
            stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
            if is_terminal(stream):
                super().__init__(stderr=stderr, file=file)
            else:
                super().__init__(stderr=stderr, file=file, width=PIPE_WIDTH, soft_wrap=True)

        def print(self, *objects: Any, **kwargs: Any) -> None:
            natural = 0
            if not self.is_terminal and "width" not in kwargs and len(objects) == 1 and not isinstance(objects[0], str):
                try:
                    natural = Measurement.get(self, self.options.update(max_width=100_000), objects[0]).maximum
                except Exception:  # noqa: BLE001 - not measurable: print it as rich would
                    natural = 0
            if natural <= self.width:
                super().print(*objects, **kwargs)
                return
            saved = self.width  # rich never prints wider than the console: widen it for this one renderable
            self.width = natural
            try:
                super().print(*objects, **kwargs)
            finally:
                self.width = saved

    return WholeConsole


def _tsv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def print_rows(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None, file: IO[str] | None = None
) -> None:
    """A listing on stdout (or ``file``): a rich table titled ``title`` on a terminal, else a header line and
    one tab-separated line per row (tabs and newlines inside a cell become spaces; no title)."""
    out = file if file is not None else sys.stdout
    if not is_terminal(out):
        out.write("\t".join(_tsv_cell(c) for c in columns) + "\n")
        for row in rows:
            out.write("\t".join(_tsv_cell(c) for c in row) + "\n")
        out.flush()
        return
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_tsv_cell(c) for c in row))
    console(stderr=False, file=file).print(table)


__all__ = ["PIPE_WIDTH", "console", "is_terminal", "print_rows"]
