"""The installed wheel: one import namespace, console script and `python -m bvit_edge`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bvit_edge


def test_package_is_the_installed_one_with_mapped_subpackages() -> None:
    root = Path(bvit_edge.__file__).parent
    assert "site-packages" in str(root), f"tests must run against the installed package, not {root}"
    for sub in ("export", "runtime", "targets"):
        assert (root / sub / "__init__.py").is_file(), sub
    assert (root / "cli.py").is_file()
    site = root.parent
    for name in ("export", "runtime", "targets", "cli", "cli.py"):
        assert not (site / name).exists(), f"{name} must not land top-level in site-packages"


def test_target_presets_ship_inside_the_wheel() -> None:
    spec = importlib.util.find_spec("bvit_edge.targets")
    assert spec is not None and spec.origin is not None
    presets = list(Path(spec.origin).parent.rglob("*.toml"))
    assert {p.stem for p in presets} >= {"rpi3-armv7", "rpi4-aarch64", "rpi5-aarch64", "x86-64-avx2", "x86-64-avx512"}
    # the tuning database the compiler applies without tuning
    from bvit_edge.runtime.tuning import shipped_database

    assert (Path(spec.origin).parent / "tuning" / "x86-avx512.json").is_file()
    assert len(shipped_database("x86-avx512")) > 0


def test_console_script_and_module_entry_point(tmp_path: Path) -> None:
    exe = shutil.which("bvit-edge", path=os.path.dirname(sys.executable))
    assert exe is not None, "console script bvit-edge is not installed"
    for cmd in ([exe, "--help"], [sys.executable, "-m", "bvit_edge", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        for command in ("train", "eval", "export", "compile", "run", "bench", "report", "targets", "demo"):
            assert command in r.stdout, command
