"""A fake board whose TVM RPC server stalls: it completes TVM's handshake, then never answers again.

Run as a script: ``python tests/stalled_rpc_server.py`` prints ``PORT`` on stdout (one line, flushed) and
serves until killed. Every connection is handshaken exactly as ``tvm.exec.rpc_server`` does (RPC_MAGIC,
key ``client:...`` -> RPC_CODE_SUCCESS + ``server:stalled``; any other key -> RPC_CODE_MISMATCH and close),
then the server reads and discards what the client sends and never replies. Events go to stderr, one per
line: ``handshake N``, ``closed N`` (the client closed connection N: what "the board is usable again"
means for a one-session-at-a-time TVM server). Used by the bad-input tests and tests/bad_input_table.py.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

RPC_MAGIC = 0xFF271  # tvm/rpc/base.py
RPC_CODE_SUCCESS = RPC_MAGIC
RPC_CODE_MISMATCH = RPC_MAGIC + 2


def _recvall(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _serve(conn: socket.socket, number: int) -> None:
    with conn:
        try:
            magic = struct.unpack("<i", _recvall(conn, 4))[0]
            if magic != RPC_MAGIC:
                return
            keylen = struct.unpack("<i", _recvall(conn, 4))[0]
            key = _recvall(conn, keylen).decode("utf-8", "replace")
            if not key.startswith("client:"):
                conn.sendall(struct.pack("<i", RPC_CODE_MISMATCH))
                return
            server_key = b"server:stalled"
            conn.sendall(struct.pack("<ii", RPC_CODE_SUCCESS, len(server_key)) + server_key)
            print(f"handshake {number}", file=sys.stderr, flush=True)
            while conn.recv(1 << 16):  # swallow requests, answer nothing
                pass
        except (EOFError, OSError):
            pass
        print(f"closed {number}", file=sys.stderr, flush=True)


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(listener.getsockname()[1], flush=True)
    number = 0
    while True:
        conn, _ = listener.accept()
        number += 1
        threading.Thread(target=_serve, args=(conn, number), daemon=True).start()


if __name__ == "__main__":
    main()
