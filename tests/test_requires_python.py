"""``requires-python`` in pyproject.toml is true: the package's code needs no Python newer than the minimum
it declares (a vermin-like check written out here).

- every source file parses with the minimum's grammar (with that interpreter itself when it is installed,
  else ``ast.parse(feature_version=...)``);
- no standard-library module, name or builtin added after the minimum is used unless the use is guarded
  (inside ``if sys.version_info >= (3, N):`` or a ``try`` that catches ImportError);
- a guarded module has its PyPI backport declared with the matching python_version marker.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# standard-library additions after 3.9, with the version that added them
NEW_MODULES = {"tomllib": (3, 11), "wsgiref.types": (3, 11)}
NEW_NAMES = {
    ("typing", "Self"): (3, 11),
    ("typing", "LiteralString"): (3, 11),
    ("typing", "Never"): (3, 11),
    ("typing", "assert_never"): (3, 11),
    ("typing", "assert_type"): (3, 11),
    ("typing", "reveal_type"): (3, 11),
    ("typing", "Required"): (3, 11),
    ("typing", "NotRequired"): (3, 11),
    ("typing", "TypeVarTuple"): (3, 11),
    ("typing", "Unpack"): (3, 11),
    ("typing", "dataclass_transform"): (3, 11),
    ("typing", "override"): (3, 12),
    ("typing", "TypeAliasType"): (3, 12),
    ("enum", "StrEnum"): (3, 11),
    ("enum", "verify"): (3, 11),
    ("datetime", "UTC"): (3, 11),
    ("hashlib", "file_digest"): (3, 11),
    ("asyncio", "TaskGroup"): (3, 11),
    ("asyncio", "timeout"): (3, 11),
    ("contextlib", "chdir"): (3, 11),
    ("operator", "call"): (3, 11),
    ("itertools", "batched"): (3, 12),
    ("math", "exp2"): (3, 11),
    ("math", "cbrt"): (3, 11),
    ("typing", "TypeAlias"): (3, 10),
    ("itertools", "pairwise"): (3, 10),
}
NEW_BUILTINS = {"ExceptionGroup": (3, 11), "BaseExceptionGroup": (3, 11), "aiter": (3, 10), "anext": (3, 10)}
BACKPORTS = {"tomllib": "tomli"}


def _minimum() -> tuple[int, int]:
    spec = PYPROJECT["project"]["requires-python"]
    m = re.fullmatch(r"\s*>=\s*3\.(\d+)\s*", spec)
    assert m, f"requires-python {spec!r}: expected the form '>=3.N'"
    return 3, int(m.group(1))


def _sources() -> list[Path]:
    files = [ROOT / "cli.py"]
    for folder in ("bvit_edge", "export", "runtime", "targets"):
        files += [p for p in (ROOT / folder).rglob("*.py") if not any(q.is_symlink() for q in (p, *p.parents))]
    return sorted(files)


def _is_version_guard(test: ast.expr) -> tuple[int, int] | None:
    """(3, N) for a test ``sys.version_info >= (3, N)``, else None."""
    if (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.GtE)
        and ast.unparse(test.left) == "sys.version_info"
        and isinstance(test.comparators[0], ast.Tuple)
    ):
        return tuple(int(e.value) for e in test.comparators[0].elts[:2])  # type: ignore[attr-defined,return-value]
    return None


def _catches_import_error(node: ast.Try) -> bool:
    names = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
    return bool(names & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)"})


def _unguarded_uses(tree: ast.AST, minimum: tuple[int, int]) -> list[tuple[int, str, tuple[int, int]]]:
    """(line, what, needed version) of every use newer than ``minimum`` that no guard covers."""
    found: list[tuple[int, str, tuple[int, int]]] = []

    def visit(node: ast.AST, guard: tuple[int, int]) -> None:
        if isinstance(node, ast.If) and (v := _is_version_guard(node.test)):
            for child in node.body:
                visit(child, max(guard, v))
            for child in node.orelse:
                visit(child, guard)
            return
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.body:
                visit(child, (99, 0))
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guard)
            return
        uses: list[tuple[str, tuple[int, int]]] = []
        if isinstance(node, ast.Import):
            uses += [(a.name, NEW_MODULES[a.name]) for a in node.names if a.name in NEW_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in NEW_MODULES:
                uses.append((node.module, NEW_MODULES[node.module]))
            uses += [
                (f"{node.module}.{a.name}", NEW_NAMES[(node.module, a.name)])
                for a in node.names
                if (node.module, a.name) in NEW_NAMES
            ]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in NEW_NAMES:
                uses.append((f"{node.value.id}.{node.attr}", NEW_NAMES[(node.value.id, node.attr)]))
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS:
            uses.append((node.id, NEW_BUILTINS[node.id]))
        elif isinstance(node, ast.TryStar):
            uses.append(("except*", (3, 11)))
        found.extend((getattr(node, "lineno", 0), what, v) for what, v in uses if v > max(minimum, guard))
        for child in ast.iter_child_nodes(node):
            visit(child, guard)

    visit(tree, (0, 0))
    return found


def test_requires_python_is_a_lower_bound_this_interpreter_meets():
    assert sys.version_info[:2] >= _minimum()


def _interpreter(version: tuple[int, int]) -> str | None:
    """A working ``python3.N`` of exactly ``version`` on this machine (PATH, then pyenv's versions), or None."""
    name = f"python{version[0]}.{version[1]}"
    pyenv = sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version[0]}.{version[1]}.*/bin/{name}"))
    candidates = [shutil.which(name), *pyenv]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.split() == [str(v) for v in version]:
            return exe
    return None


