"""Target presets: a name (or a TOML file, or a raw TVM target dict) -> a :class:`TargetSpec`.

A preset is one TOML file (``targets/presets/<name>.toml``, shipped in the wheel) holding what every
later step needs to know about a board: the TVM target dict (``[tvm_target]``), the architecture and
kernel family, the word size of the packed kernels, the default thread count, the cross compiler and
the Debian package that provides it, and the qemu user-mode emulator that can run its binaries.

Lookup order for ``load_target(x)``:

1. a :class:`TargetSpec` is returned as is;
2. a ``dict`` with a ``tvm_target`` key is a preset table (the TOML layout); any other ``dict`` with a
   ``kind`` key is a raw TVM target dict, whose arch/family/compiler are derived from ``mtriple`` and
   the CPU features LLVM reports for ``mcpu``/``mattr``;
3. a string that names an existing ``*.toml`` file (or contains a path separator) is read as a preset;
4. otherwise a preset name: the user's presets (``$BVIT_EDGE_CONFIG/targets/*.toml``, else
   ``~/.config/bvit-edge/targets/*.toml``) first, so a user may override a shipped preset, then the
   shipped ones. An unknown name raises :class:`~bvit_edge.errors.ConfigError` listing them all.

``host`` is special: its TOML holds ``"detect"`` placeholders filled in at load time with
``tvm.target.codegen.llvm_get_system_cpu()`` (never ``"native"``, which TVM turns into a generic
x86-64 without popcnt) and the host's architecture and CPU flags.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bvit_edge.errors import ConfigError, MissingDependencyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI (a dependency with a python_version marker)
    import tomli as tomllib

__all__ = [
    "ARCHES",
    "FAMILIES",
    "TargetSpec",
    "builtin_presets_dir",
    "host_arch",
    "list_targets",
    "load_target",
    "user_presets_dir",
]

ARCHES = ("x86_64", "aarch64", "armv7")
FAMILIES = ("x86-avx512", "x86-avx2", "aarch64-neon", "armv7-neon")
_FAMILY_ARCH = {"x86-avx512": "x86_64", "x86-avx2": "x86_64", "aarch64-neon": "aarch64", "armv7-neon": "armv7"}
_WORD_BITS = {"x86_64": 64, "aarch64": 64, "armv7": 32}
_CROSS = {  # arch -> (cross compiler, Debian package, qemu user-mode emulator)
    "aarch64": ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu", "qemu-aarch64"),
    "armv7": ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf", "qemu-arm"),
    "x86_64": ("x86_64-linux-gnu-gcc", "gcc-x86-64-linux-gnu", "qemu-x86_64"),
}
_TRIPLE = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "armv7": "armv7l-linux-gnueabihf"}
_DETECT = "detect"
#: how long one RPC call to a board may take before it counts as stalled (seconds); presets may say otherwise
DEFAULT_RPC_TIMEOUT_S = 120.0
_KNOWN_KEYS = {
    "name",
    "description",
    "arch",
    "family",
    "word_bits",
    "threads",
    "cross_compiler",
    "apt_package",
    "emulated_by",
    "required_cpu_flags",
    "tvm_target",
    "rpc_timeout_s",
    "source",  # written by TargetSpec.to_dict(); ignored on load so a dict round-trips
}


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """One compile target.

    Attributes:
        name: preset name (``"rpi4-aarch64"``), or ``"custom-<arch>"`` for a raw TVM dict.
        arch: ``"x86_64" | "aarch64" | "armv7"``.
        family: kernel family, ``"x86-avx512" | "x86-avx2" | "aarch64-neon" | "armv7-neon"``.
        tvm_target: the dict handed to ``tvm.target.Target`` (kind, mtriple, mcpu, mattr, num-cores).
        cross_compiler: the C compiler ``export_library`` links with; ``None`` means the host's.
        apt_package: the Debian package that provides ``cross_compiler`` (``None`` for the host).
        word_bits: width of a packed word in the kernels (64; 32 on armv7).
        threads: default number of runtime threads on the board.
        emulated_by: the qemu user-mode binary that can run this target's code here, or ``None``.
        required_cpu_flags: ``/proc/cpuinfo`` flags a CPU needs to run this code natively.
        description: one line for ``bvit-edge targets list``.
        source: where the preset came from (a file path, ``"builtin:<file>"``, or ``"dict"``).
        rpc_timeout_s: the longest one RPC call to such a board may take (an upload, a run, a timed batch)
            before the board counts as stalled (bvit_edge.targets.rpc); ``--rpc-timeout`` overrides it.
    """

    name: str
    arch: str
    family: str
    tvm_target: dict[str, Any]
    cross_compiler: str | None = None
    apt_package: str | None = None
    word_bits: int = 64
    threads: int = 1
    emulated_by: str | None = None
    required_cpu_flags: tuple[str, ...] = ()
    description: str = ""
    source: str = ""
    rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S

    @property
    def is_cross(self) -> bool:
        """True when code for this target must be cross-compiled (a compiler other than the host's)."""
        return self.cross_compiler is not None

    def tvm(self) -> Any:
        """Build the ``tvm.target.Target`` (imports TVM; ConfigError if TVM rejects the dict)."""
        tvm = _import_tvm()
        try:
            return tvm.target.Target(dict(self.tvm_target))
        except Exception as exc:  # noqa: BLE001 - TVM raises ValueError, TVMError and its own types
            raise ConfigError(
                f"Target {self.name!r} ({self.source}): TVM rejects its [tvm_target] table "
                f"{self.tvm_target}: {str(exc).splitlines()[0]} Fix the table (see the shipped presets "
                "with `bvit-edge targets show rpi4-aarch64`)."
            ) from None

    def check(self) -> None:
        """Validate against TVM/LLVM: the dict builds a Target and LLVM knows ``mcpu`` for ``mtriple``."""
        self.tvm()
        from tvm.target import codegen

        mcpu, triple = self.tvm_target.get("mcpu"), self.tvm_target.get("mtriple")
        if mcpu and triple and not codegen.llvm_is_valid_cpu(mcpu, triple):
            raise ConfigError(
                f"Target {self.name!r} ({self.source}): LLVM does not know mcpu {mcpu!r} for mtriple "
                f"{triple!r}, so it would silently compile for a generic CPU. Use a CPU name LLVM knows "
                "(e.g. cortex-a72, cortex-a76, haswell, icelake-server)."
            )

    def runs_natively(self) -> bool:
        """True if code for this target runs on this machine without an emulator.

        Same architecture as the host and every ``required_cpu_flags`` entry present in /proc/cpuinfo.
        """
        if self.arch != host_arch():
            return False
        return set(self.required_cpu_flags) <= _host_cpu_flags()

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-friendly dict (the preset table layout, plus ``source``)."""
        d = dataclasses.asdict(self)
        d["required_cpu_flags"] = list(self.required_cpu_flags)
        d["tvm_target"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.tvm_target.items()}
        return d


# ----------------------------------------------------------------------------------------------------
# where presets live


def builtin_presets_dir() -> Path:
    """The folder of shipped presets (inside the installed package)."""
    return Path(__file__).resolve().parent / "presets"


def user_presets_dir() -> Path:
    """``$BVIT_EDGE_CONFIG/targets`` if that variable is set, else ``~/.config/bvit-edge/targets``."""
    root = os.environ.get("BVIT_EDGE_CONFIG")
    base = Path(root).expanduser() if root else Path.home() / ".config" / "bvit-edge"
    return base / "targets"


def _preset_files() -> dict[str, Path]:
    """name -> file, user presets overriding shipped ones of the same name."""
    found: dict[str, Path] = {}
    for folder in (builtin_presets_dir(), user_presets_dir()):
        if folder.is_dir():
            for f in sorted(folder.glob("*.toml")):
                found[f.stem] = f
    return found


def list_targets() -> list[str]:
    """Names of every preset (shipped and the user's), sorted. Use ``load_target`` for the details."""
    return sorted(_preset_files())


# ----------------------------------------------------------------------------------------------------
# loading


def load_target(target: str | os.PathLike[str] | Mapping[str, Any] | TargetSpec) -> TargetSpec:
    """Resolve a preset name, a preset TOML path, a preset table, a raw TVM target dict or a spec."""
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, Mapping):
        if "tvm_target" in target:
            return _from_table(dict(target), source="dict")
        if "kind" in target:
            return _from_raw_tvm(dict(target))
        raise ConfigError(
            f"A target dict needs either a 'kind' key (a raw TVM target dict such as "
            "{'kind': 'llvm', 'mtriple': 'aarch64-linux-gnu', 'mcpu': 'cortex-a72'}) or a 'tvm_target' "
            f"table (the preset layout); got keys {sorted(target)}."
        )
    if not isinstance(target, (str, os.PathLike)):
        raise ConfigError(f"A target is a preset name, a .toml path or a dict, not {type(target).__name__}.")
    text = os.fspath(target)
    path = Path(text).expanduser()
    if text.endswith(".toml") or os.sep in text:
        if not path.is_file():
            raise ConfigError(
                f"Target file {path} does not exist. Give an existing .toml file or a preset "
                f"name ({', '.join(list_targets())})."
            )
        return _from_file(path, source=str(path))
    files = _preset_files()
    if text not in files:
        raise ConfigError(
            f"Unknown target {text!r}. Presets: {', '.join(sorted(files))}. Add your own as "
            f"{user_presets_dir()}/<name>.toml, or pass a .toml path or a raw TVM target dict."
        )
    f = files[text]
    source = f"builtin:{f.name}" if f.parent == builtin_presets_dir() else str(f)
    return _from_file(f, source=source)


def _from_file(path: Path, source: str) -> TargetSpec:
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Target file {path} cannot be read as TOML: {exc}. Fix its syntax.") from None
    table.setdefault("name", path.stem)
    return _from_table(table, source=source)


def _from_table(table: dict[str, Any], source: str) -> TargetSpec:
    """Validate a preset table and build the spec (``detect`` placeholders filled for the host)."""
    where = f"Target {table.get('name', '?')!r} ({source})"
    unknown = set(table) - _KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_KNOWN_KEYS)}.")
    tvm_target = table.get("tvm_target")
    if not isinstance(tvm_target, dict) or "kind" not in tvm_target:
        raise ConfigError(f'{where}: needs a [tvm_target] table with at least kind = "llvm".')
    tvm_target = dict(tvm_target)
    if _DETECT in (table.get("arch"), table.get("family"), tvm_target.get("mcpu"), tvm_target.get("mtriple")):
        table, tvm_target = _fill_host(dict(table), tvm_target)
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: needs a non-empty string 'name'.")
    arch, family = table.get("arch"), table.get("family")
    if arch not in ARCHES:
        raise ConfigError(f"{where}: arch must be one of {ARCHES}, got {arch!r}.")
    if family not in FAMILIES or _FAMILY_ARCH[family] != arch:
        fams = [f for f, a in _FAMILY_ARCH.items() if a == arch]
        raise ConfigError(f"{where}: family must be one of {fams} for arch {arch}, got {family!r}.")
    word_bits = table.get("word_bits", _WORD_BITS[arch])
    if word_bits not in (32, 64):
        raise ConfigError(f"{where}: word_bits must be 32 or 64, got {word_bits!r}.")
    threads = table.get("threads", 1)
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{where}: threads must be a positive integer, got {threads!r}.")
    cc, apt = table.get("cross_compiler"), table.get("apt_package")
    if (cc is None) != (apt is None):
        raise ConfigError(f"{where}: give both cross_compiler and apt_package, or neither (host compiler).")
    flags = table.get("required_cpu_flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ConfigError(f"{where}: required_cpu_flags must be a list of strings.")
    rpc_timeout = table.get("rpc_timeout_s", DEFAULT_RPC_TIMEOUT_S)
    if isinstance(rpc_timeout, bool) or not isinstance(rpc_timeout, (int, float)) or not 0 < rpc_timeout < 1e6:
        raise ConfigError(f"{where}: rpc_timeout_s must be a positive number of seconds, got {rpc_timeout!r}.")
    return TargetSpec(
        name=name,
        arch=arch,
        family=family,
        tvm_target=tvm_target,
        cross_compiler=cc,
        apt_package=apt,
        word_bits=int(word_bits),
        threads=threads,
        emulated_by=table.get("emulated_by"),
        required_cpu_flags=tuple(flags),
        description=str(table.get("description", "")),
        source=source,
        rpc_timeout_s=float(rpc_timeout),
    )


def _from_raw_tvm(tvm_target: dict[str, Any]) -> TargetSpec:
    """A raw TVM dict: arch from ``mtriple`` (the host's when absent), family from LLVM's CPU features."""
    triple = str(tvm_target.get("mtriple", ""))
    arch = _arch_of_triple(triple) if triple else host_arch()
    if arch is None:
        raise ConfigError(
            f"Raw TVM target {tvm_target}: mtriple {triple!r} is not an architecture bvit-edge has kernels "
            f"for ({', '.join(ARCHES)}). Use e.g. aarch64-linux-gnu, armv7l-linux-gnueabihf, x86_64-linux-gnu."
        )
    tvm_target = dict(tvm_target)
    tvm_target.setdefault("mtriple", _TRIPLE[arch])
    if str(tvm_target["mtriple"]).endswith("gnueabihf"):
        # The hard-float ABI of armhf: without it the objects do not link with arm-linux-gnueabihf-gcc.
        tvm_target.setdefault("mfloat-abi", "hard")
    if arch == "x86_64":
        spec = TargetSpec(name="custom-x86_64", arch=arch, family="x86-avx2", tvm_target=tvm_target, source="dict")
        from tvm.target import codegen

        has512 = bool(codegen.llvm_cpu_has_features(["avx512f", "avx512vpopcntdq"], spec.tvm()))
        family = "x86-avx512" if has512 else "x86-avx2"
    else:
        family = f"{arch}-neon"
    native = arch == host_arch()
    cc, apt, qemu = (None, None, None) if native else _CROSS[arch]
    return TargetSpec(
        name=f"custom-{arch}",
        arch=arch,
        family=family,
        tvm_target=tvm_target,
        cross_compiler=cc,
        apt_package=apt,
        word_bits=_WORD_BITS[arch],
        threads=int(tvm_target.get("num-cores", 1)),
        emulated_by=qemu,
        description="raw TVM target dict",
        source="dict",
    )


def _arch_of_triple(triple: str) -> str | None:
    head = triple.split("-", 1)[0].lower()
    if head in ("x86_64", "amd64"):
        return "x86_64"
    if head in ("aarch64", "arm64"):
        return "aarch64"
    if head.startswith(("armv7", "thumbv7")):
        return "armv7"
    return None


# ----------------------------------------------------------------------------------------------------
# the host


def host_arch() -> str | None:
    """This machine's architecture in bvit-edge's spelling, or None if it has no kernels for it."""
    return _arch_of_triple(platform.machine())


def _host_cpu_flags() -> set[str]:
    """CPU flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM); empty if unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _fill_host(table: dict[str, Any], tvm_target: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    arch = host_arch()
    if arch is None:
        raise ConfigError(
            f"The host's architecture {platform.machine()!r} has no bvit-edge kernels ({', '.join(ARCHES)}); "
            "compile for a preset board instead (`bvit-edge targets list`)."
        )
    _import_tvm()
    from tvm.target import codegen

    if tvm_target.get("mcpu") == _DETECT:
        tvm_target["mcpu"] = str(codegen.llvm_get_system_cpu())
    if tvm_target.get("mtriple") == _DETECT:
        # Not llvm_get_system_triple(): in the PyPI wheel that says e.g. x86_64-conda-linux-gnu.
        tvm_target["mtriple"] = _TRIPLE[arch]
    if table.get("arch") == _DETECT:
        table["arch"] = arch
    if table.get("family") == _DETECT:
        if arch == "x86_64":
            table["family"] = "x86-avx512" if {"avx512f", "avx512_vpopcntdq"} <= _host_cpu_flags() else "x86-avx2"
        else:
            table["family"] = f"{arch}-neon"
    if not table.get("threads"):
        table["threads"] = os.cpu_count() or 1
    table.setdefault("word_bits", _WORD_BITS[arch])
    return table, tvm_target


def _import_tvm() -> Any:
    try:
        import tvm
    except ImportError as exc:
        raise MissingDependencyError(
            f"TVM is needed to resolve this target but cannot be imported ({exc}). Install it with "
            "`pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1`."
        ) from None
    return tvm
