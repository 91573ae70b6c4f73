"""Reach a board over TVM RPC, failing fast and clearly.

- :func:`connect` / :func:`connect_tracker`: probe the port first with a socket timeout (TCP connect
  plus the first step of TVM's handshake), so an unreachable host, a closed port or a non-TVM
  listener is a :class:`~bvit_edge.errors.ToolchainError` (exit 4) in seconds instead of a hang
  (TVM's own connect has no timeout); tracker requests are bounded too.
- Every call of a session is bounded as well: the session runs through a relay process
  (:mod:`bvit_edge.targets.rpc_relay`), so a board that stops answering after the handshake makes the
  blocked call fail after ``call_timeout_s`` (:class:`StalledBoard`, exit 4; :func:`stalled` gives the
  message to whoever catches TVM's error) and its server is freed for the next session. The per-call
  timeout comes from the argument, else :func:`call_timeout`'s context (the CLI's ``--rpc-timeout``), else
  the target preset's ``rpc_timeout_s``.
- :func:`remote_arch` / :func:`check_arch`: ask the board what it is (the LLVM triple its TVM was
  built for, ``target.llvm_get_system_triple``, a global function every full TVM build registers) and
  refuse an artifact built for another architecture before uploading it.
- :func:`elf_arch`: the architecture a shared library was built for, from its ELF header.
- :func:`upload_and_load`: upload ``lib.so``, load it remotely, and turn the loader's "wrong ELF
  class" style failures into an architecture-mismatch error even on a runtime-only board.

Host side protocol (TVM's): ``rpc.connect(host, port)`` -> ``upload`` -> ``load_module`` ->
``time_evaluator``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bvit_edge.errors import MissingDependencyError, ToolchainError
from bvit_edge.targets.registry import DEFAULT_RPC_TIMEOUT_S
from bvit_edge.targets.rpc_relay import RelayProcess, stalls

__all__ = [
    "DEFAULT_RPC_TIMEOUT_S",
    "StalledBoard",
    "call_timeout",
    "check_arch",
    "connect",
    "connect_tracker",
    "elf_arch",
    "probe",
    "remote_arch",
    "stall_message",
    "stalled",
    "upload_and_load",
]


class StalledBoard(ToolchainError):
    """A board completed the RPC handshake, then did not answer a call within the per-call timeout."""


def stall_message(host: str, port: int, timeout_s: float, during: str = "an RPC call") -> str:
    return (
        f"The board at {host}:{port} stopped answering: {during} got no reply within {timeout_s:g} s. Check "
        "that the board is up and reachable, that its RPC server (`python -m tvm.exec.rpc_server`) still runs "
        "and is not out of memory or swapping (a model too big for the board), and restart that server if it "
        "hangs; for a slow board or a large model raise the per-call timeout (--rpc-timeout, or rpc_timeout_s "
        "in the target preset). bvit-edge closed its connection, so the server accepts a new session."
    )


def stalled() -> str | None:
    """The message for the last board that stopped answering in this process (None: none did). Code that
    catches an error from TVM's RPC client asks this to report the stall instead of TVM's text."""
    found = stalls()
    return stall_message(*found[-1]) if found else None


_CALL_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar("bvit_edge_rpc_call_timeout", default=None)


@contextlib.contextmanager
def call_timeout(seconds: float | None) -> Iterator[None]:
    """Within this block, sessions :func:`connect` opens without an explicit ``call_timeout_s`` bound each
    call to ``seconds`` (None: leave the default)."""
    if seconds is not None and not seconds > 0:
        from bvit_edge.errors import UsageError

        raise UsageError(f"--rpc-timeout must be a positive number of seconds, got {seconds:g}.")
    token = _CALL_TIMEOUT.set(seconds)
    try:
        yield
    finally:
        _CALL_TIMEOUT.reset(token)


def _call_timeout(explicit: float | None) -> float:
    for value in (explicit, _CALL_TIMEOUT.get()):
        if value is not None:
            return float(value)
    return DEFAULT_RPC_TIMEOUT_S


def preset_call_timeout(target: Any) -> float | None:
    """``rpc_timeout_s`` of a target (a TargetSpec, a preset table / manifest "target" dict), or None."""
    value = getattr(target, "rpc_timeout_s", None)
    if value is None and isinstance(target, dict):
        value = target.get("rpc_timeout_s")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def artifact_call_timeout(folder: str | os.PathLike[str]) -> float | None:
    """The per-call timeout an artifact's manifest records for its target (None when it records none, or
    the manifest cannot be read: reading it properly is the artifact loader's job)."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return preset_call_timeout(manifest.get("target")) if isinstance(manifest, dict) else None


