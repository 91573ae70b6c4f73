"""This machine's architecture and CPU features, and the features a compiled artifact needs (no TVM, no torch).

A compiled ``lib.so`` may contain any instruction its target CPU model has (LLVM picks them while
vectorizing): an AVX-512 artifact on a CPU without AVX-512, or a Cortex-A76 (``dotprod``) artifact on a Cortex-A72,
dies with SIGILL in the middle of a run. So the compiler records, in the manifest's ``required_cpu_features``,
the instruction-set extensions of its target in the spelling of the Linux kernel (what ``/proc/cpuinfo`` prints
and ``AT_HWCAP`` encodes), and :func:`missing_features` compares them with this machine's before anything is
loaded.

Where this machine's features come from:

* ARM (aarch64, armv7): the auxiliary vector's ``AT_HWCAP`` / ``AT_HWCAP2`` (``getauxval`` from the C library),
  decoded with the bit numbers of the kernel's ``uapi/asm/hwcap.h``. It is what the kernel derives the
  ``Features`` line of /proc/cpuinfo from, and it is right under qemu user mode too, where /proc/cpuinfo shows
  the host's x86 CPU. /proc/cpuinfo's ``Features`` line is the fallback when ``getauxval`` is missing.
* x86-64: the ``flags`` line of /proc/cpuinfo (x86's ``AT_HWCAP`` holds only CPUID leaf 1, no AVX2/AVX-512).

Only extensions that compiled model code can contain are mapped (:data:`LLVM_TO_KERNEL`): SIMD, FMA, half
precision, dot products, popcount, bit manipulation, atomics. Crypto extensions (AES, SHA, PMULL) are left out on
purpose: LLVM emits them only for intrinsics, and e.g. the Raspberry Pi 4's Cortex-A72 has none although LLVM's
``cortex-a72`` model lists them.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "ARCHES",
    "LLVM_TO_KERNEL",
    "arch_of",
    "cpu_features",
    "machine_arch",
    "missing_features",
    "required_features",
]

#: The architectures bvit-edge has kernels for, in its own spelling.
ARCHES = ("x86_64", "aarch64", "armv7")

#: LLVM target feature -> the kernel's feature name(s) (/proc/cpuinfo spelling), per architecture.
LLVM_TO_KERNEL: dict[str, dict[str, tuple[str, ...]]] = {
    "x86_64": {
        "sse3": ("pni",),
        "ssse3": ("ssse3",),
        "sse4.1": ("sse4_1",),
        "sse4.2": ("sse4_2",),
        "popcnt": ("popcnt",),
        "avx": ("avx",),
        "avx2": ("avx2",),
        "fma": ("fma",),
        "f16c": ("f16c",),
        "bmi": ("bmi1",),
        "bmi2": ("bmi2",),
        "lzcnt": ("abm",),
        "movbe": ("movbe",),
        "avx512f": ("avx512f",),
        "avx512bw": ("avx512bw",),
        "avx512cd": ("avx512cd",),
        "avx512dq": ("avx512dq",),
        "avx512vl": ("avx512vl",),
        "avx512ifma": ("avx512ifma",),
        "avx512vbmi": ("avx512vbmi",),
        "avx512vbmi2": ("avx512_vbmi2",),
        "avx512vnni": ("avx512_vnni",),
        "avx512bitalg": ("avx512_bitalg",),
        "avx512vpopcntdq": ("avx512_vpopcntdq",),
        "avx512bf16": ("avx512_bf16",),
        "avx512fp16": ("avx512_fp16",),
        "avxvnni": ("avx_vnni",),
        "gfni": ("gfni",),
    },
    "aarch64": {
        "fp-armv8": ("fp",),
        "neon": ("asimd",),
        "crc": ("crc32",),
        "lse": ("atomics",),
        "fullfp16": ("fphp", "asimdhp"),
        "rdm": ("asimdrdm",),
        "rcpc": ("lrcpc",),
        "dotprod": ("asimddp",),
        "fp16fml": ("asimdfhm",),
        "jsconv": ("jscvt",),
        "complxnum": ("fcma",),
        "i8mm": ("i8mm",),
        "bf16": ("bf16",),
        "sve": ("sve",),
        "sve2": ("sve2",),
    },
    "armv7": {
        "neon": ("neon",),
        "vfp3": ("vfpv3",),
        "vfp4": ("vfpv4",),
        "d32": ("vfpd32",),
        "hwdiv-arm": ("idiva",),
        "hwdiv": ("idivt",),
        "crc": ("crc32",),
    },
}

# Linux uapi/asm/hwcap.h: bit number -> name, for AT_HWCAP (16) and AT_HWCAP2 (26).
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_HWCAP_BITS: dict[str, tuple[dict[int, str], dict[int, str]]] = {
    "aarch64": (
        {
            0: "fp",
            1: "asimd",
            2: "evtstrm",
            3: "aes",
            4: "pmull",
            5: "sha1",
            6: "sha2",
            7: "crc32",
            8: "atomics",
            9: "fphp",
            10: "asimdhp",
            11: "cpuid",
            12: "asimdrdm",
            13: "jscvt",
            14: "fcma",
            15: "lrcpc",
            16: "dcpop",
            17: "sha3",
            18: "sm3",
            19: "sm4",
            20: "asimddp",
            21: "sha512",
            22: "sve",
            23: "asimdfhm",
            24: "dit",
            25: "uscat",
            26: "ilrcpc",
            27: "flagm",
            28: "ssbs",
            29: "sb",
            30: "paca",
            31: "pacg",
        },
        {
            0: "dcpodp",
            1: "sve2",
            2: "sveaes",
            3: "svepmull",
            4: "svebitperm",
            5: "svesha3",
            6: "svesm4",
            7: "flagm2",
            8: "frint",
            9: "svei8mm",
            10: "svef32mm",
            11: "svef64mm",
            12: "svebf16",
            13: "i8mm",
            14: "bf16",
            15: "dgh",
            16: "rng",
            17: "bti",
        },
    ),
    "armv7": (
        {
            0: "swp",
            1: "half",
            2: "thumb",
            3: "26bit",
            4: "fastmult",
            5: "fpa",
            6: "vfp",
            7: "edsp",
            8: "java",
            9: "iwmmxt",
            10: "crunch",
            11: "thumbee",
            12: "neon",
            13: "vfpv3",
            14: "vfpv3d16",
            15: "tls",
            16: "vfpv4",
            17: "idiva",
            18: "idivt",
            19: "vfpd32",
            20: "lpae",
            21: "evtstrm",
        },
        {0: "aes", 1: "pmull", 2: "sha1", 3: "sha2", 4: "crc32"},
    ),
}


def arch_of(machine: str) -> str | None:
    """bvit-edge's name for a machine / triple head (``uname -m``, ``aarch64-linux-gnu``), None if unsupported."""
    head = machine.split("-", 1)[0].lower()
    if head in ("x86_64", "amd64"):
        return "x86_64"
    if head in ("aarch64", "arm64"):
        return "aarch64"
    if head.startswith(("armv7", "armv8l", "thumbv7")):  # armv8l: a 64-bit CPU running a 32-bit OS (Pi 3)
        return "armv7"
    return None


