"""Packaging: the wheel holds one import namespace, and the source tree imports exactly like it.

export/, runtime/, targets/ and cli.py sit at the repository root and reach ``bvit_edge`` through committed
relative symlinks (bvit_edge/export -> ../export, ...); the wheel is built from ``packages = ["bvit_edge"]``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import bvit_edge

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("export", "runtime", "targets")


def test_mapped_folders_are_relative_symlinks_into_the_package() -> None:
    for name in (*MAPPED, "cli.py"):
        link = ROOT / "bvit_edge" / name
        assert link.is_symlink(), f"bvit_edge/{name} must be a committed symlink"
        assert os.readlink(link) == f"../{name}", f"bvit_edge/{name} must point to ../{name} (relative)"
        assert link.resolve() == (ROOT / name).resolve()


def test_package_resolves_mapped_subpackages() -> None:
    root = Path(bvit_edge.__file__).parent
    for sub in MAPPED:
        spec = importlib.util.find_spec(f"bvit_edge.{sub}")
        assert spec is not None and spec.origin is not None, sub
        assert Path(spec.origin).parent == root / sub, sub
    assert importlib.util.find_spec("bvit_edge.cli") is not None


@pytest.mark.slow
def test_wheel_has_one_namespace_and_the_presets(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("bvit_edge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"bvit_edge", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for sub in MAPPED:
        assert f"bvit_edge/{sub}/__init__.py" in names, sub
    assert "bvit_edge/cli.py" in names
    presets = {Path(n).stem for n in names if n.startswith("bvit_edge/targets/presets/") and n.endswith(".toml")}
    assert presets >= {"rpi3-armv7", "rpi4-aarch64", "rpi5-aarch64", "x86-64-avx2", "x86-64-avx512"}
    assert "bvit_edge/targets/tuning/x86-avx512.json" in names
    assert not any(n.startswith(("bvit_edge/tests/", "tests/", "benches/")) for n in names)


def test_shipped_tuning_database_loads() -> None:
    from bvit_edge.runtime.tuning import shipped_database

    assert len(shipped_database("x86-avx512")) > 0


def test_console_script_and_module_entry_point(tmp_path: Path) -> None:
    exe = shutil.which("bvit-edge", path=os.path.dirname(sys.executable))
    assert exe is not None, "console script bvit-edge is not installed"
    for cmd, cwd in (
        ([exe, "--help"], tmp_path),
        ([sys.executable, "-m", "bvit_edge", "--help"], tmp_path),
        ([sys.executable, "-m", "bvit_edge", "--help"], ROOT),
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)
        assert r.returncode == 0, r.stderr
        for command in ("train", "eval", "export", "compile", "run", "bench", "report", "targets", "demo"):
            assert command in r.stdout, command


def test_repository_root_imports_like_the_wheel() -> None:
    """A script or notebook started at the repository root imports bvit_edge.export and .runtime."""
    code = "import bvit_edge.export, bvit_edge.runtime, bvit_edge.targets, bvit_edge.cli; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
