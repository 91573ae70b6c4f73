"""The on-device runtime (bvit_edge.runtime.device, ``bvit-edge-device``) on the host: classification of files,
folders and raw frames against a numpy reference, the bench JSON against ``bvit-edge bench``'s, the layer rule
(no torch / onnx / TVM compiler / matplotlib / sklearn imported), and the board-side wheel built from the tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib

onnx = pytest.importorskip("onnx")
pytest.importorskip("tvm")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from PIL import Image

from bvit_edge.errors import DataError
from bvit_edge.packing import pack_bits
from bvit_edge.runtime import device
from bvit_edge.runtime.compile import compile_model

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIST = ROOT / "packaging" / "bvit-edge-runtime"
K, N, C, S = 48, 32, 5, 4
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
CLASSES = ["cat", "dog", "owl", "fox", "elk"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A compiled host artifact of image [1,3,4,4] -> Flatten -> BinaryLinear -> Gemm, and its weights."""
    tmp = tmp_path_factory.mktemp("device")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, K)) < 0
    p = {
        "w_pm": np.where(w, -1, 1),
        "ws": (rng.random(N) + 0.5).astype(np.float32),
        "bias": rng.standard_normal(N).astype(np.float32),
        "head": rng.standard_normal((C, N)).astype(np.float32),
    }
    inits = [
        nh.from_array(np.zeros(K, np.float32), "shift"),
        nh.from_array(np.array(np.float32(0.25)), "alpha"),
        nh.from_array(pack_bits(w), "wb"),
        nh.from_array(p["ws"], "ws"),
        nh.from_array(p["bias"], "b"),
        nh.from_array(p["head"], "head"),
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
        [oh.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, S, S])],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [1, C])],
        inits,
    )
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("bvit_edge", 1)], ir_version=10)
    for key, val in {
        "bvit_edge.mean": MEAN,
        "bvit_edge.std": STD,
        "bvit_edge.classes": CLASSES,
        "bvit_edge.image_size": [S, S],
    }.items():
        model.metadata_props.add(key=key, value=json.dumps(val))
    onnx.save(model, str(tmp / "tiny.onnx"))
    return compile_model(tmp / "tiny.onnx", "host", tmp / "art"), p


def reference_logits(pixels_hwc: np.ndarray, p: dict) -> np.ndarray:
    """The tiny model in numpy on one 4x4 RGB image in [0, 1]: normalise, sign (sgn(0)=+1), popcount-equivalent
    +-1 dot products, scales, bias, head."""
    x = (pixels_hwc.transpose(2, 0, 1) - np.reshape(MEAN, (3, 1, 1))) / np.reshape(STD, (3, 1, 1))
    sign = np.where(x.reshape(-1) < 0, -1, 1).astype(np.int64)
    h = (p["w_pm"] @ sign).astype(np.float32) * (np.float32(0.25) * p["ws"]) + p["bias"]
    return p["head"] @ h


