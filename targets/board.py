"""The emulated aarch64 board: a Debian arm64 root file system run by qemu user mode, serving TVM RPC.

Without a real Raspberry Pi, this proves the cross-compiled ARM code loads, runs and matches the
host's results (its timings say nothing about a real board: report them as emulated).

Build (once, into ``cache_dir/<arch>``; ``rebuild=True`` starts over):

1. ``debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 bookworm ROOTFS``. The
   ``--foreign`` first stage does not configure packages (that would need to run arm64 code), so
   every .deb it downloaded into ``ROOTFS/var/cache/apt/archives`` is unpacked with ``dpkg -x``.
2. The aarch64 wheels of apache-tvm, apache-tvm-ffi and their runtime dependencies (numpy,
   ml_dtypes, typing_extensions) installed into ``SITE`` with ``pip install --target SITE --platform
   manylinux_2_28_aarch64 --python-version 3.11 --only-binary=:all: --no-deps``.
3. ``SITE/sitecustomize.py``: sets ``sys.executable`` to the wrapper script (the stock RPC server
   re-executes ``sys.executable``, which under qemu would be an arm64 binary the host cannot exec:
   "Exec format error") and loads ``libtvm_runtime.so`` with ``RTLD_GLOBAL`` so that compiled
   modules find ``TVMBackendParallelLaunch``.
4. ``stamp.json`` last, recording the recipe. A folder without a stamp, with another recipe's stamp
   or with files missing is refused (ToolchainError, exit 4) with the fix
   ``bvit-edge board emulate --rebuild``. The build happens in a temporary folder renamed into place
   at the end, so an interrupted build never looks finished.

5. The wheelhouse ``cache_dir/<arch>-wheels`` (:data:`WHEELHOUSES`): the aarch64 wheels a board-side
   install of bvit-edge-runtime needs (the TVM runtime, tvm_ffi, numpy, Pillow), downloaded once with ``pip
   download``. :func:`install_site` pip-installs a wheel into a *fresh* site folder resolving its dependencies
   from it offline, and :func:`run_python` runs the board's Python natively under qemu with that folder alone
   on ``PYTHONPATH``: a real board-side install and run, no RPC, the shared image left untouched.

Run: ``qemu-aarch64 -L ROOTFS ROOTFS/usr/bin/python3.11 -m tvm.exec.rpc_server --host 127.0.0.1
--port P --port-end P+1`` with ``PYTHONPATH=SITE``, in its own session (process group), its PID in
``server.pid``; ``start`` returns once the port accepts connections. ``stop`` signals that process
group by the recorded PID (after checking the PID still is our qemu), never by a process name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bvit_edge.atomic import atomic_dir, write_json, write_text
from bvit_edge.errors import ConfigError, ToolchainError
from bvit_edge.targets.rpc import probe as rpc_probe
from bvit_edge.targets.toolchain import require_tool

__all__ = [
    "BoardInfo",
    "build",
    "default_cache_dir",
    "emulate",
    "install_site",
    "run_python",
    "start",
    "status",
    "stop",
    "wheelhouse",
]

#: What a board image is built from; any change here makes older caches stale.
RECIPES: dict[str, dict[str, Any]] = {
    "aarch64": {
        "recipe_version": 2,
        "debian_suite": "bookworm",
        "debian_arch": "arm64",
        "debootstrap_variant": "minbase",
        "debootstrap_include": ["python3"],
        "python": "3.11",
        "pip_platform": "manylinux_2_28_aarch64",
        "wheels": [
            "apache-tvm==0.27.0.post1",
            "apache-tvm-ffi==0.1.14.post1",
            "numpy==2.4.6",
            "ml_dtypes==0.6.0",
            "typing_extensions==4.16.0",
            "cloudpickle==3.1.2",  # the RPC server's popen worker pickles its task with it
            "psutil==7.2.2",
        ],
        "qemu": "qemu-aarch64",
    }
}
#: The board's wheelhouse: the wheels a board-side install (packaging/bvit-edge-runtime) resolves its
#: dependencies from, offline (:func:`install_site`). Kept apart from RECIPES so that adding to it never makes a
#: built root file system stale; downloaded once, like the image, by :func:`wheelhouse`.
WHEELHOUSES: dict[str, dict[str, Any]] = {
    "aarch64": {
        "wheelhouse_version": 1,
        "pip_platform": "manylinux_2_28_aarch64",
        "python": "3.11",
        "wheels": [
            "apache-tvm==0.27.0.post1",
            "apache-tvm-ffi==0.1.14.post1",
            "numpy==2.4.6",
            "ml_dtypes==0.6.0",
            "typing_extensions==4.16.0",
            "pillow==13.0.0",
        ],
    }
}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_PORT = 9090
_SITECUSTOMIZE = '''\
"""Written by bvit-edge for the emulated board: runs at every interpreter start (PYTHONPATH=SITE)."""
import ctypes
import os
import sys

_wrapper = os.environ.get("BVIT_EDGE_BOARD_PYTHON")
if _wrapper:
    # The stock TVM RPC server re-executes sys.executable; under qemu that must be the wrapper script.
    sys.executable = _wrapper
_here = os.path.dirname(os.path.abspath(__file__))
# Compiled modules resolve TVMBackendParallelLaunch & co. from the global symbol table;
# libtvm_runtime needs libtvm_ffi loaded first.
for _lib in (("tvm_ffi", "lib", "libtvm_ffi.so"), ("tvm", "lib", "libtvm_runtime.so")):
    _path = os.path.join(_here, *_lib)
    if os.path.exists(_path):
        ctypes.CDLL(_path, mode=ctypes.RTLD_GLOBAL)
'''


@dataclasses.dataclass(frozen=True)
class BoardInfo:
    """Where an emulated board lives and whether it is serving.

    ``port``/``pid`` are set while a server runs; ``built`` says the cache holds a complete image.
    """

    arch: str
    root: Path
    built: bool
    running: bool
    host: str = "127.0.0.1"
    port: int | None = None
    pid: int | None = None
    log: Path | None = None
    stamp: dict[str, Any] | None = None

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def site(self) -> Path:
        return self.root / "site"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("root", "log"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d


# ----------------------------------------------------------------------------------------------------
# paths


def default_cache_dir() -> Path:
    """``$BVIT_EDGE_CACHE/board``, else ``$XDG_CACHE_HOME/bvit-edge/board``, else ``~/.cache/bvit-edge/board``."""
    if os.environ.get("BVIT_EDGE_CACHE"):
        return Path(os.environ["BVIT_EDGE_CACHE"]).expanduser() / "board"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "bvit-edge" / "board"


def _recipe(arch: str) -> dict[str, Any]:
    if arch not in RECIPES:
        raise ConfigError(
            f"No emulated board for arch {arch!r}; bvit-edge can emulate: {', '.join(RECIPES)}. "
            "Use a real board over RPC for other architectures (`--rpc HOST:PORT`)."
        )
    return RECIPES[arch]


def _root(arch: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser().resolve() if cache_dir else default_cache_dir().resolve()


def _paths(arch: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    return _root(arch, cache_dir) / arch


_REQUIRED_FILES = (
    "rootfs/usr/bin/python3.11",
    "site/tvm/__init__.py",
    "site/tvm_ffi/__init__.py",
    "site/numpy/__init__.py",
    "site/cloudpickle/__init__.py",
    "site/sitecustomize.py",
    "stamp.json",
)


def _check_image(root: Path, arch: str) -> tuple[bool, str]:
    """(complete, reason-if-not) for the image at ``root``."""
    if not root.exists():
        return False, "not built"
    stamp_path = root / "stamp.json"
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return False, f"{stamp_path} is missing or unreadable (a half-built or foreign folder)"
    if stamp.get("recipe") != _recipe(arch):
        old = (stamp.get("recipe") or {}).get("recipe_version")
        return False, (
            f"it is stale (built from board recipe version {old}, this bvit-edge expects version "
            f"{_recipe(arch)['recipe_version']})"
        )
    missing = [f for f in _REQUIRED_FILES if not (root / f).exists()]
    if missing:
        return False, f"files are missing from it: {', '.join(missing)}"
    return True, ""


def _stale_error(root: Path, reason: str) -> ToolchainError:
    return ToolchainError(
        f"The emulated board cache at {root} cannot be used: {reason}. Rebuild it with "
        f"`bvit-edge board emulate --rebuild` (or delete {root})."
    )


# ----------------------------------------------------------------------------------------------------
# build


def _run(cmd: list[str], what: str, timeout_s: float, env: dict[str, str] | None = None) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise ToolchainError(
            f"{what} did not finish in {timeout_s:.0f} s (`{' '.join(cmd[:4])} ...`). "
            "Check the network to Debian's mirror and PyPI, then retry."
        ) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise ToolchainError(
            f"{what} failed (exit {proc.returncode}): `{' '.join(cmd[:6])} ...`:\n{tail}\n"
            "Fix the cause above (network, disk space, permissions) and retry."
        )


def build(
    arch: str = "aarch64",
    cache_dir: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
    mirror: str | None = None,
    log=None,
) -> BoardInfo:
    """Build the board image into ``cache_dir/<arch>`` unless a complete one is there, and its wheelhouse
    (:func:`wheelhouse`, for board-side installs) unless that is there too.

    An existing incomplete or stale image raises ToolchainError unless ``rebuild`` is set.
    ``log`` is an optional ``callable(str)`` for progress lines. Needs root (debootstrap) and the
    network (Debian's mirror, PyPI) once.
    """
    recipe = _recipe(arch)
    say = log or (lambda msg: None)
    root = _paths(arch, cache_dir)
    ok, reason = _check_image(root, arch)
    if ok and not rebuild:
        wheelhouse(arch, cache_dir, log=log)
        return status(arch, cache_dir)
    if root.exists() and not rebuild:
        raise _stale_error(root, reason)
    if rebuild and status(arch, cache_dir).running:
        stop(arch, cache_dir)
    require_tool("debootstrap", purpose="to build the emulated board's root file system")
    require_tool("dpkg", purpose="to unpack the board's Debian packages")
    require_tool(recipe["qemu"], purpose="to run the board")
    if os.geteuid() != 0:
        raise ToolchainError(
            "Building the emulated board runs debootstrap, which needs root. Run "
            "`sudo bvit-edge board emulate` once (the image is cached), or on a machine where you are root."
        )
    mirror = mirror or os.environ.get("BVIT_EDGE_DEBIAN_MIRROR", DEFAULT_MIRROR)
    t0 = time.monotonic()
    with atomic_dir(root) as tmp:
        rootfs, site = tmp / "rootfs", tmp / "site"
        say(f"debootstrap {recipe['debian_suite']} ({recipe['debian_arch']}) into {rootfs}")
        _run(
            [
                "debootstrap",
                f"--arch={recipe['debian_arch']}",
                "--foreign",
                f"--variant={recipe['debootstrap_variant']}",
                f"--include={','.join(recipe['debootstrap_include'])}",
                recipe["debian_suite"],
                str(rootfs),
                mirror,
            ],
            "debootstrap",
            timeout_s=1800,
        )
        debs = sorted((rootfs / "var/cache/apt/archives").glob("*.deb"))
        say(f"unpacking {len(debs)} packages with dpkg -x")
        for deb in debs:
            _run(["dpkg", "-x", str(deb), str(rootfs)], f"dpkg -x {deb.name}", timeout_s=300)
        py = rootfs / f"usr/bin/python{recipe['python']}"
        if not py.exists():
            raise ToolchainError(
                f"After unpacking, {py} is missing: the Debian suite no longer ships "
                f"python{recipe['python']}. Update RECIPES in bvit_edge/targets/board.py."
            )
        say(f"pip: {' '.join(recipe['wheels'])} for {recipe['pip_platform']}")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
                "--target",
                str(site),
                "--platform",
                recipe["pip_platform"],
                "--python-version",
                recipe["python"],
                "--only-binary=:all:",
                "--no-deps",
                "--no-compile",
                *recipe["wheels"],
            ],
            "pip install (aarch64 wheels)",
            timeout_s=1800,
        )
        write_text(site / "sitecustomize.py", _SITECUSTOMIZE)
        write_json(
            tmp / "stamp.json",
            {
                "recipe": recipe,
                "mirror": mirror,
                "built_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_s": round(time.monotonic() - t0, 1),
                "packages_unpacked": len(debs),
            },
        )
    wheelhouse(arch, cache_dir, log=log)
    say(f"board image ready in {time.monotonic() - t0:.0f} s: {root}")
    return status(arch, cache_dir)


# ----------------------------------------------------------------------------------------------------
# run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie child of ours counts as gone
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _is_our_server(pid: int, root: Path) -> bool:
    """The PID still runs qemu on *this* board's rootfs (guards against a recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"qemu-" in a for a in cmdline[:1]) and str(root / "rootfs").encode() in cmdline


def _server_record(root: Path) -> dict[str, Any] | None:
    """server.json as written by :func:`start`; None when absent, unreadable or without an integer pid."""
    try:
        rec = json.loads((root / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("pid"), int) else None


def status(arch: str = "aarch64", cache_dir: str | os.PathLike[str] | None = None) -> BoardInfo:
    """Whether the board image is built and whether its server runs (PID alive and ours)."""
    root = _paths(arch, cache_dir)
    built, _ = _check_image(root, arch)
    stamp = None
    if built:
        with contextlib.suppress(OSError, ValueError):
            stamp = json.loads((root / "stamp.json").read_text())
    rec = _server_record(root)
    pid: int | None = rec["pid"] if rec else None
    running = pid is not None and _pid_alive(pid) and _is_our_server(pid, root)
    return BoardInfo(
        arch=arch,
        root=root,
        built=built,
        running=running,
        port=rec["port"] if rec and running else None,
        pid=pid if running else None,
        log=root / "server.log",
        stamp=stamp,
    )


def _free_port(host: str, first: int, count: int = 100) -> int:
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise ToolchainError(f"No free TCP port in {first}-{first + count - 1} on {host}; pass another --port.")


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if a TCP connection to host:port is accepted within ``timeout_s``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def start(
    arch: str = "aarch64",
    cache_dir: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
    timeout_s: float = 180.0,
) -> BoardInfo:
    """Start the RPC server on 127.0.0.1 (the first free port from ``port``); return once it answers.

    A server already running for this cache is returned once it answers. Raises ToolchainError (with the tail
    of ``server.log``) if the server exits or does not answer within ``timeout_s``.
    """
    recipe = _recipe(arch)
    root = _paths(arch, cache_dir)
    ok, reason = _check_image(root, arch)
    if not ok:
        raise (
            _stale_error(root, reason)
            if root.exists()
            else ToolchainError(
                f"The emulated {arch} board is not built at {root}. Build it with `bvit-edge board emulate`."
            )
        )
    info = status(arch, cache_dir)
    if info.running and info.pid is not None and info.port is not None:  # started earlier: wait until it serves
        pid = info.pid
        if _wait_ready(info.host, info.port, lambda: _pid_alive(pid), timeout_s):
            return status(arch, cache_dir)
        raise ToolchainError(
            f"The emulated board's server (PID {info.pid}) runs but did not answer on "
            f"{info.host}:{info.port} within {timeout_s:.0f} s. Stop it with `bvit-edge board "
            f"stop` and start again. Last lines of {info.log}:\n{_tail(root / 'server.log')}"
        )
    qemu = require_tool(recipe["qemu"], purpose="to run the emulated board")
    host = "127.0.0.1"
    port = _free_port(host, port)
    rootfs, site = root / "rootfs", root / "site"
    wrapper = root / "python-wrapper.sh"
    write_text(
        wrapper,
        (
            "#!/bin/sh\n# Written by bvit-edge: the board's Python, run by qemu user mode.\n"
            f"export PYTHONPATH='{site}'\nexport BVIT_EDGE_BOARD_PYTHON='{wrapper}'\n"
            f"exec '{qemu}' -L '{rootfs}' '{rootfs}/usr/bin/python{recipe['python']}' \"$@\"\n"
        ),
    )
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LD_"))}
    env.update({"PYTHONPATH": str(site), "BVIT_EDGE_BOARD_PYTHON": str(wrapper), "PYTHONUNBUFFERED": "1"})
    cmd = [
        qemu,
        "-L",
        str(rootfs),
        str(rootfs / f"usr/bin/python{recipe['python']}"),
        "-m",
        "tvm.exec.rpc_server",
        "--host",
        host,
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
    ]
    log_path = root / "server.log"
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(root),
            start_new_session=True,
        )
    write_json(
        root / "server.json",
        {
            "pid": proc.pid,
            "port": port,
            "host": host,
            "arch": arch,
            "started_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    write_text(root / "server.pid", f"{proc.pid}\n")
    if _wait_ready(host, port, lambda: proc.poll() is None, timeout_s):
        return status(arch, cache_dir)
    if proc.poll() is not None:
        _forget(root)
        raise ToolchainError(
            f"The emulated board's RPC server exited (code {proc.returncode}) before "
            f"serving. Last lines of {log_path}:\n{_tail(log_path)}"
        )
    stop(arch, cache_dir)
    raise ToolchainError(
        f"The emulated board's RPC server did not answer on {host}:{port} within "
        f"{timeout_s:.0f} s. Last lines of {log_path}:\n{_tail(log_path)}"
    )


def _wait_ready(host: str, port: int, alive, timeout_s: float) -> bool:
    """Poll until the TVM RPC handshake answers at host:port (True), the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        if port_open(host, port, 0.5):
            try:  # the port is open: the TVM handshake must answer too
                rpc_probe(host, port, timeout_s=max(1.0, min(10.0, deadline - time.monotonic())))
                return True
            except ToolchainError:
                pass
        time.sleep(0.5)
    return False


def stop(arch: str = "aarch64", cache_dir: str | os.PathLike[str] | None = None, timeout_s: float = 10.0) -> bool:
    """Stop the server recorded in ``server.json`` (its process group: SIGTERM, then SIGKILL).

    Returns True if a server was stopped, False if none was running. Only the recorded PID's group
    is signalled, and only if that PID still runs qemu on this board's rootfs.
    """
    root = _paths(arch, cache_dir)
    rec = _server_record(root)
    if not rec:
        return False
    pid = int(rec["pid"])
    if not (_pid_alive(pid) and _is_our_server(pid, root)):
        _forget(root)
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # start_new_session=True made pid the group leader
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap it if we are its parent
            if not _pid_alive(pid):
                _forget(root)
                return True
            time.sleep(0.1)
    raise ToolchainError(
        f"The emulated board's server (PID {pid}) did not exit after SIGKILL; check it with `ps -p {pid}`."
    )


def emulate(
    arch: str = "aarch64",
    cache_dir: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
    port: int = DEFAULT_PORT,
    timeout_s: float = 180.0,
    log=None,
) -> BoardInfo:
    """Build the board if needed (once), then start its RPC server; what ``bvit-edge board emulate`` does."""
    build(arch, cache_dir, rebuild=rebuild, log=log)
    return start(arch, cache_dir, port=port, timeout_s=timeout_s)


def _forget(root: Path) -> None:
    for name in ("server.json", "server.pid"):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------------------------------
# a board-side install into a fresh site folder (the shared image is never modified)


def _wheelhouse_recipe(arch: str) -> dict[str, Any]:
    if arch not in WHEELHOUSES:
        raise ConfigError(f"No board wheelhouse for arch {arch!r}; bvit-edge has one for: {', '.join(WHEELHOUSES)}.")
    return WHEELHOUSES[arch]


def wheelhouse(arch: str = "aarch64", cache_dir: str | os.PathLike[str] | None = None, log=None) -> Path:
    """The folder of the board's wheels (``cache_dir/<arch>-wheels``), downloaded once with ``pip download
    --platform ... --only-binary=:all: --no-deps`` (PyPI, like the image's build) and reused; a folder from
    another wheelhouse version is replaced. Written under a temporary name, renamed into place when complete."""
    recipe = _wheelhouse_recipe(arch)
    say = log or (lambda msg: None)
    root = _root(arch, cache_dir) / f"{arch}-wheels"
    with contextlib.suppress(OSError, ValueError):
        if json.loads((root / "stamp.json").read_text()).get("recipe") == recipe:
            return root
    say(f"pip download {' '.join(recipe['wheels'])} for {recipe['pip_platform']} into {root}")
    with atomic_dir(root) as tmp:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--quiet",
                "--dest",
                str(tmp),
                "--platform",
                recipe["pip_platform"],
                "--python-version",
                recipe["python"],
                "--only-binary=:all:",
                "--no-deps",
                *recipe["wheels"],
            ],
            "pip download (board wheels)",
            timeout_s=1800,
        )
        write_json(
            tmp / "stamp.json", {"recipe": recipe, "built_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        )
    return root


def install_site(
    wheels: list[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    arch: str = "aarch64",
    cache_dir: str | os.PathLike[str] | None = None,
    no_deps: bool = False,
    log=None,
) -> Path:
    """pip-install ``wheels`` (e.g. the bvit-edge-runtime wheel) for the board into the new folder ``dest``,
    their dependencies resolved offline from :func:`wheelhouse` (``--no-index --find-links``): a dependency the
    distribution declares but the wheelhouse lacks fails the install, one it does not declare is not installed.
    ``dest`` must not exist (the shared image's site folder is never touched). Returns ``dest``."""
    recipe = _wheelhouse_recipe(arch)
    dest = Path(dest)
    if dest.exists():
        raise ConfigError(f"{dest} exists; install_site writes a fresh site folder only.")
    house = wheelhouse(arch, cache_dir, log=log)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--quiet",
        "--no-index",
        "--find-links",
        str(house),
        "--target",
        str(dest),
        "--platform",
        recipe["pip_platform"],
        "--python-version",
        recipe["python"],
        "--only-binary=:all:",
        "--no-compile",
    ]
    _run(cmd + (["--no-deps"] if no_deps else []) + [str(w) for w in wheels], "pip install (board site)", timeout_s=900)
    return dest


def run_python(
    args: list[str],
    site: str | os.PathLike[str] | None,
    arch: str = "aarch64",
    cache_dir: str | os.PathLike[str] | None = None,
    timeout_s: float = 600.0,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the board's Python natively under qemu user mode (no RPC): ``python3.X ARGS`` with ``PYTHONPATH=site``
    only (not the image's own site folder, unless ``site`` is it; nor the working folder). Returns the finished
    process (bytes output);
    ToolchainError when the image is not built or the run exceeds ``timeout_s``."""
    recipe = _recipe(arch)
    root = _paths(arch, cache_dir)
    ok, reason = _check_image(root, arch)
    if not ok:
        raise (
            _stale_error(root, reason)
            if root.exists()
            else ToolchainError(
                f"The emulated {arch} board is not built at {root}. Build it with `bvit-edge board emulate`."
            )
        )
    qemu = require_tool(recipe["qemu"], purpose="to run the emulated board")
    rootfs = root / "rootfs"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LD_", "BVIT_EDGE"))}
    # PYTHONSAFEPATH: no current folder / script folder first on sys.path, so a checkout in the working folder
    # never shadows what is installed in ``site``.
    full_env.update({"PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONSAFEPATH": "1"})
    if site is not None:
        full_env["PYTHONPATH"] = str(site)
    full_env.update(env or {})
    cmd = [qemu, "-L", str(rootfs), str(rootfs / f"usr/bin/python{recipe['python']}"), *args]
    try:
        return subprocess.run(
            cmd, input=stdin, capture_output=True, env=full_env, timeout=timeout_s, cwd=str(cwd) if cwd else None
        )
    except subprocess.TimeoutExpired:
        raise ToolchainError(
            f"The board's Python did not finish in {timeout_s:.0f} s: {' '.join(args[:4])} ..."
        ) from None
