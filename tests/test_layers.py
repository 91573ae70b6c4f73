"""Layer rules of the package (docs/architecture.md, "Layers"), checked on the import statements of every
module, lazy imports inside functions included:

- foundation (errors, atomic, digest, packing, contract, metrics, provenance, terminal, native_log,
  output_folder) imports no other bvit_edge layer;
- the model side (models, quant, data, training, evaluation, summary) imports none of report, export,
  runtime, targets, orchestration, cli;
- export imports no runtime, targets, orchestration, cli;
- runtime imports no orchestration or cli; targets and report import only foundation;
- orchestration (pipeline, demo) sits above all of them and only cli imports it;
- the device-side runtime (DEVICE_SIDE: what runs on a board) needs, through every bvit_edge module it
  imports, no third-party package but numpy, TVM and Pillow: in particular no torch. It also imports with
  torch blocked.

KNOWN_VIOLATIONS lists what the tree broke when the rules were written (to be removed, not added to).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": (
        "bvit_edge.errors",
        "bvit_edge.atomic",
        "bvit_edge.digest",
        "bvit_edge.packing",
        "bvit_edge.contract",
        "bvit_edge.metrics",
        "bvit_edge.provenance",
        "bvit_edge.terminal",
        "bvit_edge.native_log",
        "bvit_edge.output_folder",
    ),
    "model": (
        "bvit_edge.models",
        "bvit_edge.quant",
        "bvit_edge.data",
        "bvit_edge.training",
        "bvit_edge.evaluation",
        "bvit_edge.summary",
        "bvit_edge.bench_models",
    ),
    "report": ("bvit_edge.report",),
    "export": ("bvit_edge.export",),
    "runtime": ("bvit_edge.runtime",),
    "targets": ("bvit_edge.targets",),
    "orchestration": ("bvit_edge.pipeline", "bvit_edge.demo"),
    "cli": ("bvit_edge.cli", "bvit_edge.__main__"),
}
EVERY_LAYER = tuple(LAYERS)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "foundation": tuple(x for x in EVERY_LAYER if x != "foundation"),
    "model": ("report", "export", "runtime", "targets", "orchestration", "cli"),
    "export": ("runtime", "targets", "orchestration", "cli"),
    "runtime": ("orchestration", "cli"),
    "targets": ("model", "report", "export", "runtime", "orchestration", "cli"),
    "report": ("model", "export", "runtime", "targets", "orchestration", "cli"),
    "orchestration": ("cli",),
    "cli": (),
}

#: The modules that run on a board (the board-side runtime: load an artifact, feed it images, time it).
#: Add the board runtime's modules here as they appear.
DEVICE_SIDE = (
    "bvit_edge.runtime.artifact",
    "bvit_edge.runtime.bench_record",
    "bvit_edge.runtime.cpu_features",
    "bvit_edge.runtime.device",
    "bvit_edge.runtime.device_cli",
    "bvit_edge.runtime.image_input",
    "bvit_edge.runtime.param_decode",
    "bvit_edge.runtime.threadpool",
    "bvit_edge.runtime.timing",
    "bvit_edge.runtime.tool_versions",
    "bvit_edge.runtime.tvm_runtime",
)
DEVICE_THIRD_PARTY = {"numpy", "tvm", "tvm_ffi", "PIL"}

#: (importer, imported) pairs the tree had when the rules were written; each is to be removed, never added.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


# ------------------------------------------------------------------------------------ the import graph
def _module_files() -> dict[str, Path]:
    """Module name -> file, each file once: the root's cli.py, export/, runtime/, targets/ map into bvit_edge.*
    exactly as the committed symlinks bvit_edge/{cli.py,export,runtime,targets} make them."""
    out = {"bvit_edge.cli": ROOT / "cli.py"}
    for folder in ("bvit_edge", "export", "runtime", "targets"):
        for path in (ROOT / folder).rglob("*.py"):
            if any(q.is_symlink() for q in (path, *path.parents)):
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[0] != "bvit_edge":
                parts.insert(0, "bvit_edge")
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _statements(tree: ast.Module, top_level_only: bool) -> list[ast.AST]:
    """Every node of the file, or only those a plain import of it executes (outside functions)."""
    if not top_level_only:
        return list(ast.walk(tree))
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        out.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += list(ast.iter_child_nodes(node))
    return out


def _imports(module: str, top_level_only: bool = False) -> set[str]:
    """Every module named by an import statement of ``module`` (anywhere in the file, or only outside
    functions), as absolute names."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8")), top_level_only):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return found


