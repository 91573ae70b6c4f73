"""Target presets: every shipped preset resolves to the board the README promises, TVM/LLVM accept it,
the host is detected (never "native"), user presets and raw TVM dicts load, bad input is a ConfigError."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from bvit_edge.errors import ConfigError
from bvit_edge.targets import TargetSpec, list_targets, load_target

# The facts of each board written out independently of the preset files.
EXPECTED = {
    "rpi3-armv7": dict(
        arch="armv7",
        family="armv7-neon",
        word_bits=32,
        threads=4,
        mcpu="cortex-a53",
        cc="arm-linux-gnueabihf-gcc",
        apt="gcc-arm-linux-gnueabihf",
        qemu="qemu-arm",
    ),
    "rpi4-aarch64": dict(
        arch="aarch64",
        family="aarch64-neon",
        word_bits=64,
        threads=4,
        mcpu="cortex-a72",
        cc="aarch64-linux-gnu-gcc",
        apt="gcc-aarch64-linux-gnu",
        qemu="qemu-aarch64",
    ),
    "rpi5-aarch64": dict(
        arch="aarch64",
        family="aarch64-neon",
        word_bits=64,
        threads=4,
        mcpu="cortex-a76",
        cc="aarch64-linux-gnu-gcc",
        apt="gcc-aarch64-linux-gnu",
        qemu="qemu-aarch64",
    ),
    "x86-64-avx2": dict(arch="x86_64", family="x86-avx2", word_bits=64, mcpu="haswell", cc=None, apt=None, qemu=None),
    "x86-64-avx512": dict(
        arch="x86_64", family="x86-avx512", word_bits=64, mcpu="icelake-server", cc=None, apt=None, qemu=None
    ),
}


@pytest.fixture(autouse=True)
def _no_user_presets(tmp_path, monkeypatch):
    """Keep the developer's own ~/.config presets out of these tests."""
    monkeypatch.setenv("BVIT_EDGE_CONFIG", str(tmp_path / "empty-config"))


