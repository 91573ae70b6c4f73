"""The op contract has one home (bvit_edge.contract), and it agrees with what the package registers and
documents: the ONNX schemas of the bvit_edge domain, the torch.ops.bvit schemas, the spec pages
docs/ops/<Op>_v<version>.md and the metadata an export writes. Every layer refuses a contract violation with
the same exception, ContractError (exit code 2). No module outside contract.py spells the contract again.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from bvit_edge import contract
from bvit_edge.contract import ContractError
from bvit_edge.errors import ConfigError, UsageError

ROOT = Path(__file__).resolve().parents[1]
SPEC_DIR = ROOT / "docs" / "ops"


def _spec_page(op: str) -> str:
    return (SPEC_DIR / f"{op}_v{contract.DOMAIN_VERSION}.md").read_text(encoding="utf-8")


def _table_rows(page: str, section: str) -> list[list[str]]:
    """Cells of the Markdown table under ``## section`` (header and separator rows left out)."""
    body = page.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines() if line.startswith("|")
    ]
    return rows[2:]


def _quoted(cell: str) -> list[str]:
    return re.findall(r'"([a-z_]+)"', cell)


# ------------------------------------------------------------------------------------------ the constants
def test_the_contract_constants_are_consistent():
    assert contract.DOMAIN == "bvit_edge" and contract.DOMAIN_VERSION == 1
    assert contract.op_domain_tag() == "bvit_edge:1"
    assert set(contract.PLANES) == set(contract.LINEAR_MODES) | set(contract.MATMUL_A_MODES) | set(
        contract.MATMUL_B_MODES
    )
    assert [contract.n_planes(m) for m in ("signed", "unsigned", "gsb_unsigned", "gsb_signed")] == [1, 1, 3, 3]
    assert contract.DEFAULT_GSB_RATIOS == (0.7, 0.9)  # the GSB paper's r1, r2
    assert all(k.startswith(contract.METADATA_PREFIX) for k in contract.EXPORT_METADATA_KEYS)
    assert len(set(contract.EXPORT_METADATA_KEYS)) == len(contract.EXPORT_METADATA_KEYS)


def test_contract_error_keeps_the_usage_exit_code_and_is_a_value_error():
    err = ContractError("x")
    assert isinstance(err, UsageError) and isinstance(err, ConfigError) and isinstance(err, ValueError)
    assert err.exit_code == 2


