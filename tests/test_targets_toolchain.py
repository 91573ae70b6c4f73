"""Cross toolchains: each preset's compiler is found (or its absence is a ToolchainError naming the apt
package), and a tiny TVM function cross-compiled with it is an ELF for the preset's architecture."""

from __future__ import annotations

import shutil

import pytest

from bvit_edge.errors import ToolchainError
from bvit_edge.targets import load_target
from bvit_edge.targets.registry import TargetSpec
from bvit_edge.targets.rpc import elf_arch
from bvit_edge.targets.toolchain import compiler_version, find_compiler, require_tool


def test_host_targets_use_the_default_compiler():
    assert find_compiler(load_target("x86-64-avx2")) is None


def test_missing_cross_compiler_names_its_apt_package():
    spec = TargetSpec(
        name="fake",
        arch="aarch64",
        family="aarch64-neon",
        tvm_target={"kind": "llvm"},
        cross_compiler="zz-nonexistent-linux-gnu-gcc",
        apt_package="gcc-zz-linux-gnu",
    )
    with pytest.raises(ToolchainError) as err:
        find_compiler(spec)
    assert err.value.exit_code == 4
    assert "apt-get install gcc-zz-linux-gnu" in str(err.value) and "zz-nonexistent-linux-gnu-gcc" in str(err.value)


def test_require_tool_names_the_package_of_a_missing_tool(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: nothing can be found
    with pytest.raises(ToolchainError, match="apt-get install qemu-user"):
        require_tool("qemu-aarch64", purpose="to run the board")
    with pytest.raises(ToolchainError, match="apt-get install debootstrap"):
        require_tool("debootstrap")


def _tiny_module(target: dict):
    tvm = pytest.importorskip("tvm")
    from tvm.script import tirx as T

    @T.prim_func
    def scale(a: T.handle, b: T.handle):
        T.func_attr({"global_symbol": "scale", "tir.noalias": True})
        A = T.match_buffer(a, (16,), "float32")
        B = T.match_buffer(b, (16,), "float32")
        for i in range(16):
            B[i] = A[i] * T.float32(2.0)

    return tvm.tirx.build(tvm.IRModule({"scale": scale}), target=target)


@pytest.mark.parametrize("name", ["rpi4-aarch64", "rpi5-aarch64", "rpi3-armv7"])
def test_cross_compiled_library_is_an_elf_of_the_presets_arch(name, tmp_path):
    spec = load_target(name)
    if shutil.which(spec.cross_compiler) is None:
        pytest.skip(f"{spec.cross_compiler} not installed")
    cc = find_compiler(spec)
    assert cc and cc.endswith(spec.cross_compiler)
    assert spec.cross_compiler.split("-gcc")[0] in compiler_version(cc) or "gcc" in compiler_version(cc)
    lib = tmp_path / "lib.so"
    _tiny_module(spec.tvm_target).export_library(str(lib), cc=cc)
    head = lib.read_bytes()[:20]
    # ELF header written out: EI_CLASS 2 = 64-bit, 1 = 32-bit; e_machine 183 = AArch64, 40 = ARM.
    want_class, want_machine = {"aarch64": (2, 183), "armv7": (1, 40)}[spec.arch]
    assert head[:4] == b"\x7fELF" and head[4] == want_class and int.from_bytes(head[18:20], "little") == want_machine
    assert elf_arch(lib) == spec.arch


def test_host_library_is_an_x86_64_elf(tmp_path):
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("x86 host only")
    lib = tmp_path / "lib.so"
    _tiny_module(load_target("host").tvm_target).export_library(str(lib))
    assert elf_arch(lib) == "x86_64"
    (tmp_path / "not-elf.so").write_bytes(b"hello world, not an ELF file")
    assert elf_arch(tmp_path / "not-elf.so") is None


def test_availability_reports_compiler_and_emulator(tmp_path, monkeypatch):
    from bvit_edge.targets.toolchain import availability

    rpi4 = load_target("rpi4-aarch64")
    a = availability(rpi4)
    assert a["compiler_found"] == (shutil.which("aarch64-linux-gnu-gcc") is not None)
    assert a["emulator_found"] == (shutil.which("qemu-aarch64") is not None)
    monkeypatch.setenv("PATH", str(tmp_path))
    a = availability(rpi4)
    assert (a["compiler"], a["compiler_found"], a["emulator_found"]) == (None, False, False)
    host = availability(load_target("x86-64-avx2"))
    assert host["compiler_found"] is True and host["compiler"] is None
