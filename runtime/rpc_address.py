"""The address of a board's RPC server (or of a tracker): ``"HOST:PORT"`` or a ``(host, port)`` pair, read by
one rule for every option and argument that takes one (``--rpc``, ``--tracker``, ``bench(rpc=...)``).

The host is everything before the last colon (so ``"::1:9090"`` is host ``::1``) and must not be empty; the
port is a whole number from 1 to 65535.
"""

from __future__ import annotations

from typing import Any

from bvit_edge.errors import UsageError

__all__ = ["format_address", "parse_address"]


def parse_address(value: Any, what: str = "--rpc") -> tuple[str, int]:
    """``"HOST:PORT"`` or ``(host, port)`` -> ``(host, port)``; else a UsageError naming ``what`` (the option)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        host, port = str(value[0]), str(value[1])
    elif isinstance(value, str):
        host, _, port = value.rpartition(":")
    else:
        host, port = "", ""
    port = port.strip()
    if not host.strip() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(
            f"{what} must be HOST:PORT (a host name or address, a colon, a port from 1 to 65535), got {value!r}."
        )
    return host.strip(), int(port)


def format_address(host: str, port: int) -> str:
    """``"host:port"``, the form :func:`parse_address` reads back."""
    return f"{host}:{port}"