def test_every_source_parses_with_the_minimum_python_grammar():
    minimum = _minimum()
    exe = _interpreter(minimum)
    files = [str(p) for p in _sources()]
    if exe:  # the real parser of that version
        code = "import ast, sys\nfor f in sys.argv[1:]:\n    ast.parse(open(f, encoding='utf-8').read(), f)\n"
        proc = subprocess.run([exe, "-c", code, *files], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    else:
        for f in files:
            ast.parse(Path(f).read_text(encoding="utf-8"), f, feature_version=minimum)


def test_no_standard_library_feature_newer_than_the_minimum_is_used_unguarded():
    minimum = _minimum()
    offenders = []
    for path in _sources():
        for line, what, needed in _unguarded_uses(ast.parse(path.read_text(encoding="utf-8")), minimum):
            offenders.append(f"{path.relative_to(ROOT)}:{line} uses {what} (Python {needed[0]}.{needed[1]})")
    assert not offenders, "\n".join(offenders)


def test_each_guarded_module_has_its_backport_declared_with_a_version_marker():
    minimum = _minimum()
    deps = PYPROJECT["project"]["dependencies"]
    used = set()
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        used |= {m for m in BACKPORTS if re.search(rf"^\s*import {m}\b", text, re.M)}
    for module in used:
        needed = NEW_MODULES[module]
        if needed <= minimum:
            continue
        marker = f"python_version < '{needed[0]}.{needed[1]}'"
        assert any(d.startswith(BACKPORTS[module]) and marker in d.replace('"', "'") for d in deps), (
            f"{module} is new in {needed}: declare {BACKPORTS[module]!r} with the marker {marker!r}"
        )


@pytest.mark.parametrize(
    "snippet, expected",
    [
        ("import tomllib", ["tomllib"]),
        ("from typing import Self", ["typing.Self"]),
        ("import datetime\nx = datetime.UTC", ["datetime.UTC"]),
        ("import sys\nif sys.version_info >= (3, 11):\n    import tomllib\nelse:\n    import tomli as tomllib", []),
        ("try:\n    import tomllib\nexcept ImportError:\n    tomllib = None", []),
        ("raise ExceptionGroup('x', [])", ["ExceptionGroup"]),
    ],
)
def test_the_checker_finds_new_features_and_respects_guards(snippet, expected):
    assert [what for _, what, _ in _unguarded_uses(ast.parse(snippet), (3, 10))] == expected
