"""Artifacts are verified before they run: manifest schema, sha256 of lib.so and params.npz, the weights' shapes and
dtypes, the architecture and the CPU features of this machine. Each bad input is a one-paragraph error with exit
code 2 from the library, from ``bvit-edge run`` and from ``bvit-edge-device``; nothing is written and no input
file changes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("tvm")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from bvit_edge.errors import UsageError
from bvit_edge.packing import pack_bits
from bvit_edge.runtime.artifact import check_machine, load_artifact, read_manifest, run_artifact
from bvit_edge.runtime.compile import compile_model

ROOT = Path(__file__).resolve().parents[1]
K, N, C = 48, 32, 5


def _tiny_onnx(path: Path) -> Path:
    """image [1, 3, 4, 4] -> Flatten -> BinaryLinear(48->32) -> Gemm(32->5): a real artifact in seconds."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, K)) < 0
    inits = [
        nh.from_array(np.zeros(K, np.float32), "shift"),
        nh.from_array(np.array(np.float32(0.25)), "alpha"),
        nh.from_array(pack_bits(w), "wb"),
        nh.from_array((rng.random(N) + 0.5).astype(np.float32), "ws"),
        nh.from_array(rng.standard_normal(N).astype(np.float32), "b"),
        nh.from_array(rng.standard_normal((C, N)).astype(np.float32), "head"),
    ]
    nodes = [
        oh.make_node("Flatten", ["image"], ["flat"], axis=1),
        oh.make_node(
            "BinaryLinear",
            ["flat", "shift", "alpha", "wb", "ws", "b"],
            ["h"],
            domain="bvit_edge",
            mode="signed",
            in_features=K,
        ),
        oh.make_node("Gemm", ["h", "head"], ["logits"], transB=1),
    ]
    g = oh.make_graph(
        nodes,
        "tiny",
        [oh.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [1, C])],
        inits,
    )
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("bvit_edge", 1)], ir_version=10)
    for key, val in {
        "bvit_edge.mean": [0.5, 0.5, 0.5],
        "bvit_edge.std": [0.5, 0.5, 0.5],
        "bvit_edge.classes": [f"c{i}" for i in range(C)],
        "bvit_edge.image_size": [4, 4],
    }.items():
        model.metadata_props.add(key=key, value=json.dumps(val))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify")
    src = _tiny_onnx(tmp / "tiny.onnx")
    host = compile_model(src, "host", tmp / "host")
    arm = compile_model(src, "rpi4-aarch64", tmp / "arm")
    png = tmp / "x.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(png)
    return {"host": host, "arm": arm, "png": png}


@pytest.fixture
def art(built, tmp_path):
    """A private copy of the host artifact to damage."""
    return Path(shutil.copytree(built["host"], tmp_path / "art"))


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )


def _assert_refused(folder: Path, png: Path, tmp_path: Path, *needles: str) -> None:
    """Library, `bvit-edge run` and `bvit-edge-device run`/`bench --out` refuse ``folder`` with exit 2, a message
    holding ``needles``, no traceback, nothing written, the artifact unchanged."""
    before = _digests(folder)
    with pytest.raises(UsageError) as err:
        run_artifact(folder, np.zeros((1, 3, 4, 4), np.float32))
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    out = work / "bench.json"
    for args in (
        ["-m", "bvit_edge", "run", str(folder), "--image", str(png)],
        ["-m", "bvit_edge.runtime.device_cli", "run", str(folder), str(png)],
        ["-m", "bvit_edge.runtime.device_cli", "bench", str(folder), "--runs", "1", "--out", str(out)],
    ):
        r = _cli(args, work)
        assert r.returncode == 2, (args, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
        for needle in needles:
            assert needle in " ".join(r.stderr.split()), (needle, r.stderr[-1500:])
    assert list(work.iterdir()) == [], "a refused command wrote a file"
    assert _digests(folder) == before


def test_compile_records_what_the_loader_verifies(built):
    """lib_sha256, one shape/dtype per weight (as stored in params.npz) and the CPU features of the target."""
    for key in ("host", "arm"):
        folder = built[key]
        m = read_manifest(folder)
        assert m["lib_sha256"] == hashlib.sha256((folder / "lib.so").read_bytes()).hexdigest()
        with np.load(folder / "params.npz") as npz:
            assert m["params"]["arrays"] == [
                {"name": n, "shape": list(npz[n].shape), "dtype": str(npz[n].dtype)} for n in m["params"]["names"]
            ]
    # Cortex-A72: NEON, FP, CRC32; not LLVM's optional crypto (a Raspberry Pi 4 has none).
    assert read_manifest(built["arm"])["required_cpu_features"] == ["asimd", "crc32", "fp"]
    host_flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            host_flags = set(line.split(":", 1)[1].split())
            break
    needed = set(read_manifest(built["host"])["required_cpu_features"])
    assert "popcnt" in needed and needed <= host_flags


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "is not valid JSON"),
        ("", "is empty"),
        ("[1, 2]", "holds a JSON list"),
        ('{"schema_version": 2}', "target: missing"),
        ('{"schema_version": 7}', "schema_version 7 is not supported"),
    ],
)
def test_a_broken_manifest_is_refused_naming_it(art, built, tmp_path, content, needle):
    (art / "manifest.json").write_text(content)
    _assert_refused(art, built["png"], tmp_path, "manifest.json", needle, "ecompile")