_ELF_MACHINE = {62: "x86_64", 183: "aarch64", 40: "armv7"}  # e_machine: EM_X86_64, EM_AARCH64, EM_ARM


# TVM RPC wire constants (tvm/rpc/base.py): a client opens with RPC_MAGIC, then a length-prefixed key
# "client:<key>"; the server answers RPC_CODE_SUCCESS, or RPC_CODE_MISMATCH for a foreign key. A tracker
# answers RPC_TRACKER_MAGIC with the same value.
_RPC_MAGIC = 0xFF271
_RPC_CODES = (_RPC_MAGIC, _RPC_MAGIC + 1, _RPC_MAGIC + 2)  # success, duplicate, mismatch
_RPC_TRACKER_MAGIC = 0x2F271
_PROBE_KEY = b"bvit-edge:probe"  # not "client:...": the server answers MISMATCH and keeps listening


def probe(host: str, port: int, timeout_s: float, tracker: bool = False) -> None:
    """Check, within ``timeout_s``, that a TVM RPC server (or tracker) answers at host:port.

    Opens a TCP connection and performs the first step of TVM's handshake with a key the server
    rejects (so no session is started); raises ToolchainError when the host is unreachable, the port
    is closed, or whatever accepts the connection does not answer like TVM. TVM's own ``connect`` runs
    in C++ holding the GIL and has no timeout, so this is what keeps a bad address from hanging.
    """
    what = "TVM RPC tracker" if tracker else "TVM RPC server"
    hint = (
        "Check the address and that the server runs there (`python -m tvm.exec.rpc_server --host 0.0.0.0 "
        "--port 9090` on the board, or `bvit-edge board emulate` for the emulated aarch64 board)."
    )
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise ToolchainError(
            f"Cannot reach the {what} at {host}:{port} ({reason}, timeout {timeout_s:g} s). {hint}"
        ) from None
    with sock:
        try:
            if tracker:
                sock.sendall(struct.pack("<i", _RPC_TRACKER_MAGIC))
            else:
                sock.sendall(struct.pack("<ii", _RPC_MAGIC, len(_PROBE_KEY)) + _PROBE_KEY)
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    break
                reply += chunk
        except OSError as exc:
            reason = "no answer" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
            raise ToolchainError(
                f"{host}:{port} accepts connections but did not answer the {what} handshake ({reason} within "
                f"{timeout_s:g} s): it is not a TVM RPC endpoint, or the server is busy with another session "
                f"(it serves one at a time). {hint}"
            ) from None
    code = struct.unpack("<i", reply)[0] if len(reply) == 4 else None
    ok = code == _RPC_TRACKER_MAGIC if tracker else code in _RPC_CODES
    if not ok:
        raise ToolchainError(f"{host}:{port} answered, but not as a {what} (reply {reply!r}). {hint}")


def _as_toolchain_error(err: BaseException, what: str) -> ToolchainError:
    if isinstance(err, ToolchainError):
        return err
    text = str(err).strip()
    last = text.splitlines()[-1] if text else repr(err)
    return ToolchainError(f"{what} failed: {last}. Check that the other side runs a compatible TVM (0.27).")


def _rpc() -> Any:
    try:
        from tvm import rpc
    except ImportError as exc:
        raise MissingDependencyError(
            f"TVM is needed for RPC but cannot be imported ({exc}). Install "
            "apache-tvm==0.27.0.post1 and apache-tvm-ffi==0.1.14.post1."
        ) from None
    return rpc


