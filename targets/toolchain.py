"""Find the external tools a target needs: its cross C compiler, qemu, debootstrap.

A missing tool is a :class:`~bvit_edge.errors.ToolchainError` (exit code 4) that names the Debian
package providing it, e.g. ``sudo apt-get install gcc-aarch64-linux-gnu``; the project's Makefile
installs them all (``make setup``).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

from bvit_edge.errors import ToolchainError

if TYPE_CHECKING:
    from bvit_edge.targets.registry import TargetSpec

__all__ = ["APT_PACKAGES", "availability", "compiler_version", "find_compiler", "require_tool"]

#: tool -> Debian package for the tools bvit-edge itself calls (cross compilers come from the presets).
APT_PACKAGES = {
    "qemu-aarch64": "qemu-user",
    "qemu-arm": "qemu-user",
    "debootstrap": "debootstrap",
    "dpkg": "dpkg",
    "gcc": "gcc",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "arm-linux-gnueabihf-gcc": "gcc-arm-linux-gnueabihf",
}


def require_tool(tool: str, apt_package: str | None = None, purpose: str = "") -> str:
    """Absolute path of ``tool`` on PATH, or a ToolchainError naming the package that provides it."""
    path = shutil.which(tool)
    if path:
        return path
    package = apt_package or APT_PACKAGES.get(tool, tool)
    why = f" (needed {purpose})" if purpose else ""
    raise ToolchainError(
        f"`{tool}` is not on PATH{why}. Install it with `sudo apt-get install {package}` "
        "(or `make setup`, which installs every Debian package bvit-edge uses), then retry."
    )


def find_compiler(spec: TargetSpec) -> str | None:
    """The C compiler ``export_library`` should link ``spec``'s code with.

    Returns ``None`` for a target compiled with the host's own toolchain (TVM then uses its default,
    ``g++``/``gcc``), else the absolute path of ``spec.cross_compiler``; a missing cross compiler is a
    ToolchainError naming ``spec.apt_package``.
    """
    if spec.cross_compiler is None:
        return None
    return require_tool(spec.cross_compiler, spec.apt_package, f"to link code for target {spec.name!r}")


def compiler_version(compiler: str | None) -> str:
    """First line of ``<compiler> --version`` (``gcc``'s when ``compiler`` is None), for manifests."""
    exe = compiler or shutil.which("gcc") or "gcc"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"`{exe} --version` failed ({exc}); the compiler is unusable. Reinstall it.") from None
    return out.stdout.splitlines()[0].strip() if out.stdout else exe


def availability(spec: TargetSpec) -> dict[str, object]:
    """What this machine can do with ``spec``, for ``bvit-edge targets list|show``.

    ``compiler``: the linker's path (None = host default), ``compiler_found``; ``emulator_found``: the
    qemu binary of ``emulated_by`` is on PATH; ``runs_natively``: this CPU runs the code directly.
    """
    cc = shutil.which(spec.cross_compiler) if spec.cross_compiler else None
    return {
        "compiler": cc,
        "compiler_found": spec.cross_compiler is None or cc is not None,
        "emulator_found": bool(spec.emulated_by and shutil.which(spec.emulated_by)),
        "runs_natively": spec.runs_natively(),
    }