def _pixels_of_png(path: Path) -> np.ndarray:
    """Independent preprocessing of a square image: RGB, bilinear resize to 4x4, [0, 1]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((S, S), Image.Resampling.BILINEAR), np.float32) / 255.0


def _pngs(folder: Path, n: int, side: int = 8, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def test_classify_files_and_folders_matches_the_numpy_reference(tiny, tmp_path):
    art, p = tiny
    files = _pngs(tmp_path / "imgs", 6)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image: skipped in a folder")
    res = device.classify(art, [tmp_path / "imgs"], top_k=2, with_logits=True)
    assert [r["input"] for r in res["predictions"]] == [str(f) for f in files]
    for f, pred in zip(files, res["predictions"], strict=True):
        ref = reference_logits(_pixels_of_png(f), p)
        np.testing.assert_allclose(pred["logits"], ref, rtol=1e-5, atol=1e-4)
        prob = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
        assert pred["top"][0][0] == CLASSES[int(ref.argmax())]
        assert pred["top"][0][1] == pytest.approx(float(prob.max()), rel=1e-4)
    one = device.classify(art, [files[3]], top_k=1)
    assert one["num_images"] == 1 and one["predictions"][0]["top"][0][0] == res["predictions"][3]["top"][0][0]


@pytest.mark.parametrize("fmt", ["rgb24", "bgr24", "gray8"])
def test_raw_frames_from_a_stream_give_the_same_result_as_the_same_pixels_in_a_png(tiny, tmp_path, fmt):
    art, _ = tiny
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 6, 8, 3), dtype=np.uint8)  # 8 wide, 6 high
    if fmt == "gray8":
        frames = np.repeat(frames[..., :1], 3, axis=3)
    raw = {"rgb24": frames, "bgr24": frames[..., ::-1], "gray8": frames[..., 0]}[fmt]
    stream = tmp_path / "frames.raw"
    stream.write_bytes(np.ascontiguousarray(raw).tobytes())
    with open(stream, "rb") as fh:
        got = list(device.classify_frames(art, fh, 8, 6, fmt, top_k=5, with_logits=True))
    assert [g["input"] for g in got] == ["frame:1", "frame:2", "frame:3"]
    for i, g in enumerate(got):
        png = tmp_path / f"f{i}.png"
        Image.fromarray(frames[i]).save(png)
        want = device.classify(art, [png], top_k=5, with_logits=True)["predictions"][0]
        assert g["logits"] == want["logits"] and g["top"] == want["top"]


def test_yuv420_frames_are_converted_with_bt601_limited_range(tmp_path):
    from bvit_edge.runtime.image_input import read_frames

    rng = np.random.default_rng(5)
    w, h = 8, 4
    y = rng.integers(16, 236, (h, w)).astype(np.uint8)
    u = rng.integers(16, 241, (h // 2, w // 2)).astype(np.uint8)
    v = rng.integers(16, 241, (h // 2, w // 2)).astype(np.uint8)
    (frame,) = list(read_frames(__import__("io").BytesIO(y.tobytes() + u.tobytes() + v.tobytes()), w, h, "yuv420"))
    # Reference: ITU-R BT.601, studio swing (Y 16..235, Cb/Cr 16..240), chroma shared by 2x2 pixels.
    yy = (y.astype(np.float64) - 16) * 255 / 219
    cb = (np.kron(u, np.ones((2, 2))) - 128) * 255 / 224
    cr = (np.kron(v, np.ones((2, 2))) - 128) * 255 / 224
    kr, kb = 0.299, 0.114
    r = yy + 2 * (1 - kr) * cr
    b = yy + 2 * (1 - kb) * cb
    g = (yy - kr * r - kb * b) / (1 - kr - kb)
    ref = np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255)
    assert np.abs(frame.astype(np.int64) - ref).max() <= 2


def test_a_stream_ending_inside_a_frame_is_a_clear_error(tiny, tmp_path):
    art, _ = tiny
    with pytest.raises(DataError, match="ended inside frame 2"):
        list(device.classify_frames(art, __import__("io").BytesIO(bytes(8 * 6 * 3 + 10)), 8, 6, "rgb24"))


def test_device_cli_reads_frames_from_stdin_as_json_lines(tiny, tmp_path):
    art, _ = tiny
    frames = np.random.default_rng(4).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bvit_edge.runtime.device_cli",
            "run",
            str(art),
            "--stdin-frames",
            "4x4",
            "--json",
            "--top-k",
            "2",
            "--threads",
            "1",
        ],
        input=frames.tobytes(),
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [d["input"] for d in lines] == ["frame:1", "frame:2"] and all(len(d["top"]) == 2 for d in lines)


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k not in ("versions", "host", "input", "tvm_target", "target"):
            out |= _keys(v, prefix + k + ".")
    return out


def test_device_bench_writes_bvit_edge_bench_json_that_the_report_reads(tiny, tmp_path):
    from bvit_edge.report.schema import validate_report
    from bvit_edge.runtime.bench import bench

    art, _ = tiny
    out = tmp_path / "board.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bvit_edge.runtime.device_cli",
            "bench",
            str(art),
            "--teacher",
            str(art),
            "--warmup",
            "1",
            "--runs",
            "4",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    host = bench(art, teacher_artifact=art, warmup=1, runs=4, threads=1).to_dict()
    assert _keys(doc) == _keys(host)
    assert doc["kind"] == host["kind"] and doc["schema_version"] == host["schema_version"]
    assert doc["timing_kind"] == "host" and doc["rpc"] is None and doc["threads"] == 1
    for side in ("student", "teacher"):
        st = doc[side]["steady"]
        assert st["runs"] == 4 and st["warmup"] == 1 and len(st["samples_ms"]) == 4
        assert st["min_ms"] <= st["median_ms"] <= st["p90_ms"] <= st["max_ms"]
        assert doc[side]["timer"] == "time.perf_counter_ns" and doc[side]["output_shape"] == [1, C]
    # The same input as the host protocol (seeded noise, seed 0) and the same size record.
    assert doc["input"] == host["input"] and doc["sizes"] == host["sizes"]
    # What bvit-edge report draws from it on the host: the report document, labelled with where it ran.
    from bvit_edge.runtime.bench import BenchResult

    res = device.bench_on_device(art, warmup=0, runs=2, threads=1, emulated=True)
    assert BenchResult.from_dict(res.to_dict()).to_dict() == res.to_dict()
    rep = validate_report(BenchResult.from_dict(res.to_dict()).to_report(student_name="tiny (board)"))
    assert rep["latency"][0]["emulated"] is True and rep["latency"][0]["timing_kind"] == "emulated"


BLOCKED = (
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "matplotlib",
    "sklearn",
    "scipy",
    "kornia",
    "tvm",
    "typer",
    "rich",
)


def _board_modules() -> list[str]:
    """The modules of the board-side wheel, from packaging/bvit-edge-runtime/pyproject.toml."""
    cfg = tomllib.loads((RUNTIME_DIST / "pyproject.toml").read_text())
    files = cfg["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"].values()
    return sorted(f[:-3].replace("/", ".").removesuffix(".__init__") for f in files)


def test_board_side_modules_import_and_run_without_torch_onnx_tvm_compiler_matplotlib_sklearn(tiny, tmp_path):
    """The layer rule: every module of the board-side wheel imports, and an artifact classifies, benches and
    checks, with the heavy packages (and the ``tvm`` compiler package: only tvm_ffi + libtvm_runtime.so) blocked."""
    art, _ = tiny
    png = _pngs(tmp_path / "imgs", 1)[0]
    code = f"""