def connect(
    host: str = "127.0.0.1",
    port: int = 9090,
    timeout_s: float = 10.0,
    session_timeout_s: float = 0.0,
    call_timeout_s: float | None = None,
    key: str = "",
    probe_first: bool = True,
) -> Any:
    """An RPC session with the server at host:port (``tvm.rpc.RPCSession``), every call bounded.

    ``timeout_s`` bounds the TCP probe and the handshake; ``call_timeout_s`` each later call (see the
    module docstring: default from :func:`call_timeout`, else DEFAULT_RPC_TIMEOUT_S); ``session_timeout_s``
    (0 = none) asks the server to end the session after that long; ``key``: the match key a tracker
    handed out for the board.
    """
    if probe_first:
        probe(host, port, timeout_s)
    rpc = _rpc()
    limit = _call_timeout(call_timeout_s)
    try:
        relay = RelayProcess(host, port, limit, connect_timeout_s=timeout_s).start()
    except OSError as exc:
        raise ToolchainError(f"Cannot start the RPC relay for {host}:{port} ({exc}).") from None
    try:
        session = rpc.connect("127.0.0.1", relay.port, key=key, session_timeout=session_timeout_s)
    except Exception as exc:  # noqa: BLE001 - TVM's own error types, mapped below
        outcome = relay.outcome(wait_s=2.0)
        relay.close()
        if outcome == "stalled":
            raise StalledBoard(stall_message(host, port, limit, during="setting up the session")) from None
        if outcome and outcome.startswith("unreachable"):
            raise ToolchainError(f"TVM RPC connect to {host}:{port} failed: {outcome}.") from None
        raise _as_toolchain_error(exc, f"TVM RPC connect to {host}:{port}") from None
    session._bvit_edge_relay = relay  # the relay lives as long as the session; it ends when the session closes
    return session


def connect_tracker(
    host: str,
    port: int,
    key: str,
    timeout_s: float = 10.0,
    request_timeout_s: float = 60.0,
    priority: int = 1,
    session_timeout_s: float = 0.0,
    call_timeout_s: float | None = None,
) -> Any:
    """A session with a board of kind ``key`` obtained from the RPC tracker at host:port.

    Fails if the tracker is unreachable, if no board registered ``key`` (listing the keys it has), or
    if no board of that key became free within ``request_timeout_s``.
    """
    probe(host, port, timeout_s, tracker=True)
    _rpc()  # a clear error without TVM, before talking to the tracker
    where = f"TVM RPC tracker {host}:{port}"
    with _TrackerConnection(host, port, timeout_s, where) as tracker:
        summary = tracker.ask([_TRACKER_SUMMARY], timeout_s, f"{where} summary")
        queue = (
            summary[1].get("queue_info")
            if isinstance(summary, list) and len(summary) > 1 and isinstance(summary[1], dict)
            else None
        )
        keys = sorted((queue or {}).keys())
        if key not in keys:
            raise ToolchainError(
                f"No board registered with key {key!r} at the tracker {host}:{port}; it knows: "
                f"{', '.join(keys) or 'none'}. Start the board's server with "
                f"`--tracker {host}:{port} --key {key}`."
            )
        reply = tracker.ask(
            [_TRACKER_REQUEST, key, "", priority],
            request_timeout_s,
            f"Request for a {key!r} board from the tracker {host}:{port}",
        )
    try:
        code, (board_host, board_port, match_key) = reply
        if code != _TRACKER_SUCCESS:
            raise ValueError(code)
    except (TypeError, ValueError):
        raise ToolchainError(
            f"The tracker {host}:{port} answered the request for a {key!r} board with {reply!r}. "
            "Check the tracker and its boards (`python -m tvm.exec.query_rpc_tracker`)."
        ) from None
    return connect(
        str(board_host),
        int(board_port),
        timeout_s=timeout_s,
        session_timeout_s=session_timeout_s,
        call_timeout_s=call_timeout_s,
        key=str(match_key),
        probe_first=False,
    )


# TVM RPC tracker wire protocol (tvm/rpc/base.py TrackerCode): after the magic, int32-length-prefixed JSON.
_TRACKER_SUCCESS, _TRACKER_REQUEST, _TRACKER_SUMMARY = 0, 4, 6


class _TrackerConnection:
    """One conversation with a tracker over a plain socket, every reply awaited with a timeout."""

    def __init__(self, host: str, port: int, timeout_s: float, where: str) -> None:
        self.host, self.port, self.timeout_s, self.where = host, port, timeout_s, where
        self.sock: socket.socket | None = None

    def __enter__(self) -> _TrackerConnection:
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            self.sock.sendall(struct.pack("<i", _RPC_TRACKER_MAGIC))
            if struct.unpack("<i", self._recv(4))[0] != _RPC_TRACKER_MAGIC:
                raise ToolchainError(f"{self.where} answered, but not as a TVM RPC tracker.")
        except OSError as exc:
            self.close()
            raise ToolchainError(f"{self.where} did not complete its handshake ({exc.strerror or exc}).") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _recv(self, n: int) -> bytes:
        assert self.sock is not None
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionResetError("the tracker closed the connection")
            buf += chunk
        return buf

    def ask(self, message: list[Any], timeout_s: float, what: str) -> Any:
        assert self.sock is not None
        data = json.dumps(message).encode("utf-8")
        try:
            self.sock.settimeout(timeout_s)
            self.sock.sendall(struct.pack("<i", len(data)) + data)
            size = struct.unpack("<i", self._recv(4))[0]
            return json.loads(self._recv(size).decode("utf-8"))
        except TimeoutError:
            raise ToolchainError(
                f"{what} did not complete within {timeout_s:g} s. Check that the boards of that "
                "key are up and free (`python -m tvm.exec.query_rpc_tracker`)."
            ) from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ToolchainError(
                f"{what} failed: {exc}. Check that the tracker runs a compatible TVM (0.27)."
            ) from None


