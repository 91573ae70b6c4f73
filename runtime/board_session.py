"""The board a benchmark runs on over RPC: its session (handed in, or opened from ``"HOST:PORT"`` /
``(host, port)``), whether the address is bvit-edge's emulated (qemu) board, and its thread pool.
"""

from __future__ import annotations

from typing import Any

from bvit_edge.errors import BvitEdgeError, ToolchainError
from bvit_edge.runtime.rpc_address import format_address, parse_address

__all__ = ["is_emulated_board", "rpc_session", "set_remote_threads"]


def rpc_session(rpc: Any, timeout_s: float) -> tuple[Any, str | None]:
    """(session, "host:port"), or (``rpc``, None) when ``rpc`` is already a session."""
    if hasattr(rpc, "upload") and hasattr(rpc, "load_module"):
        return rpc, None
    host, port = parse_address(rpc, "rpc")
    from bvit_edge.targets import rpc as rpc_client

    return rpc_client.connect(host, port, timeout_s=timeout_s), format_address(host, port)


def is_emulated_board(address: str | None, arch: str | None) -> bool:
    """True when ``address`` is where bvit-edge's emulated (qemu) board for ``arch`` is serving."""
    if not address or not arch:
        return False
    from bvit_edge.targets import board

    try:
        info = board.status(arch)
    except BvitEdgeError:  # no emulated board for this architecture
        return False
    host, port = parse_address(address, "address")
    local = {"127.0.0.1", "localhost", "::1", info.host}
    return bool(info.running and info.port is not None and port == int(info.port) and host in local)


def set_remote_threads(session: Any, threads: int | None) -> None:
    """Configure the board's TVM thread pool to ``threads`` (nothing for None)."""
    if threads:
        try:
            session.get_function("runtime.config_threadpool")(0, int(threads))
        except Exception as exc:  # noqa: BLE001 - a TVM error from the board
            raise ToolchainError(f"Setting {threads} threads on the board failed: {exc}".splitlines()[0]) from None