import importlib, importlib.abc, json, sys
BLOCKED = {BLOCKED!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked by the layer test: " + name)
sys.meta_path.insert(0, Block())
for mod in {_board_modules()!r}:
    importlib.import_module(mod)
from bvit_edge.runtime import device
from bvit_edge.runtime.device_cli import main
res = device.classify({str(art)!r}, [{str(png)!r}], top_k=2)
bench = device.bench_on_device({str(art)!r}, warmup=0, runs=2, threads=1).to_dict()
device.check({str(art)!r})
try:
    main(["info", "--json"])
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({{"top": res["predictions"][0]["top"], "runs": bench["student"]["steady"]["runs"], "heavy": heavy}}))
"""
    # The blocker hides the tvm package altogether, so name its runtime library the way a slim board install does.
    import importlib.util

    lib = Path(importlib.util.find_spec("tvm").origin).parent / "lib" / "libtvm_runtime.so"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BVIT_EDGE_TVM_RUNTIME": str(lib)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["heavy"] == [] and doc["runs"] == 2 and doc["top"][0][0] in CLASSES


def test_board_side_wheel_holds_every_module_its_modules_import():
    """The import closure of the board-side wheel stays inside it: every ``bvit_edge.*`` module that one of its
    modules imports (at the top or inside a function, as the loader does for params decoding) is listed in
    packaging/bvit-edge-runtime. ``bvit_edge/__init__.py`` is skipped: its lazy attributes (train, evaluate,
    models) belong to the full toolkit and are never touched on a board."""
    import ast

    cfg = tomllib.loads((RUNTIME_DIST / "pyproject.toml").read_text())
    mapping = cfg["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    listed = set(_board_modules())
    missing: dict[str, list[str]] = {}
    for src, dst in mapping.items():
        if dst == "bvit_edge/__init__.py":
            continue
        tree = ast.parse((RUNTIME_DIST / src).resolve().read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bvit_edge"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("bvit_edge")]
            for name in names:
                # "from bvit_edge.runtime import device" names a module; "from bvit_edge.errors import X" a symbol
                is_module = (ROOT / (name.replace("bvit_edge.", "bvit_edge/", 1).replace(".", "/") + ".py")).exists()
                if (is_module or name == getattr(node, "module", None)) and name not in listed:
                    missing.setdefault(dst, []).append(name)
    assert not missing, f"modules imported by the board-side wheel but not listed in its pyproject: {missing}"


def test_board_side_wheel_is_built_from_the_trees_own_files(tmp_path):
    """packaging/bvit-edge-runtime builds a wheel holding exactly the listed runtime modules, byte for byte the
    repository's files (no copies to drift), depending on numpy, Pillow and the TVM runtime only, with the
    bvit-edge-device console script; the full toolkit declares the same script."""
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
            str(RUNTIME_DIST),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("bvit_edge_runtime-*.whl")
    cfg = tomllib.loads((RUNTIME_DIST / "pyproject.toml").read_text())
    mapping = cfg["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if ".dist-info/" not in n]
        assert sorted(names) == sorted(mapping.values())
        for src, dst in mapping.items():
            assert zf.read(dst) == (RUNTIME_DIST / src).resolve().read_bytes(), dst
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        entry = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    requires = sorted(
        line.split(":", 1)[1].strip().split("=")[0].split(">")[0].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:")
    )
    assert requires == ["apache-tvm", "apache-tvm-ffi", "numpy", "pillow"]
    assert "bvit-edge-device = bvit_edge.runtime.device_cli:main" in entry
    import bvit_edge

    assert f"Version: {bvit_edge.__version__}" in meta
    full = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert full["project"]["scripts"]["bvit-edge-device"] == "bvit_edge.runtime.device_cli:main"


def test_report_merges_a_boards_bench_into_the_hosts(tiny, tmp_path):
    """`bvit-edge report HOST.json BOARD.json`: the board's bench JSON (bvit-edge-device bench) joins the host's
    bench result in one report: one latency row per machine, labelled with where it ran."""
    from bvit_edge.runtime.bench import bench

    art, _ = tiny
    host_json = bench(art, warmup=0, runs=2, threads=1).save(tmp_path / "host.json")
    board_json = device.bench_on_device(art, warmup=0, runs=2, threads=1, emulated=True).save(tmp_path / "pi.json")
    r = subprocess.run(
        [sys.executable, "-m", "bvit_edge", "report", str(host_json), str(board_json), "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [m["name"] for m in doc["models"]] == ["art"]
    assert sorted(e["timing_kind"] for e in doc["latency"]) == ["emulated", "host"]
    assert (tmp_path / "rep" / "report.md").is_file()


def test_time_protocol_times_load_and_first_run_apart_from_the_steady_state():
    """On a fake clock advancing 1 ms per reading: load and first run are one interval each, the warm-up calls
    are made but not timed, then `runs` timed calls."""
    from bvit_edge.runtime.timing import time_protocol

    ticks = iter(range(0, 10**12, 1_000_000))
    calls: list[str] = []
    times, loaded, first = time_protocol(
        lambda: "model", lambda m: lambda: calls.append(m) or len(calls), warmup=2, runs=3, clock=lambda: next(ticks)
    )
    assert loaded == "model" and first == 1 and len(calls) == 1 + 2 + 3
    assert times.load_ms == times.first_run_ms == 1.0
    assert times.steady.runs == 3 and times.steady.warmup == 2 and times.steady.samples_ms == (1.0, 1.0, 1.0)