def test_the_contract_module_needs_only_the_standard_library():
    """The board-side runtime imports it: no torch, onnx or numpy."""
    tree = ast.parse((ROOT / "bvit_edge" / "contract.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    third_party = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names | {"__future__"}}
    assert third_party <= {"bvit_edge.errors"}, third_party


# ------------------------------------------------------------------------------- the ONNX schemas
def test_the_registered_onnx_schemas_are_exactly_the_contract_ops():
    from onnx import defs

    import bvit_edge.export.ops  # noqa: F401  (registers the schemas)

    registered = sorted(s.name for s in defs.get_all_schemas_with_history() if s.domain == contract.DOMAIN)
    assert registered == sorted(contract.OP_TYPES)
    for op in contract.OP_TYPES:
        schema = defs.get_schema(op, contract.DOMAIN_VERSION, contract.DOMAIN)
        assert schema.since_version == contract.DOMAIN_VERSION


def test_the_onnx_schema_attributes_name_the_contract_modes_and_default_ratios():
    from onnx import defs

    import bvit_edge.export.ops  # noqa: F401 - registers the schemas

    lin = defs.get_schema(contract.BINARY_LINEAR, contract.DOMAIN_VERSION, contract.DOMAIN)
    assert _quoted(lin.attributes["mode"].description) == list(contract.LINEAR_MODES)
    mm = defs.get_schema(contract.BINARY_MATMUL, contract.DOMAIN_VERSION, contract.DOMAIN)
    assert _quoted(mm.attributes["a_mode"].description) == list(contract.MATMUL_A_MODES)
    assert _quoted(mm.attributes["b_mode"].description) == list(contract.MATMUL_B_MODES)
    default = list(mm.attributes["gsb_ratios"].default_value.floats)
    np.testing.assert_array_equal(np.float32(default), np.float32(contract.DEFAULT_GSB_RATIOS))


def test_the_torch_op_default_ratios_are_the_contract_ones():
    torch = pytest.importorskip("torch")
    import bvit_edge.quant.deploy  # noqa: F401  (defines torch.ops.bvit.*)

    ns = getattr(torch.ops, contract.TORCH_NAMESPACE)
    args = {a.name: a for a in ns.binary_matmul.default._schema.arguments}
    assert tuple(args["gsb_ratios"].default_value) == contract.DEFAULT_GSB_RATIOS


# --------------------------------------------------------------------------------------- the spec pages
@pytest.mark.parametrize("op", contract.OP_TYPES)
def test_each_op_has_a_spec_page_for_this_domain_version(op):
    page = _spec_page(op)
    assert page.splitlines()[0] == f"# {op} (domain `{contract.DOMAIN}`, version {contract.DOMAIN_VERSION})"


@pytest.mark.parametrize("op", contract.OP_TYPES)
def test_the_spec_page_inputs_are_the_schema_inputs(op):
    from onnx import defs

    import bvit_edge.export.ops  # noqa: F401 - registers the schemas

    schema = defs.get_schema(op, contract.DOMAIN_VERSION, contract.DOMAIN)
    documented = [re.match(r"`(\w+)`", row[1]).group(1) for row in _table_rows(_spec_page(op), "Inputs")]
    assert documented == [p.name for p in schema.inputs]


def test_the_spec_pages_list_the_contract_modes_and_ratios():
    lin = {row[0].strip("`"): row for row in _table_rows(_spec_page(contract.BINARY_LINEAR), "Attributes")}
    assert _quoted(lin["mode"][3]) == list(contract.LINEAR_MODES)
    mm_page = _spec_page(contract.BINARY_MATMUL)
    mm = {row[0].strip("`"): row for row in _table_rows(mm_page, "Attributes")}
    assert _quoted(mm["a_mode"][3]) == list(contract.MATMUL_A_MODES)
    assert _quoted(mm["b_mode"][3]) == list(contract.MATMUL_B_MODES)
    r1, r2 = contract.DEFAULT_GSB_RATIOS
    assert f"default `[{r1}, {r2}]`" in mm["gsb_ratios"][2]
    semantics = {row[0].strip("`"): row for row in _table_rows(mm_page, "Semantics")}
    planes = {mode: row[1].count("P_") + row[1].count("Q_") for mode, row in semantics.items()}
    # a gsb_signed row names its planes Q_1..Q_3 (and M_j, not planes)
    assert {m: min(n, 3) for m, n in planes.items()} == {m: contract.PLANES[m] for m in semantics}


# ------------------------------------------------------------------------------- the exported metadata
def test_an_export_writes_exactly_the_contract_metadata_keys(tmp_path):
    torch = pytest.importorskip("torch")
    import onnx

    from bvit_edge.export.onnx_export import export_onnx
    from bvit_edge.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("bit_test_patch4_16")
    model.train()
    with torch.no_grad():
        model(torch.randn(2, *model.default_cfg["input_size"]))
    model.freeze()
    path = tmp_path / "m.onnx"
    export_onnx(
        model, path, data={"mean": [0.5] * 3, "std": [0.25] * 3, "classes": list("abcdefghij"), "image_size": 16}
    )
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(props) == set(contract.EXPORT_METADATA_KEYS)
    assert props[contract.META_OP_DOMAIN] == contract.op_domain_tag() and props[contract.META_OPS] == "packed"
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[contract.DOMAIN] == contract.DOMAIN_VERSION
    assert {n.op_type for n in proto.graph.node if n.domain == contract.DOMAIN} <= set(contract.OP_TYPES)


# --------------------------------------------------------------------- one exception for every layer
def test_every_layer_refuses_a_bad_mode_with_a_contract_error():
    torch = pytest.importorskip("torch")
    from bvit_edge.export.ops.binary_linear import binary_linear_reference
    from bvit_edge.export.ops.binary_matmul import binary_matmul_reference
    from bvit_edge.quant import deploy

    x, w_bits = np.zeros((1, 8), np.float32), np.zeros((2, 8), np.uint8)
    with pytest.raises(ContractError, match="mode"):
        binary_linear_reference(
            x, np.zeros(8, np.float32), np.float32(1), w_bits, np.ones(2, np.float32), mode="ternary", in_features=8
        )
    a = np.zeros((1, 1, 2, 3), np.float32)
    with pytest.raises(ContractError, match="a_mode"):
        binary_matmul_reference(
            a,
            a.swapaxes(-1, -2),
            0,
            np.ones(1, np.float32),
            0,
            np.ones(1, np.float32),
            a_mode="gsb_signed",
            b_mode="signed",
        )
    with pytest.raises(ContractError, match="mode"):
        torch.ops.bvit.binary_linear(
            torch.zeros(1, 8),
            torch.zeros(8),
            torch.ones(()),
            torch.from_numpy(w_bits),
            torch.ones(2),
            None,
            "ternary",
            8,
        )
    with pytest.raises(ContractError, match="mode"):
        deploy.FrozenBinaryLinear(torch.from_numpy(w_bits), torch.ones(2), torch.zeros(8), torch.ones(()), None, "x", 8)
    with pytest.raises(ContractError, match="gsb_ratios"):
        contract.check_ratios((0.7,))


def test_the_tvm_kernels_and_lowering_refuse_a_contract_violation_with_the_same_error():
    pytest.importorskip("tvm")
    import onnx

    from bvit_edge.runtime.kernels import binary_linear_kernel, binary_matmul_kernel
    from bvit_edge.runtime.tvm_frontend import check_domains

    with pytest.raises(ContractError, match="mode"):
        binary_linear_kernel(1, 8, 2, "ternary")
    with pytest.raises(ContractError, match="a_mode"):
        binary_matmul_kernel(1, 1, 2, 3, 2, "gsb_signed", "signed")
    graph = onnx.helper.make_graph([], "g", [], [])
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid(contract.DOMAIN, 2)]
    )
    with pytest.raises(ContractError, match="version 2"):
        check_domains(model)


