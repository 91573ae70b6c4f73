"""Every RPC call to a board bounded in time: a relay process between TVM's RPC client and the board.

TVM's RPC client runs in C++ and waits for a reply without any timeout: a board that completes the
handshake and then stops answering (a hung server, a board out of memory, a cable pulled) blocks the
caller forever, in ``connect``, ``upload``, a model run or ``time_evaluator`` alike, and some of those calls
keep Python's GIL while they wait, so nothing in the calling process can step in. bvit-edge therefore
points TVM's client at a relay in a small process of its own (:class:`RelayProcess`, this file run as a
script, standard library only), which forwards the bytes both ways between 127.0.0.1 and the board and
watches them:

* it parses the board's side of TVM's wire protocol (the handshake reply: int32 code, int32 key length,
  key; then packets: uint64 length + payload), so it knows when the board owes an answer: the client has
  sent bytes since the board's last complete packet, or a packet from the board is incomplete;
* while the board owes an answer and no byte moves in either direction for ``call_timeout_s`` seconds, the
  board is stalled: the relay closes its connection to the board (a TVM RPC server serves one session at
  a time: closing ours lets it accept the next one) and the client's, so the blocked call returns with an
  error, and exits with :data:`EXIT_STALLED`.

The caller turns that error into a StalledBoard error (exit code 4) that says what to check
(bvit_edge.targets.rpc; the CLI does so for any command). An idle session (the board owes nothing) is
never timed out, and a long call that keeps bytes moving (a big upload) is never cut. The relay ends when
either side closes, and when the process that started it ends (its stdin, a pipe from that process,
reaches end of file): it never outlives the session.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

_RPC_CODE_SUCCESS = 0xFF271  # tvm/rpc/base.py
_BUFFER_LIMIT = 4 << 20  # bytes held per direction before the relay stops reading from that side
_POLL_S = 0.1
EXIT_STALLED = 3  # the relay's exit code when the board stalled
EXIT_UNREACHABLE = 4  # ... when it could not connect to the board


class _BoardStream:
    """Follows the board -> client byte stream of TVM's RPC protocol: handshake reply, then packets."""

    def __init__(self) -> None:
        self._need = 4  # bytes of the current field
        self._field = b""
        self._state = "code"  # code -> keylen -> key -> (len -> payload)*; "refused" after a non-success code

    @property
    def mid_message(self) -> bool:
        """A handshake reply or a packet has started but is not complete."""
        return self._state in ("keylen", "key", "payload") or (self._state == "len" and bool(self._field))

    def feed(self, data: bytes) -> int:
        """Consume ``data``; returns how many packets (or handshake replies) it completed."""
        done = 0
        view = memoryview(data)
        while view and self._state != "refused":
            if self._state == "payload":
                take = min(self._need, len(view))
                self._need -= take
                view = view[take:]
                if self._need == 0:
                    self._state, self._need = "len", 8
                    done += 1
                continue
            take = min(self._need - len(self._field), len(view))
            self._field += bytes(view[:take])
            view = view[take:]
            if len(self._field) < self._need:
                continue
            value, self._field = self._field, b""
            if self._state == "code":
                if struct.unpack("<i", value)[0] != _RPC_CODE_SUCCESS:
                    self._state = "refused"  # a mismatch or duplicate key: the board closes next
                    done += 1
                else:
                    self._state, self._need = "keylen", 4
            elif self._state == "keylen":
                n = struct.unpack("<i", value)[0]
                if n > 0:
                    self._state, self._need = "key", n
                else:
                    self._state, self._need = "len", 8
                    done += 1
            elif self._state == "key":
                self._state, self._need = "len", 8
                done += 1
            else:  # "len"
                n = struct.unpack("<Q", value)[0]
                if n == 0:
                    done += 1
                else:
                    self._state, self._need = "payload", n
        return done


def _close(s: socket.socket | None) -> None:
    if s is None:
        return
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


def pump(client: socket.socket, board: socket.socket, call_timeout_s: float, control: Any = None) -> bool:
    """Forward bytes between ``client`` and ``board`` until either closes; True when the board stalled
    (then both are closed). ``control``: a readable file whose end of file also ends the relay."""
    to_board, to_client = bytearray(), bytearray()
    stream = _BoardStream()
    owed = False  # the client sent bytes after the board's last complete packet
    last_move = time.monotonic()
    client_open = board_open = True
    for s in (client, board):
        s.setblocking(False)
        with contextlib.suppress(OSError):  # not a TCP socket (tests use socket pairs)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        rlist: list[Any] = [
            s
            for s, buf, is_open in ((client, to_board, client_open), (board, to_client, board_open))
            if is_open and len(buf) < _BUFFER_LIMIT
        ]
        if control is not None:
            rlist.append(control)
        wlist = ([board] if to_board else []) + ([client] if to_client else [])
        try:
            readable, writable, _ = select.select(rlist, wlist, [], _POLL_S)
        except (OSError, ValueError):
            return False
        now = time.monotonic()
        try:
            if control is not None and control in readable and not os.read(control.fileno(), 4096):
                return False  # the process that started the relay is gone
            if client in readable:
                data = client.recv(1 << 16)
                if data:
                    to_board += data
                    owed, last_move = True, now
                else:
                    client_open = False
            if board in readable:
                data = board.recv(1 << 16)
                if data:
                    to_client += data
                    if stream.feed(data):
                        owed = False
                    last_move = now
                else:
                    board_open = False
            if board in writable and to_board:
                n = board.send(to_board)
                del to_board[:n]
                if n:
                    last_move = now
            if client in writable and to_client:
                n = client.send(to_client)
                del to_client[:n]
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return False  # a reset on either side: closing both tells the other
        if (not client_open and not to_board) or (not board_open and not to_client):
            return False  # one side closed and everything it was owed is delivered
        if (owed or stream.mid_message) and board_open and now - last_move > call_timeout_s:
            return True