def test_manifest_fields_of_the_wrong_type_are_named(art):
    m = json.loads((art / "manifest.json").read_text())
    m["input"]["shape"] = [1, 3, "4", 4]
    m["lib"] = "../../etc/passwd"
    m["params"]["count"] = 99
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UsageError) as err:
        read_manifest(art)
    for field in ("input.shape", "lib:", "params.count"):
        assert field in str(err.value)


def test_tampered_weights_are_refused_naming_the_file_and_recompile(art, built, tmp_path):
    """Issue 14: params.npz values x -3 used to change predictions silently with exit 0."""
    with np.load(art / "params.npz") as npz:
        arrays = {k: npz[k] * np.float32(-3) if npz[k].dtype.kind == "f" else npz[k] for k in npz.files}
    np.savez(art / "params.npz", **arrays)
    _assert_refused(art, built["png"], tmp_path, "params.npz", "sha256", "recompile")


def test_a_tampered_library_is_refused(art, built, tmp_path):
    lib = art / "lib.so"
    data = bytearray(lib.read_bytes())
    data[-100] ^= 0xFF
    lib.write_bytes(bytes(data))
    _assert_refused(art, built["png"], tmp_path, "lib.so", "sha256")


@pytest.mark.parametrize("change", ["shape", "dtype", "missing"])
def test_weights_of_another_shape_or_dtype_are_refused_even_with_a_matching_digest(art, change):
    """The shape/dtype check is driven by the manifest's per-weight record (whatever dtype it names)."""
    with np.load(art / "params.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    first = next(iter(arrays))
    if change == "shape":
        arrays[first] = arrays[first].reshape(1, -1)
    elif change == "dtype":
        arrays[first] = arrays[first].astype(np.float64)
    else:
        del arrays[first]
    np.savez(art / "params.npz", **arrays)
    m = json.loads((art / "manifest.json").read_text())
    m["params"]["sha256"] = hashlib.sha256((art / "params.npz").read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UsageError) as err:
        load_artifact(art)
    assert "params.npz" in str(err.value) and "recompile" in str(err.value)
    assert (first in str(err.value)) if change != "missing" else "missing" in str(err.value)


def test_int8_weights_recorded_as_int8_are_accepted(art):
    """A weight the manifest records as int8 (quantized storage) passes the check when params.npz holds int8."""
    with np.load(art / "params.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    m = json.loads((art / "manifest.json").read_text())
    first = m["params"]["names"][0]
    arrays[first] = np.clip(arrays[first], -1, 1).astype(np.int8)
    np.savez(art / "params.npz", **arrays)
    m["params"]["arrays"][0]["dtype"] = "int8"
    m["params"]["sha256"] = hashlib.sha256((art / "params.npz").read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(m))
    from bvit_edge.runtime.artifact import read_params

    assert read_params(art, read_manifest(art))[0].dtype == np.int8


def test_an_artifact_for_another_architecture_is_refused(built, tmp_path):
    _assert_refused(built["arm"], built["png"], tmp_path, "rpi4-aarch64", "aarch64", "--target")


def test_a_cpu_without_the_artifacts_features_is_refused_before_loading(art, built, tmp_path):
    m = read_manifest(art)
    have = set(m["required_cpu_features"]) - {"avx512_vpopcntdq"}
    with pytest.raises(UsageError) as err:
        check_machine(art, m, available=have)
    assert "avx512_vpopcntdq" in str(err.value) and "illegal instruction" in str(err.value)
    # End to end: a feature no x86 CPU of today has (Knights Mill's 4VNNIW) recorded in the manifest.
    raw = json.loads((art / "manifest.json").read_text())
    raw["required_cpu_features"].append("avx512_4vnniw")
    (art / "manifest.json").write_text(json.dumps(raw))
    _assert_refused(art, built["png"], tmp_path, "avx512_4vnniw", "illegal instruction")


def test_missing_and_unreadable_inputs(built, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    for inputs, needle in (
        ([str(bad)], "is not a readable image"),
        ([str(empty)], "holds no images"),
        ([str(tmp_path / "nope.png")], "does not exist"),
    ):
        for args in (
            ["-m", "bvit_edge", "run", str(built["host"]), *[a for i in inputs for a in ("--image", i)]],
            ["-m", "bvit_edge.runtime.device_cli", "run", str(built["host"]), *inputs],
        ):
            r = _cli(args, work)
            text = " ".join(r.stderr.split())
            assert r.returncode == 2 and needle in text and "Traceback" not in text, (args, r.stderr[-800:])
    assert list(work.iterdir()) == []


def test_json_errors_carry_the_exit_code(built, tmp_path):
    r = _cli(["-m", "bvit_edge.runtime.device_cli", "run", str(built["arm"]), str(built["png"]), "--json"], tmp_path)
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 2 and "aarch64" in doc["error"]