# ------------------------------------------------------------------------------------ no second home
def _package_sources() -> list[Path]:
    """Every Python file of the package once: the root's cli.py, export/, runtime/, targets/ and the real
    files of bvit_edge/ (its symlinks to those are skipped)."""
    files = [ROOT / "cli.py"]
    for folder in ("bvit_edge", "export", "runtime", "targets"):
        files += [p for p in (ROOT / folder).rglob("*.py") if not any(q.is_symlink() for q in (p, *p.parents))]
    return files


_SOURCES = _package_sources()


def _string_constants(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_no_module_but_the_contract_spells_the_domain_or_the_metadata_keys():
    keys = set(contract.EXPORT_METADATA_KEYS)
    offenders = []
    for path in _SOURCES:
        if path.name == "contract.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and node.value.value == contract.DOMAIN
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} assigns the domain name")
        for s in _string_constants(tree) & keys:
            offenders.append(f"{path.relative_to(ROOT)} spells the metadata key {s!r}")
    assert not offenders, offenders


def test_no_module_but_the_contract_spells_the_default_ratios_or_mode_tuples():
    mode_tuples = {tuple(contract.LINEAR_MODES), tuple(contract.MATMUL_A_MODES), tuple(contract.MATMUL_B_MODES)}
    offenders = []
    for path in _SOURCES:
        if path.name == "contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Tuple, ast.List)) or not node.elts:
                continue
            if not all(isinstance(e, ast.Constant) for e in node.elts):
                continue
            values = tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
            if values == contract.DEFAULT_GSB_RATIOS or values in mode_tuples:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {values}")
    assert not offenders, offenders


def test_the_data_description_round_trips_and_falls_back_to_the_default_cfg():
    cfg = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "classes": ["a", "b"], "image_size": 32, "lr": 0.1}
    props = contract.data_metadata(cfg)
    assert set(props) == set(contract.DATA_METADATA.values())  # only the data description, as JSON
    assert contract.read_data_metadata(props) == {k: cfg[k] for k in contract.DATA_METADATA}
    # an export without the checkpoint's description: the model's timm-style default_cfg supplies it
    default_cfg = '{"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": [3, 224, 224]}'
    meta = contract.read_data_metadata({contract.META_DEFAULT_CFG: default_cfg})
    assert meta == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "classes": None, "image_size": 224}
    assert contract.read_data_metadata({}) == dict.fromkeys(contract.DATA_METADATA)