def _internal(name: str) -> str | None:
    """The bvit_edge module a name refers to (itself, or the module it is an attribute of), else None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _layer(module: str) -> str | None:
    for layer, prefixes in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    return None


def _violations() -> set[tuple[str, str]]:
    found = set()
    for module in MODULES:
        src = _layer(module)
        for name in _imports(module):
            target = _internal(name) if name.startswith("bvit_edge") else None
            if target and _layer(target) in FORBIDDEN.get(src or "", ()):
                found.add((module, target))
    return found


def _closure(start: str) -> tuple[set[str], set[str]]:
    """(bvit_edge modules, third-party top-level packages) reached from ``start``: every import of a module
    it uses (lazy ones inside functions included), and the import-time statements of the parent packages
    that importing it runs (a/__init__ and a/b/__init__ for a.b.c; their lazy ``__getattr__`` imports only
    run when such an attribute is used)."""
    seen: set[tuple[str, bool]] = set()
    third: set[str] = set()
    todo = [(start, False)]
    while todo:
        mod, top_only = todo.pop()
        if (mod, top_only) in seen or (mod, False) in seen:
            continue
        seen.add((mod, top_only))
        parts = mod.split(".")
        todo += [(".".join(parts[:i]), True) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]
        for name in _imports(mod, top_only):
            top = name.split(".")[0]
            if top == "bvit_edge":
                target = _internal(name)
                if target:
                    todo.append((target, False))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return {m for m, _ in seen}, third


# ------------------------------------------------------------------------------------------- the rules
def test_every_module_belongs_to_a_layer():
    assert not [m for m in MODULES if m != "bvit_edge" and _layer(m) is None]


def test_the_layer_rules_hold_apart_from_the_known_violations():
    new = sorted(_violations() - KNOWN_VIOLATIONS)
    assert not new, "imports that break the layer rules (docs/architecture.md, Layers):\n" + "\n".join(
        f"  {a} ({_layer(a)}) imports {b} ({_layer(b)})" for a, b in new
    )
    for gone in sorted(KNOWN_VIOLATIONS - _violations()):
        warnings.warn(f"the known layer violation {gone} is gone: remove it from KNOWN_VIOLATIONS", stacklevel=1)


def test_the_model_side_imports_none_of_export_runtime_targets_cli():
    """The rule of the issue spelled out on its own (the table above holds it too)."""
    bad = [(a, b) for a, b in _violations() if _layer(a) == "model"]
    assert not bad


def test_the_device_side_runtime_needs_only_numpy_tvm_and_pillow():
    for module in DEVICE_SIDE:
        assert module in MODULES, f"{module} is listed in DEVICE_SIDE but does not exist"
        reached, third = _closure(module)
        assert "torch" not in third, f"{module} reaches torch through {sorted(reached)}"
        assert third <= DEVICE_THIRD_PARTY, (module, sorted(third - DEVICE_THIRD_PARTY), sorted(reached))


def test_the_device_side_runtime_imports_with_torch_blocked():
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'onnxruntime', 'matplotlib'):\n"
        "            raise ImportError('blocked on the board: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {list(DEVICE_SIDE)!r}:\n"
        "    __import__(m)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_checker_sees_a_forbidden_import(tmp_path, monkeypatch):
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from bvit_edge.runtime.ort import ort_session\n", encoding="utf-8")
    monkeypatch.setitem(MODULES, "bvit_edge.quant.fake", fake)
    assert ("bvit_edge.quant.fake", "bvit_edge.runtime.ort") in _violations()
