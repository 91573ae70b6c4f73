"""The tuning database: measured knobs per kernel, applied at compile time, re-tuned with --tune N.

References are numpy (test_tvm_lowering's contract references) and the database files themselves; the
timings are only checked to be positive numbers (never compared: the machine is shared).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")

from bvit_edge.errors import ConfigError, UsageError
from bvit_edge.runtime import tuning
from bvit_edge.runtime.artifact import read_manifest, run_artifact
from bvit_edge.runtime.compile import compile_model
from bvit_edge.runtime.schedules import family_params
from bvit_edge.targets import load_target


def _lowering_cases():
    """The contract references and cases of test_tvm_lowering.py (tests run with --import-mode=importlib)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_bvit_lowering_cases", Path(__file__).with_name("test_tvm_lowering.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_cases = _lowering_cases()
_close, linear_case, matmul_case = _cases._close, _cases.linear_case, _cases.matmul_case

LIN = tuning.KernelSpec("binary_linear", (12, 96, 64), ("signed",), 64)
MM = tuning.KernelSpec("binary_matmul", (1, 2, 9, 70, 32), ("gsb_unsigned", "gsb_signed"), 64, (0.7, 0.9))


def test_kernel_keys_name_op_modes_shape_and_word_size():
    assert LIN.key == "binary_linear/signed/m12_k96_n64/w64"
    assert MM.key == "binary_matmul/gsb_unsigned_gsb_signed/b1_h2_m9_k70_n32/w64"


def test_candidates_start_with_the_family_rule_divide_n_and_respect_the_trial_budget():
    fam = family_params("x86-avx512")
    cands = tuning.candidates(LIN, fam, trials=50)
    assert (cands[0].n_tile, cands[0].vector_popcount) == (fam.n_tile, fam.vector_popcount)  # 64 % 16 == 0
    assert all(LIN.n % c.n_tile == 0 for c in cands)
    assert any(not c.vector_popcount for c in cands)  # the scalar popcnt alternative is measured too
    assert len({(c.n_tile, c.vector_popcount) for c in cands}) == len(cands)
    assert len(tuning.candidates(LIN, fam, trials=2)) == 2
    odd = tuning.KernelSpec("binary_linear", (4, 64, 24), ("signed",), 64)
    assert all(24 % c.n_tile == 0 for c in tuning.candidates(odd, fam, trials=50))


def test_tuning_measures_each_candidate_and_keeps_the_fastest():
    spec = load_target("host")
    fam = family_params(spec.family)
    db = tuning.tune_kernels([LIN, MM, LIN], spec, fam, trials=3, number=2, repeat=2)
    assert sorted(db.records) == sorted([LIN.key, MM.key])  # duplicates tuned once
    for rec in db.records.values():
        assert 1 <= len(rec["tried"]) <= 3 and all(v > 0 for v in rec["tried"].values())
        assert rec["us"] == min(rec["tried"].values())
        assert {"n_tile", "vector_popcount"} <= set(rec)


def test_database_round_trip_and_bad_files(tmp_path):
    db = tuning.TuningDatabase("x86-avx512", {LIN.key: {"n_tile": 4, "vector_popcount": True, "us": 1.0}})
    path = tmp_path / "db.json"
    db.save(path)
    again = tuning.TuningDatabase.load(path, "x86-avx512")
    assert again.records == db.records
    assert again.params_for(family_params("x86-avx512"), LIN.key).n_tile == 4
    assert again.params_for(family_params("x86-avx512"), MM.key) == family_params("x86-avx512")
    with pytest.raises(UsageError, match="x86-avx512 family"):
        tuning.TuningDatabase.load(path, "aarch64-neon")
    path.write_text("{not json")
    with pytest.raises(UsageError, match="not readable JSON"):
        tuning.TuningDatabase.load(path, "x86-avx512")
    assert len(tuning.TuningDatabase.load(tmp_path / "missing.json", "x86-avx512")) == 0


def test_every_family_ships_a_loadable_database():
    for fam in ("x86-avx512", "x86-avx2", "aarch64-neon", "armv7-neon"):
        tuning.shipped_database(fam)  # missing -> empty, present -> valid
    assert len(tuning.shipped_database("x86-avx512")) > 0


def test_tuning_a_board_target_without_a_board_is_refused():
    spec = load_target("rpi4-aarch64")
    with pytest.raises(ConfigError, match="--rpc"):
        tuning.tune_kernels([LIN], spec, family_params(spec.family), trials=2)


def test_database_knobs_reach_the_compiled_kernel_and_keep_results_exact(tmp_path):
    rng = np.random.default_rng(3)
    model, x, ref = linear_case(rng, 12, 96, 64, "signed")
    onnx_path = tmp_path / "lin.onnx"
    onnx.save(model, onnx_path)
    db_path = tmp_path / "db.json"
    key = "binary_linear/signed/m12_k96_n64/w64"
    tuning.TuningDatabase("x86-avx512", {key: {"n_tile": 4, "vector_popcount": True, "us": 1.0}}).save(db_path)
    spec = load_target("host")
    if spec.family != "x86-avx512":
        pytest.skip("the database in this test is for the x86-avx512 family")
    art = compile_model(onnx_path, "host", tmp_path / "art", tuning_db=db_path)
    man = read_manifest(art)
    assert man["tuning"]["applied"] == [key]
    _close(run_artifact(art, x, normalize=False), ref)
    # the knob is really used: the vectorized n loop of the kernel is 4 wide
    from bvit_edge.runtime import tvm_frontend

    fam = family_params(spec.family)
    with tuning.applying(tuning.TuningDatabase.load(db_path, spec.family)):
        mod = tvm_frontend.import_onnx(model, {"x": list(x.shape)}, fam)
    scripts = [f.script() for gv, f in mod.functions.items() if "binary_linear" in gv.name_hint]
    assert scripts and "T.vectorized(4)" in scripts[0]


def test_compile_with_tune_writes_the_database_and_uses_it(tmp_path):
    rng = np.random.default_rng(4)
    # a BinaryLinear: BinaryMatMul's row-wise kernel is written already scheduled (no knobs to tune)
    model, x, ref = linear_case(rng, 12, 96, 64, "signed")
    onnx_path = tmp_path / "mm.onnx"
    onnx.save(model, onnx_path)
    db_path = tmp_path / "tuned.json"
    art = compile_model(onnx_path, "host", tmp_path / "art", tune=2, tuning_db=db_path)
    doc = json.loads(db_path.read_text())
    assert doc["schema_version"] == 1 and len(doc["records"]) == 1
    rec = next(iter(doc["records"].values()))
    assert 1 <= len(rec["tried"]) <= 2
    man = read_manifest(art)
    assert man["tuning"]["trials_per_kernel"] == 2 and man["tuning"]["applied"] == list(doc["records"])
    _close(run_artifact(art, x, normalize=False), ref)