def machine_arch() -> str | None:
    """The architecture this Python runs as, in bvit-edge's spelling (:data:`ARCHES`); None without kernels.

    That is the kernel's (``uname -m``) except for a 32-bit user space on a 64-bit ARM kernel (Raspberry Pi OS
    32-bit boots a 64-bit kernel on a Pi 4): ``aarch64`` with 4-byte pointers runs armv7 code."""
    arch = arch_of(platform.machine())
    if arch == "aarch64" and ctypes.sizeof(ctypes.c_void_p) == 4:
        return "armv7"
    if arch == "x86_64" and ctypes.sizeof(ctypes.c_void_p) == 4:
        return None
    return arch


def _hwcap_features(arch: str) -> set[str] | None:
    bits = _HWCAP_BITS.get(arch)
    if bits is None:
        return None
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    found: set[str] = set()
    for at, table in zip((_AT_HWCAP, _AT_HWCAP2), bits, strict=True):
        word = int(getauxval(at))
        found |= {name for bit, name in table.items() if word >> bit & 1}
    return found or None


def _cpuinfo_features(key: str, cpuinfo: str | None = None) -> set[str]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return set(value.split())
    return set()


def cpu_features(arch: str | None = None) -> set[str]:
    """This machine's CPU features in the kernel's spelling (see the module docstring for the sources)."""
    arch = arch or machine_arch()
    if arch in ("aarch64", "armv7"):
        return _hwcap_features(arch) or _cpuinfo_features("Features")
    return _cpuinfo_features("flags")


def required_features(arch: str, llvm_features: Iterable[str]) -> list[str]:
    """The kernel feature names an artifact built with ``llvm_features`` (LLVM's list for the target CPU, as
    ``tvm.target.codegen.llvm_get_cpu_features`` returns it) needs on ``arch``, sorted."""
    table = LLVM_TO_KERNEL.get(arch, {})
    return sorted({name for feat in llvm_features for name in table.get(str(feat), ())})


def missing_features(required: Iterable[str], available: set[str] | None = None) -> list[str]:
    """The features of ``required`` this machine (or ``available``) lacks, sorted."""
    have = cpu_features() if available is None else available
    return sorted(set(required) - have)
