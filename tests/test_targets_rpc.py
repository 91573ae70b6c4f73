"""The RPC client fails fast and clearly: an unreachable host or a silent port is a ToolchainError within
the timeout (not a hang), an artifact for another architecture is refused before upload, and a real
(host) TVM RPC server runs an uploaded module with results equal to numpy's."""

from __future__ import annotations

import platform
import socket
import time

import numpy as np
import pytest

from bvit_edge.errors import ToolchainError
from bvit_edge.targets import load_target, rpc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_closed_port_fails_in_seconds_with_exit_code_4():
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ToolchainError) as err:
        rpc.connect("127.0.0.1", port, timeout_s=2)
    assert time.monotonic() - t0 < 5
    assert err.value.exit_code == 4 and f"127.0.0.1:{port}" in str(err.value)
    assert "bvit-edge board emulate" in str(err.value)


def test_unroutable_host_fails_within_the_timeout():
    # A private address nobody serves TVM on; sandboxes with a transparent proxy accept the TCP
    # connection, so this also covers "something answers but it is not TVM".
    t0 = time.monotonic()
    with pytest.raises(ToolchainError):
        rpc.connect("10.255.255.1", 9090, timeout_s=1.5)
    assert time.monotonic() - t0 < 5


def test_a_non_tvm_reply_is_refused():
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def http_like():
        conn, _ = srv.accept()
        conn.recv(64)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    threading.Thread(target=http_like, daemon=True).start()
    with pytest.raises(ToolchainError, match="not as a TVM RPC server"):
        rpc.connect("127.0.0.1", srv.getsockname()[1], timeout_s=3)
    srv.close()


def test_a_port_that_never_handshakes_is_an_error_not_a_hang():
    pytest.importorskip("tvm")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)  # accepts TCP (the kernel does) but never speaks TVM RPC
        t0 = time.monotonic()
        with pytest.raises(ToolchainError, match="handshake"):
            rpc.connect("127.0.0.1", srv.getsockname()[1], timeout_s=2)
        assert time.monotonic() - t0 < 8


def test_tracker_unreachable_is_a_toolchain_error():
    with pytest.raises(ToolchainError, match="tracker"):
        rpc.connect_tracker("127.0.0.1", _free_port(), key="rpi4", timeout_s=2)


class _FakeSession:
    """Stands in for an RPCSession: answers target.llvm_get_system_triple like a board's TVM does."""

    def __init__(self, triple: str | None):
        self.triple = triple
        self.uploaded: list[str] = []

    def get_function(self, name):
        if self.triple is None or name != "target.llvm_get_system_triple":
            raise AttributeError(name)  # a runtime-only board lacks it
        return lambda: self.triple

    def upload(self, path, target=None):
        self.uploaded.append(target)

    def load_module(self, name):
        raise RuntimeError("dlopen: lib.so: wrong ELF class: ELFCLASS64")


def test_remote_arch_reads_the_boards_llvm_triple():
    assert rpc.remote_arch(_FakeSession("aarch64-unknown-linux-gnu")) == "aarch64"
    assert rpc.remote_arch(_FakeSession("x86_64-pc-linux-gnu")) == "x86_64"
    assert rpc.remote_arch(_FakeSession("armv7l-unknown-linux-gnueabihf")) == "armv7"
    assert rpc.remote_arch(_FakeSession(None)) is None


def test_arch_mismatch_is_refused_before_upload(tmp_path):
    lib = tmp_path / "lib.so"
    # A minimal ELF header for AArch64 (EI_CLASS 2, little endian, e_machine 183).
    lib.write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 11 + (183).to_bytes(2, "little") + b"\x00" * 44)
    sess = _FakeSession("x86_64-pc-linux-gnu")
    with pytest.raises(ToolchainError) as err:
        rpc.upload_and_load(sess, lib)
    assert err.value.exit_code == 4 and "aarch64" in str(err.value) and "x86_64" in str(err.value)
    assert sess.uploaded == []


def test_loader_failure_on_a_runtime_only_board_reads_as_arch_mismatch(tmp_path):
    import hashlib

    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF\x01\x01\x01" + b"\x00" * 11 + (40).to_bytes(2, "little") + b"\x00" * 32)
    sess = _FakeSession(None)
    with pytest.raises(ToolchainError, match="architecture differs"):
        rpc.upload_and_load(sess, lib)
    # uploaded under a content-unique name, so two "lib.so" artifacts never alias on the board
    assert sess.uploaded == [f"lib-{hashlib.sha256(lib.read_bytes()).hexdigest()[:12]}.so"]


@pytest.fixture(scope="module")
def host_server():
    """A real TVM RPC server on this host (the stock one, in a worker process)."""
    pytest.importorskip("tvm")
    from tvm import rpc as tvm_rpc

    port = _free_port()
    server = tvm_rpc.Server(host="127.0.0.1", port=port, port_end=port + 1, silent=True)
    yield server.port
    server.terminate()


def _scale_lib(tmp_path, target: dict, cc: str | None = None):
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def scale(a: T.handle, b: T.handle):
        T.func_attr({"global_symbol": "scale", "tir.noalias": True})
        A = T.match_buffer(a, (32,), "float32")
        B = T.match_buffer(b, (32,), "float32")
        for i in range(32):
            B[i] = A[i] * T.float32(1.5) + T.float32(0.25)

    lib = tmp_path / f"scale-{target.get('mtriple', 'x')}.so"
    tvm.tirx.build(tvm.IRModule({"scale": scale}), target=target).export_library(str(lib), **({"cc": cc} if cc else {}))
    return lib