def _arch_of_triple(triple: str) -> str | None:
    head = triple.split("-", 1)[0].lower()
    if head in ("x86_64", "amd64"):
        return "x86_64"
    if head in ("aarch64", "arm64"):
        return "aarch64"
    if head.startswith(("armv7", "arm", "thumbv7")):
        return "armv7"
    return None


def remote_arch(session: Any) -> str | None:
    """The board's architecture (``"x86_64" | "aarch64" | "armv7"``), or None if it cannot say.

    Asks the remote for ``target.llvm_get_system_triple`` (present in every full TVM build, which is
    what the pip wheels are). A runtime-only board lacks it: None, and :func:`upload_and_load` then
    relies on the loader's own check.
    """
    try:
        fn = session.get_function("target.llvm_get_system_triple")
        return _arch_of_triple(str(fn()))
    except Exception:  # noqa: BLE001 - missing function on a runtime-only board
        return None


def elf_arch(path: str | os.PathLike[str]) -> str | None:
    """Architecture of an ELF file from its header (e_machine), or None for a non-ELF file."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINE.get(machine, f"elf-machine-{machine}")


def check_arch(session: Any, expected: str, what: str = "the artifact") -> str | None:
    """Raise ToolchainError if the board's architecture is known and differs from ``expected``."""
    got = remote_arch(session)
    if got is not None and got != expected:
        raise ToolchainError(
            f"Architecture mismatch: {what} is built for {expected}, but the board is {got}. Compile for "
            f"the board's target (e.g. `--target rpi4-aarch64` for an aarch64 board) or connect to a "
            f"{expected} board."
        )
    return got


def upload_and_load(
    session: Any, lib_path: str | os.PathLike[str], expected_arch: str | None = None, remote_name: str | None = None
) -> Any:
    """Upload ``lib_path`` to the board and load it there; returns the remote module.

    ``expected_arch`` defaults to the library's ELF architecture; a mismatch with the board is a
    ToolchainError before anything is uploaded, and a loader failure that reads like one is reported
    the same way. The remote file name defaults to ``<stem>-<sha256[:12]>.so``: unique per content,
    because the board's dynamic loader hands back an already-loaded library for a path it has seen, so
    two artifacts both uploaded as "lib.so" in one session would silently be the same module.
    """
    lib_path = Path(lib_path)
    if not lib_path.is_file():
        raise ToolchainError(f"{lib_path} does not exist; compile the artifact first.")
    expected = expected_arch or elf_arch(lib_path)
    if expected:
        check_arch(session, expected, what=str(lib_path))
    if remote_name is None:
        digest = hashlib.sha256(lib_path.read_bytes()).hexdigest()[:12]
        remote_name = f"{lib_path.stem}-{digest}{lib_path.suffix or '.so'}"
    try:
        session.upload(str(lib_path), target=remote_name)
        return session.load_module(remote_name)
    except Exception as exc:  # noqa: BLE001 - dlopen and TVM errors, mapped below
        text = str(exc)
        if any(
            s in text
            for s in (
                "wrong ELF class",
                "ELF file's phentsize",
                "cannot open shared object",
                "invalid ELF header",
                "Exec format error",
                "wrong machine",
            )
        ):
            raise ToolchainError(
                f"The board cannot load {lib_path.name} (built for {expected or 'an unknown arch'}): "
                f"{text.strip().splitlines()[-1]}. The board's architecture differs from the artifact's "
                "target: compile for the board's target."
            ) from None
        raise ToolchainError(
            f"Loading {lib_path.name} on the board failed: {text.strip().splitlines()[-1] if text.strip() else exc!r}"
        ) from None