def main(argv: list[str]) -> int:
    """The relay process: ``rpc_relay.py HOST PORT CALL_TIMEOUT_S CONNECT_TIMEOUT_S``. Prints the local port
    it listens on, serves one client, exits 0 when the session ends, EXIT_STALLED when the board stalled,
    EXIT_UNREACHABLE when the board cannot be reached."""
    host, port, call_timeout_s, connect_timeout_s = argv[0], int(argv[1]), float(argv[2]), float(argv[3])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sys.stdout.write(f"{listener.getsockname()[1]}\n")
    sys.stdout.flush()
    client = board = None
    try:
        ready, _, _ = select.select([listener, sys.stdin], [], [], connect_timeout_s)
        if listener not in ready:
            return 0  # nobody came (the caller gave up, or is gone)
        client, _ = listener.accept()
        _close(listener)
        try:
            board = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as exc:
            sys.stdout.write(f"unreachable {exc.strerror or exc}\n")
            sys.stdout.flush()
            return EXIT_UNREACHABLE
        return EXIT_STALLED if pump(client, board, call_timeout_s, control=sys.stdin) else 0
    finally:
        _close(board)
        _close(client)
        _close(listener)


# ---------------------------------------------------------------------------------------------------------
# the side of the process that starts the relay

_live: weakref.WeakSet[RelayProcess] = weakref.WeakSet()
_stalls: list[tuple[str, int, float]] = []  # (host, port, timeout) of every board that stalled in this process
_lock = threading.Lock()


class RelayProcess:
    """A running relay for one session with ``host``:``port`` (see the module docstring).

    ``start()`` returns once the relay listens; connect TVM's client to ``("127.0.0.1", relay.port)``;
    ``close()`` ends it (also done when the object is garbage, and at exit)."""

    def __init__(self, host: str, port: int, call_timeout_s: float, connect_timeout_s: float = 10.0) -> None:
        if not call_timeout_s > 0:
            raise ValueError(f"call_timeout_s must be positive, got {call_timeout_s!r}")
        self.host, self.board_port = host, int(port)
        self.call_timeout_s, self.connect_timeout_s = float(call_timeout_s), float(connect_timeout_s)
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None
        self._finalizer: Any = None

    def start(self) -> RelayProcess:
        cmd = [
            sys.executable,
            "-I",
            os.path.abspath(__file__),
            self.host,
            str(self.board_port),
            repr(self.call_timeout_s),
            repr(self.connect_timeout_s),
        ]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._finalizer = weakref.finalize(self, _stop, self._proc, (self.host, self.board_port, self.call_timeout_s))
        out = self._proc.stdout
        assert out is not None  # stdout=PIPE
        ready, _, _ = select.select([out], [], [], max(self.connect_timeout_s, 10.0))
        line = out.readline() if ready else ""
        if not line.strip().isdigit():
            self.close()
            raise OSError("the RPC relay process did not start")
        self.port = int(line)
        with _lock:
            _live.add(self)
        return self

    def outcome(self, wait_s: float = 0.0) -> str | None:
        """The reason the relay ended ("stalled" or "unreachable: ..."), or None (still running, or ended
        normally)."""
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(timeout=wait_s) if wait_s else self._proc.poll()
        except subprocess.TimeoutExpired:
            return None
        if code == EXIT_STALLED:
            return "stalled"
        if code == EXIT_UNREACHABLE:
            rest = (self._proc.stdout.read() if self._proc.stdout else "") or ""
            return "unreachable: " + rest.replace("unreachable", "", 1).strip()
        return None

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _stop(proc: subprocess.Popen[str], where: tuple[str, int, float]) -> None:
    """End a relay process: close its control pipe (it exits on its own), then make sure; remember a stall."""
    if proc.poll() == EXIT_STALLED:
        with _lock:
            _stalls.append(where)
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stalls() -> list[tuple[str, int, float]]:
    """(host, port, per-call timeout) of every board that stalled in this process, oldest first."""
    with _lock:
        relays = list(_live)
        found = list(_stalls)
    for r in relays:
        if r.outcome() == "stalled" and (r.host, r.board_port, r.call_timeout_s) not in found:
            found.append((r.host, r.board_port, r.call_timeout_s))
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