def test_host_rpc_server_runs_an_uploaded_module(host_server, tmp_path):
    if platform.machine() != "x86_64":
        pytest.skip("x86 host only")
    import tvm

    sess = rpc.connect("127.0.0.1", host_server, timeout_s=10)
    assert rpc.remote_arch(sess) == "x86_64"
    mod = rpc.upload_and_load(sess, _scale_lib(tmp_path, load_target("host").tvm_target))
    dev = sess.cpu()
    a = np.linspace(-3, 3, 32, dtype=np.float32)
    A, B = tvm.runtime.tensor(a, dev), tvm.runtime.tensor(np.zeros(32, np.float32), dev)
    mod["scale"](A, B)
    # LLVM may fuse the multiply-add (one rounding instead of two): allow an ulp.
    np.testing.assert_allclose(B.numpy(), a * np.float32(1.5) + np.float32(0.25), rtol=2e-7, atol=1e-7)
    del mod, A, B, dev, sess  # the stock server serves one session at a time: end ours
    import gc

    gc.collect()


def test_aarch64_artifact_is_refused_by_the_x86_server(host_server, tmp_path):
    if platform.machine() != "x86_64":
        pytest.skip("x86 host only")
    import shutil

    if not shutil.which("aarch64-linux-gnu-gcc"):
        pytest.skip("no aarch64 cross compiler")
    spec = load_target("rpi4-aarch64")
    lib = _scale_lib(tmp_path, spec.tvm_target, cc="aarch64-linux-gnu-gcc")
    sess = rpc.connect("127.0.0.1", host_server, timeout_s=10)
    with pytest.raises(ToolchainError, match="Architecture mismatch") as err:
        rpc.upload_and_load(sess, lib)
    assert err.value.exit_code == 4
    del sess, err  # the traceback holds the session too; the server serves one at a time
    import gc

    gc.collect()


class _FakeTracker:
    """A TVM RPC tracker speaking the wire protocol (magic 0x2F271, then length-prefixed JSON messages:
    [6] SUMMARY -> [0, summary]; [4, key, "", prio] REQUEST -> [0, [host, port, matchkey]]). The real
    tracker needs tornado, which bvit-edge does not depend on; the client side does not."""

    def __init__(self, keys: dict[str, tuple[str, int, str]]):
        import threading

        self.keys = keys
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import json
        import struct
        import threading

        def handle(conn):
            def recv(n):
                buf = b""
                while len(buf) < n:
                    chunk = conn.recv(n - len(buf))
                    if not chunk:
                        raise EOFError
                    buf += chunk
                return buf

            def send(obj):
                data = json.dumps(obj).encode()
                conn.sendall(struct.pack("<i", len(data)) + data)

            try:
                assert struct.unpack("<i", recv(4))[0] == 0x2F271
                conn.sendall(struct.pack("<i", 0x2F271))
                while True:
                    msg = json.loads(recv(struct.unpack("<i", recv(4))[0]))
                    if msg[0] == 6:
                        send([0, {"queue_info": {k: {"free": 1, "pending": 0} for k in self.keys}, "server_info": []}])
                    elif msg[0] == 4:
                        send([0, list(self.keys[msg[1]])])
            except (EOFError, OSError, AssertionError):
                conn.close()

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()


def test_tracker_lists_its_keys_when_the_asked_one_is_missing(host_server):
    tracker = _FakeTracker({"hostbox": ("127.0.0.1", host_server, "")})
    try:
        with pytest.raises(ToolchainError, match="hostbox") as err:
            rpc.connect_tracker("127.0.0.1", tracker.port, key="rpi4", timeout_s=5)
        assert "rpi4" in str(err.value) and err.value.exit_code == 4
        sess = rpc.connect_tracker("127.0.0.1", tracker.port, key="hostbox", timeout_s=5, request_timeout_s=30)
        if platform.machine() == "x86_64":
            assert rpc.remote_arch(sess) == "x86_64"
        del sess
    finally:
        tracker.sock.close()


def test_two_artifacts_named_lib_so_do_not_alias_on_the_board(host_server, tmp_path):
    """The loader caches by path: uploading both as "lib.so" would hand back the first module twice."""
    if platform.machine() != "x86_64":
        pytest.skip("x86 host only")
    import gc

    import tvm
    from tvm.script import tirx as T

    def lib_adding(c: float, folder):
        @T.prim_func
        def add(a: T.handle, b: T.handle):
            T.func_attr({"global_symbol": "add", "tir.noalias": True})
            A = T.match_buffer(a, (4,), "float32")
            B = T.match_buffer(b, (4,), "float32")
            for i in range(4):
                B[i] = A[i] + T.float32(c)

        folder.mkdir()
        tvm.tirx.build(tvm.IRModule({"add": add}), target=load_target("host").tvm_target).export_library(
            str(folder / "lib.so")
        )
        return folder / "lib.so"

    sess = rpc.connect("127.0.0.1", host_server, timeout_s=10)
    dev = sess.cpu()
    outs = []
    for c, sub in ((1.0, "one"), (2.0, "two")):
        mod = rpc.upload_and_load(sess, lib_adding(c, tmp_path / sub))
        b = tvm.runtime.tensor(np.zeros(4, np.float32), dev)
        mod["add"](tvm.runtime.tensor(np.zeros(4, np.float32), dev), b)
        outs.append(b.numpy())
        del mod, b
    np.testing.assert_array_equal(outs[0], np.full(4, 1.0, np.float32))
    np.testing.assert_array_equal(outs[1], np.full(4, 2.0, np.float32))
    del dev, sess
    gc.collect()