def test_list_targets_holds_every_shipped_preset():
    assert set(list_targets()) >= set(EXPECTED) | {"host"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_preset_describes_its_board(name):
    want, spec = EXPECTED[name], load_target(name)
    assert isinstance(spec, TargetSpec) and spec.name == name
    assert (spec.arch, spec.family, spec.word_bits) == (want["arch"], want["family"], want["word_bits"])
    assert spec.tvm_target["kind"] == "llvm" and spec.tvm_target["mcpu"] == want["mcpu"]
    assert spec.cross_compiler == want["cc"] and spec.apt_package == want["apt"]
    assert spec.emulated_by == want["qemu"]
    if "threads" in want:
        assert spec.threads == want["threads"]
    if spec.arch in ("aarch64", "armv7"):
        assert "+neon" in spec.tvm_target["mattr"]
    if name == "rpi3-armv7":
        assert spec.tvm_target["mtriple"] in ("armv7l-linux-gnueabihf", "armv7-linux-gnueabihf")
        assert spec.tvm_target["mfloat-abi"] == "hard"  # armhf: else the objects do not link


@pytest.mark.parametrize("name", [*sorted(EXPECTED), "host"])
def test_tvm_and_llvm_accept_every_preset(name):
    pytest.importorskip("tvm")
    spec = load_target(name)
    spec.check()  # builds tvm.target.Target and asks LLVM whether it knows mcpu for mtriple
    target = spec.tvm()
    assert str(target.attrs["mcpu"]) == spec.tvm_target["mcpu"]


def test_avx512_preset_really_has_vpopcntdq_and_avx2_preset_does_not():
    pytest.importorskip("tvm")
    from tvm.target import codegen

    assert codegen.llvm_cpu_has_features(["avx512vpopcntdq"], load_target("x86-64-avx512").tvm())
    assert not codegen.llvm_cpu_has_features(["avx512f"], load_target("x86-64-avx2").tvm())
    assert codegen.llvm_cpu_has_features(["avx2", "popcnt"], load_target("x86-64-avx2").tvm())


def _host_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_host_is_detected_by_llvm_not_native():
    pytest.importorskip("tvm")
    from tvm.target import codegen

    spec = load_target("host")
    assert spec.tvm_target["mcpu"] == codegen.llvm_get_system_cpu() != "native"
    machine = platform.machine()
    if machine == "x86_64":
        assert spec.arch == "x86_64" and spec.tvm_target["mtriple"] == "x86_64-linux-gnu"
        want = "x86-avx512" if {"avx512f", "avx512_vpopcntdq"} <= _host_flags() else "x86-avx2"
        assert spec.family == want
    assert spec.cross_compiler is None and spec.emulated_by is None
    assert spec.threads >= 1 and spec.runs_natively()


def test_arm_presets_do_not_run_natively_on_x86():
    if platform.machine() != "x86_64":
        pytest.skip("x86 host only")
    assert not load_target("rpi4-aarch64").runs_natively()
    assert load_target("x86-64-avx2").runs_natively() == ({"avx2", "popcnt"} <= _host_flags())


def test_unknown_name_is_a_config_error_listing_the_presets():
    with pytest.raises(ConfigError) as err:
        load_target("rpi9-quantum")
    assert err.value.exit_code == 2
    for name in EXPECTED:
        assert name in str(err.value)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BOARD_TOML = """
name = "{name}"
description = "my board"
arch = "aarch64"
family = "aarch64-neon"
threads = 2
cross_compiler = "aarch64-linux-gnu-gcc"
apt_package = "gcc-aarch64-linux-gnu"
[tvm_target]
kind = "llvm"
mtriple = "aarch64-linux-gnu"
mcpu = "cortex-a55"
mattr = ["+neon"]
"""


def test_user_presets_come_from_the_config_folder_and_override_shipped_ones(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    monkeypatch.setenv("BVIT_EDGE_CONFIG", str(cfg))
    _write(cfg / "targets" / "myboard.toml", BOARD_TOML.format(name="myboard"))
    _write(cfg / "targets" / "rpi4-aarch64.toml", BOARD_TOML.format(name="rpi4-aarch64"))
    assert "myboard" in list_targets()
    mine = load_target("myboard")
    assert (mine.arch, mine.threads, mine.tvm_target["mcpu"]) == ("aarch64", 2, "cortex-a55")
    assert mine.source == str(cfg / "targets" / "myboard.toml")
    assert load_target("rpi4-aarch64").tvm_target["mcpu"] == "cortex-a55"


def test_a_toml_path_loads(tmp_path):
    f = _write(tmp_path / "custom.toml", BOARD_TOML.format(name="custom"))
    spec = load_target(str(f))
    assert spec.name == "custom" and spec.word_bits == 64  # default word size of aarch64


def test_raw_tvm_dicts_are_classified_from_triple_and_cpu_features():
    pytest.importorskip("tvm")
    arm = load_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]})
    assert (arm.arch, arm.family, arm.word_bits) == ("aarch64", "aarch64-neon", 64)
    if platform.machine() == "x86_64":
        assert arm.cross_compiler == "aarch64-linux-gnu-gcc" and arm.apt_package == "gcc-aarch64-linux-gnu"
    v7 = load_target({"kind": "llvm", "mtriple": "armv7l-linux-gnueabihf", "mcpu": "cortex-a7"})
    assert (v7.arch, v7.word_bits, v7.cross_compiler) == ("armv7", 32, "arm-linux-gnueabihf-gcc")
    assert load_target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"}).family == "x86-avx512"
    assert load_target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake"}).family == "x86-avx2"


def test_to_dict_is_json_and_round_trips():
    spec = load_target("rpi4-aarch64")
    d = json.loads(json.dumps(spec.to_dict()))
    again = load_target(d)
    assert again.to_dict() | {"source": ""} == spec.to_dict() | {"source": ""}


@pytest.mark.parametrize(
    "text, words",
    [
        ("name = 'x'\narch = 'aarch64'\nfamily = 'aarch64-neon'\n", ["tvm_target"]),
        (BOARD_TOML.format(name="x").replace('family = "aarch64-neon"', 'family = "x86-avx2"'), ["family", "aarch64"]),
        (BOARD_TOML.format(name="x").replace('arch = "aarch64"', 'arch = "riscv64"'), ["arch", "riscv64"]),
        ("bogus = 1\n" + BOARD_TOML.format(name="x"), ["unknown keys", "bogus"]),
        (BOARD_TOML.format(name="x").replace("threads = 2", "threads = 0"), ["threads"]),
        (BOARD_TOML.format(name="x").replace('apt_package = "gcc-aarch64-linux-gnu"\n', ""), ["apt_package"]),
        ("name = [unclosed\n", ["TOML"]),
    ],
)
def test_bad_preset_files_are_config_errors_naming_the_problem(tmp_path, text, words):
    f = _write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as err:
        load_target(f)
    for w in words:
        assert w in str(err.value)


def test_llvm_unknown_cpu_is_caught_by_check():
    pytest.importorskip("tvm")
    spec = load_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a999"})
    with pytest.raises(ConfigError, match="cortex-a999"):
        spec.check()


def test_missing_file_and_bad_types_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_target(tmp_path / "nope.toml")
    with pytest.raises(ConfigError):
        load_target({"mcpu": "cortex-a72"})
    with pytest.raises(ConfigError):
        load_target(42)  # type: ignore[arg-type]
